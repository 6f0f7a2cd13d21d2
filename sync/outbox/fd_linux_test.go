package outbox

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
)

// deletedOpen lists the files under dir that this process still holds open although
// they are deleted: their disk space is not given back until they are closed.
func deletedOpen(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	var out []string
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // closed since ReadDir
		}
		if strings.HasPrefix(target, dir+string(filepath.Separator)) && strings.HasSuffix(target, " (deleted)") {
			out = append(out, target)
		}
	}
	return out
}

func waitNoDeletedOpen(t *testing.T, dir string) {
	t.Helper()
	var open []string
	testkit.WaitFor(t, 10*time.Second, "no deleted segment held open", func() bool {
		open = deletedOpen(t, dir)
		return len(open) == 0
	})
}

// TestDeletedSegmentsClosed: segments deleted by eviction or by a drain are not held
// open by Peek's or Ack's readers (or anything else), so their space returns.
func TestDeletedSegmentsClosed(t *testing.T) {
	body := strings.Repeat("d", 1000)
	t.Run("eviction", func(t *testing.T) {
		forEachPolicy(t, func(t *testing.T, p Fsync) {
			opts := testOptions(t, p)
			opts.MaxBytes = 1 << 20
			o := openTest(t, opts)
			for range 100 {
				mustEnqueue(t, o, "telemetry", ClassTelemetry, body)
			}
			// Peek's reader now holds the first segment; the uplink then goes quiet.
			if got, err := o.Peek(0, 10); err != nil || len(got) != 10 {
				t.Fatalf("Peek = %d messages, %v", len(got), err)
			}
			for o.Stats().EvictedTelemetry < 200 {
				mustEnqueue(t, o, "telemetry", ClassTelemetry, body)
			}
			if _, err := os.Stat(filepath.Join(opts.Path, "telemetry", segName(1))); err == nil {
				t.Fatal("the first segment is still there after eviction")
			}
			waitNoDeletedOpen(t, opts.Path)
		})
	})
	t.Run("drain", func(t *testing.T) {
		forEachPolicy(t, func(t *testing.T, p Fsync) {
			opts := testOptions(t, p)
			opts.MaxBytes = 1 << 20
			o := openTest(t, opts)
			// Several segments, the last one full enough to be deleted once acked.
			for {
				mustEnqueue(t, o, "m", ClassEvent, body)
				segs := segFiles(t, opts.Path, "events")
				if fi, err := os.Stat(segs[len(segs)-1]); len(segs) >= 3 && err == nil && fi.Size() > o.segSize/2 {
					break
				}
			}
			all := peekAll(t, o)
			if err := o.Ack(seqsOf(all)...); err != nil {
				t.Fatal(err)
			}
			if segs := segFiles(t, opts.Path, "events"); len(segs) != 0 {
				t.Fatalf("segments left after a full drain: %v", segs)
			}
			waitNoDeletedOpen(t, opts.Path)
		})
	})
	t.Run("acked beyond the index", func(t *testing.T) {
		opts := testOptions(t, FsyncInterval)
		opts.MaxBytes = 32 << 20
		o := openTest(t, opts)
		ctx := context.Background()
		for i := range winCap + 5000 {
			if _, err := o.Enqueue(ctx, "m", ClassTelemetry, i); err != nil {
				t.Fatal(err)
			}
		}
		seqs := seqsOf(peekAll(t, o))
		// Newest first: Ack's own reader walks the records beyond the index.
		slices.Reverse(seqs)
		for chunk := range slices.Chunk(seqs, 1000) {
			if err := o.Ack(chunk...); err != nil {
				t.Fatal(err)
			}
		}
		if st := o.Stats(); st.Depth != 0 {
			t.Fatalf("Depth %d after acking all", st.Depth)
		}
		waitNoDeletedOpen(t, opts.Path)
	})
}
