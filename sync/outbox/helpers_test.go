package outbox

import (
	"bytes"
	"context"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
)

// policies lists every fsync policy: each suite test runs once per policy, so both
// implementations of the durability promise keep the same behaviour.
func policies() []Fsync { return []Fsync{FsyncAlways, FsyncInterval} }

func forEachPolicy(t *testing.T, fn func(t *testing.T, p Fsync)) {
	t.Helper()
	for _, p := range policies() {
		t.Run(string(p), func(t *testing.T) { fn(t, p) })
	}
}

// testClock is Options.Now for tests: it starts in a non-UTC zone, so that the UTC
// conversion is exercised, and advances 1ms per call, so every message has its own TS.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func testEpoch() time.Time {
	return time.Date(2025, 3, 14, 15, 9, 26, 535000000, time.FixedZone("CET", 3600))
}

func newTestClock() *testClock { return &testClock{t: testEpoch()} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Millisecond)
	return c.t
}

// logBuffer collects log output for assertions; the committer writes to it from its
// own goroutine.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testOptions returns options for a fresh store in t.TempDir(), in a directory that
// does not exist yet so that Open has to create it.
func testOptions(t *testing.T, p Fsync) Options {
	t.Helper()
	return Options{
		Path:          filepath.Join(t.TempDir(), "state", "outbox"),
		Device:        "cam-07",
		Fsync:         p,
		FsyncInterval: 5 * time.Millisecond,
		Now:           newTestClock().Now,
	}
}

// openTest opens an outbox and closes it when the test ends.
func openTest(t *testing.T, opts Options) *Outbox {
	t.Helper()
	o, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := o.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return o
}

// waitWritten waits until nothing is pending, i.e. everything enqueued so far is in
// a segment file.
func waitWritten(t *testing.T, o *Outbox) {
	t.Helper()
	testkit.WaitFor(t, 10*time.Second, "pending messages to be written", func() bool { return o.Stats().Pending == 0 })
}

// captureLog returns a logger writing text lines into the returned buffer.
func captureLog() (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// diskUsage sums the sizes of the regular files under dir, as Stats.DiskBytes should.
func diskUsage(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return n
}

// segFiles lists the segment files of one log, oldest first.
func segFiles(t *testing.T, dir, log string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, log))
	if err != nil {
		t.Fatalf("read %s: %v", log, err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".seg") {
			out = append(out, filepath.Join(dir, log, e.Name()))
		}
	}
	return out
}

// closeAndReopen closes o and opens opts again, closed when the test ends.
func closeAndReopen(t *testing.T, o *Outbox, opts Options) *Outbox {
	t.Helper()
	if err := o.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return openTest(t, opts)
}

func mustEnqueue(t *testing.T, o *Outbox, kind string, class Class, body any) Envelope {
	t.Helper()
	env, err := o.Enqueue(context.Background(), kind, class, body)
	if err != nil {
		t.Fatalf("Enqueue(%s): %v", kind, err)
	}
	return env
}

// peekAll reads the whole store in small pages, as the uplink would.
func peekAll(t *testing.T, o *Outbox) []Envelope {
	t.Helper()
	var all []Envelope
	var after uint64
	for {
		page, err := o.Peek(after, 97)
		if err != nil {
			t.Fatalf("Peek(%d): %v", after, err)
		}
		if len(page) == 0 {
			return all
		}
		all = append(all, page...)
		after = page[len(page)-1].Seq
	}
}

func seqsOf(envs []Envelope) []uint64 {
	out := make([]uint64, len(envs))
	for i, e := range envs {
		out[i] = e.Seq
	}
	return out
}

// seqRange returns first..last.
func seqRange(first, last uint64) []uint64 {
	var out []uint64
	for s := first; s <= last; s++ {
		out = append(out, s)
	}
	return out
}
