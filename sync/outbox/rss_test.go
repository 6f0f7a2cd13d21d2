package outbox

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// TestRSSFlat checks that memory does not follow the backlog: it fills a 1 GiB
// backlog (MaxBytes 2 GiB), drains it, and logs VmRSS at 1 MB and at 1 GB of
// backlog and after draining. It writes 1 GiB, so it runs only with OUTBOX_RSS=1:
//
//	OUTBOX_RSS=1 go test -run TestRSSFlat -v -timeout 30m ./sync/outbox/
func TestRSSFlat(t *testing.T) {
	if os.Getenv("OUTBOX_RSS") != "1" {
		t.Skip("writes 1 GiB; set OUTBOX_RSS=1 to run")
	}
	const (
		target = 1 << 30
		limit  = 200 << 20
	)
	opts := Options{
		Path:     filepath.Join(t.TempDir(), "outbox"),
		Device:   "rss",
		Fsync:    FsyncInterval,
		MaxBytes: 2 << 30,
	}
	o := openTest(t, opts)
	ctx := context.Background()
	body := strings.Repeat("r", 4000) // ~4 KiB messages: 260k of them
	var rss1MB, rss1GB int64
	for i := 0; ; i++ {
		class := ClassTelemetry
		if i%2 == 0 {
			class = ClassEvent
		}
		if _, err := o.Enqueue(ctx, "m", class, body); err != nil {
			t.Fatal(err)
		}
		if rss1MB == 0 && o.Stats().Bytes >= 1<<20 {
			rss1MB = vmRSS(t)
			t.Logf("backlog %d MB: VmRSS %d MB", o.Stats().Bytes>>20, rss1MB>>20)
		}
		if o.Stats().Bytes >= target {
			break
		}
	}
	rss1GB = vmRSS(t)
	t.Logf("backlog %d MB: VmRSS %d MB", o.Stats().Bytes>>20, rss1GB>>20)

	// Restart with the backlog: Open must not read it.
	o = closeAndReopen(t, o, opts)
	t.Logf("reopened with %d MB backlog: VmRSS %d MB", o.Stats().Bytes>>20, vmRSS(t)>>20)

	n := len(drain(t, o, 256))
	drained := vmRSS(t)
	t.Logf("drained %d messages: VmRSS %d MB, DiskBytes %d", n, drained>>20, o.Stats().DiskBytes)
	for _, r := range []int64{rss1MB, rss1GB, drained} {
		if r > limit {
			t.Errorf("VmRSS %d MB, want below %d MB", r>>20, limit>>20)
		}
	}
}

// vmRSS returns the resident set of this process from /proc/self/status, after a
// GC so that garbage does not count.
func vmRSS(t *testing.T) int64 {
	t.Helper()
	runtime.GC()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}
