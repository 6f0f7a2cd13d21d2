package outbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
)

// mountTmpfs mounts a tmpfs of size bytes on a fresh directory and unmounts it when
// the test ends, or skips the test, loudly, where that is not allowed.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED LOUDLY: a real full filesystem needs root to mount a small tmpfs; run as root to test ENOSPC for real (the injected failures in failure_test.go still run)")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.Itoa(size)); err != nil {
		t.Skipf("SKIPPED LOUDLY: cannot mount a tmpfs on %s (%v); a container without CAP_SYS_ADMIN? The injected failures in failure_test.go still run", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// TestFullFilesystem runs the budget scenario on a filesystem that fills up long
// before MaxBytes: a 2 MiB tmpfs with ~300 KiB left free and MaxBytes 1 MiB.
func TestFullFilesystem(t *testing.T) {
	dir := mountTmpfs(t, 2<<20)
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	free := int64(fs.Bavail) * fs.Bsize
	filler := filepath.Join(dir, "filler")
	writeFile(t, filler, make([]byte, free-300<<10))

	logger, logs := captureLog()
	opts := Options{
		Path:       filepath.Join(dir, "outbox"),
		Device:     "cam-full",
		Fsync:      FsyncInterval,
		MaxBytes:   1 << 20,
		MaxPending: 100,
		Logger:     logger,
		Now:        newTestClock().Now,
	}
	o := openTest(t, opts)
	ctx := context.Background()
	body := strings.Repeat("f", 300)

	// Telemetry: the disk fills at ~300 KiB, far below MaxBytes; the oldest
	// telemetry makes room.
	for i := range 2000 {
		if _, err := o.Enqueue(ctx, "telemetry", ClassTelemetry, body); err != nil {
			t.Fatalf("telemetry %d: %v", i, err)
		}
		checkBudget(t, o, opts, false)
	}
	if st := o.Stats(); st.EvictedTelemetry == 0 {
		t.Fatalf("Stats = %+v, want telemetry evicted on ENOSPC", st)
	}

	// Events: kept as far as space allows, then held in memory, then refused.
	var accepted []uint64
	var refused error
	for i := 0; i < 5000 && refused == nil; i++ {
		env, err := o.Enqueue(ctx, "detection", ClassEvent, body)
		if err != nil {
			refused = err
			break
		}
		accepted = append(accepted, env.Seq)
		checkBudget(t, o, opts, false)
	}
	st := o.Stats()
	t.Logf("full disk: %d events accepted, Stats %+v", len(accepted), st)
	if refused == nil || !errors.Is(refused, syscall.ENOSPC) {
		t.Fatalf("Enqueue on a full disk with full pending = %v, want an error wrapping ENOSPC", refused)
	}
	if !strings.Contains(st.LastError, "no space left") || st.Pending != opts.MaxPending || st.Dropped != 0 {
		t.Errorf("Stats = %+v, want LastError ENOSPC, %d pending, no event dropped", st, opts.MaxPending)
	}
	if !strings.Contains(logs.String(), "cannot write to the outbox") {
		t.Errorf("the failure is not logged:\n%s", logs)
	}

	// Space comes back: the pending events are written, in order, none lost.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "pending events written after space returned", func() bool {
		st := o.Stats()
		return st.Pending == 0 && st.LastError == ""
	})
	stored := map[uint64]bool{}
	for _, env := range peekAll(t, o) {
		stored[env.Seq] = true
	}
	for _, s := range accepted {
		if !stored[s] {
			t.Fatalf("accepted event seq %d missing after the disk recovered", s)
		}
	}
	checkBudget(t, o, opts, true)
}
