package outbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
)

// A failing or slow fdatasync cannot be produced on a real disk in an ordinary test,
// so the tests in this file replace it through open's unexported fileOps; what they
// check (which fdatasync covers which record, what Enqueue and Peek wait for) is the
// real code.

// hasTrailer reports whether the segment file at path ends with a trailer record,
// i.e. it has been sealed.
func hasTrailer(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil || len(b) < trailerLen {
		return false
	}
	t := b[len(b)-trailerLen:]
	return string(t[recHeader:recHeader+8]) == trailerMagic && string(t[8:16]) == "\x00\x00\x00\x00\x00\x00\x00\x00"
}

// gate holds the hooked fsyncs until it is released, or for at most max, so that a
// broken test cannot hang.
type gate struct {
	ch   chan struct{}
	once sync.Once
	max  time.Duration
	held atomic.Int64 // fsyncs that entered the gate
}

func newGate(max time.Duration) *gate { return &gate{ch: make(chan struct{}), max: max} }

func (g *gate) wait() {
	g.held.Add(1)
	t := time.NewTimer(g.max)
	defer t.Stop()
	select {
	case <-g.ch:
	case <-t.C:
	}
}

func (g *gate) release() { g.once.Do(func() { close(g.ch) }) }

// TestSealSyncFailure: when the fdatasync of a sealed segment fails, no record
// written after it counts as synced until a retry of that fdatasync succeeds: under
// always, the Enqueue that rolled keeps waiting (and Peek does not return its
// record) while LastError names the segment; once the disk heals, it returns.
func TestSealSyncFailure(t *testing.T) {
	seg1 := segName(1)
	var failing atomic.Bool
	var fails, sealedSynced atomic.Int64
	failing.Store(true)
	ops := fileOps{datasync: func(f *os.File) error {
		if filepath.Base(f.Name()) != seg1 || !hasTrailer(f.Name()) {
			return datasync(f)
		}
		if failing.Load() {
			fails.Add(1)
			return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: syscall.EIO}
		}
		err := datasync(f)
		if err == nil {
			sealedSynced.Add(1)
		}
		return err
	}}
	opts := testOptions(t, FsyncAlways)
	opts.MaxBytes = 1 << 20 // 64 KiB segments: about 60 of these messages each
	o, err := open(opts, ops)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer func() {
		if err := o.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()

	// One writer, one message at a time, as a camera's rule engine would.
	ctx, cancel := context.WithCancel(context.Background())
	results := make(chan enqueueResult, 10000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			env, err := o.Enqueue(ctx, "detection", ClassEvent, strings.Repeat("s", 1000))
			if ctx.Err() != nil {
				return // the test is over; err is the cancellation
			}
			select {
			case results <- enqueueResult{env, err}:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() { cancel(); <-done }()

	// seg2 is the first seq of the second segment once it exists.
	var seg2 uint64
	check := func(r enqueueResult) {
		t.Helper()
		if r.err != nil {
			t.Fatalf("Enqueue: %v", r.err)
		}
		if seg2 == 0 {
			if segs := segFiles(t, opts.Path, "events"); len(segs) > 1 {
				seg2, _ = parseSegName(filepath.Base(segs[1]))
			}
		}
		if seg2 != 0 && r.env.Seq >= seg2 && sealedSynced.Load() == 0 {
			t.Fatalf("Enqueue under always returned seq %d (in the second segment) although the fdatasync of the sealed first segment failed %d times and never succeeded",
				r.env.Seq, fails.Load())
		}
	}
	testkit.WaitFor(t, 10*time.Second, "the sealed segment's fdatasync to fail and be retried", func() bool {
		for {
			select {
			case r := <-results:
				check(r)
				continue
			default:
			}
			return fails.Load() >= 2
		}
	})
	if st := o.Stats(); !strings.Contains(st.LastError, seg1) || !strings.Contains(st.LastError, syscall.EIO.Error()) {
		t.Errorf("while the sealed segment cannot be synced Stats = %+v, want LastError naming %s and EIO", st, seg1)
	}
	if seg2 == 0 {
		if segs := segFiles(t, opts.Path, "events"); len(segs) > 1 {
			seg2, _ = parseSegName(filepath.Base(segs[1]))
		}
	}
	if got, err := o.Peek(seg2-1, 10); err != nil || len(got) != 0 {
		t.Errorf("Peek after the sealed segment = %v, %v; want nothing, no fdatasync covers it", seqsOf(got), err)
	}

	failing.Store(false)
	testkit.WaitFor(t, 10*time.Second, "the Enqueue that rolled to return", func() bool {
		for {
			select {
			case r := <-results:
				check(r)
				if r.env.Seq >= seg2 {
					return true
				}
				continue
			default:
				return false
			}
		}
	})
	testkit.WaitFor(t, 10*time.Second, "LastError to clear", func() bool { return o.Stats().LastError == "" })
}

// TestPeekOnlySynced: under always, Peek returns a record and Notify announces it
// only once an fdatasync covers it, so that a message the broker acknowledged cannot
// lose its seq to another after a power cut. Under interval written records are
// returned at once. The hook holds every segment fdatasync until released.
func TestPeekOnlySynced(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		g := newGate(30 * time.Second)
		ops := fileOps{datasync: func(f *os.File) error {
			if strings.HasSuffix(f.Name(), ".seg") {
				g.wait()
			}
			return datasync(f)
		}}
		o, err := open(testOptions(t, p), ops)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		defer func() {
			g.release()
			if err := o.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}()

		results := make(chan enqueueResult, 1)
		go func() {
			env, err := o.Enqueue(context.Background(), "detection", ClassEvent, "held")
			results <- enqueueResult{env, err}
		}()
		testkit.WaitFor(t, 10*time.Second, "the record written and its fdatasync held", func() bool { return o.Stats().Depth == 1 && g.held.Load() > 0 })

		got, err := o.Peek(0, 10)
		if err != nil {
			t.Fatalf("Peek: %v", err)
		}
		if p == FsyncInterval {
			if len(got) != 1 {
				t.Fatalf("under interval Peek = %v while the fdatasync is held, want the written record", seqsOf(got))
			}
			if r := <-results; r.err != nil {
				t.Fatalf("Enqueue: %v", r.err)
			}
			return
		}
		if len(got) != 0 {
			t.Fatalf("under always Peek = %v before any fdatasync covered it, want nothing", seqsOf(got))
		}
		select {
		case <-o.Notify():
			t.Error("Notify announced a record no fdatasync covers yet")
		default:
		}

		g.release()
		if r := <-results; r.err != nil || r.env.Seq != 1 {
			t.Fatalf("Enqueue = %+v, want seq 1", r)
		}
		select {
		case <-o.Notify():
		case <-time.After(10 * time.Second):
			t.Fatal("no Notify token once the record was synced")
		}
		if got, err := o.Peek(0, 10); err != nil || len(got) != 1 || got[0].Seq != 1 {
			t.Errorf("after the fdatasync Peek = %v, %v; want seq 1", seqsOf(got), err)
		}
	})
}

// TestRollWithoutFsync: an Enqueue that seals a segment and starts the next one does
// not wait for an fsync (the syncer does them). The hook holds every fsync (segments,
// directories, state) for slow; each Enqueue under interval must return within slow/2, a bound
// far above what write(2) needs. Speed itself is measured by BenchmarkEnqueue.
func TestRollWithoutFsync(t *testing.T) {
	const slow = 8 * time.Second
	opts := testOptions(t, FsyncInterval)
	opts.MaxBytes = 1 << 20 // 64 KiB segments
	g := newGate(slow)
	var armed atomic.Bool // from after Open, which may fsync the state as it likes
	ops := fileOps{
		datasync: func(f *os.File) error {
			if armed.Load() {
				g.wait()
			}
			return datasync(f)
		},
		syncDir: func(dir string) error {
			if armed.Load() {
				g.wait()
			}
			return syncDir(dir)
		},
	}
	o, err := open(opts, ops)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	armed.Store(true)
	defer func() {
		g.release()
		if err := o.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()

	// One write for the syncer to take up; from then on it is held in that fsync, and
	// every Enqueue below (rolling segments too) must get by without it.
	if _, err := o.Enqueue(context.Background(), "telemetry", ClassTelemetry, "first"); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	testkit.WaitFor(t, 10*time.Second, "the syncer to be held in an fsync", func() bool { return g.held.Load() > 0 })

	results := make(chan enqueueResult, 1)
	for i := 0; len(segFiles(t, opts.Path, "telemetry")) < 4; i++ {
		go func() {
			env, err := o.Enqueue(context.Background(), "telemetry", ClassTelemetry, strings.Repeat("r", 2000))
			results <- enqueueResult{env, err}
		}()
		deadline := time.NewTimer(slow / 2)
		select {
		case r := <-results:
			deadline.Stop()
			if r.err != nil {
				t.Fatalf("Enqueue %d: %v", i, r.err)
			}
		case <-deadline.C:
			g.release() // let the blocked Enqueue finish before the test ends
			<-results
			t.Fatalf("Enqueue %d (segments: %d) did not return within %v while fsyncs were held: it waited for one",
				i, len(segFiles(t, opts.Path, "telemetry")), slow/2)
		}
	}
	if g.held.Load() == 0 {
		t.Error("no fsync was held: the test proved nothing")
	}
}

// TestEnqueueContextWhileLocked: a caller whose context ends while it waits for the
// write lock (held by slow I/O elsewhere) gets an error saying its message was not
// queued, and the message takes no seq.
func TestEnqueueContextWhileLocked(t *testing.T) {
	opts := testOptions(t, FsyncInterval)
	clock := newTestClock()
	prepared := make(chan struct{}, 1)
	opts.Now = func() time.Time {
		// Enqueue reads the clock after it has checked its context, before it takes
		// the write lock.
		select {
		case prepared <- struct{}{}:
		default:
		}
		return clock.Now()
	}
	o := openTest(t, opts)

	o.wmu.Lock()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := make(chan enqueueResult, 1)
	go func() {
		env, err := o.Enqueue(ctx, "detection", ClassEvent, "late")
		results <- enqueueResult{env, err}
	}()
	<-prepared
	cancel()
	var r enqueueResult
	select {
	case r = <-results:
		o.wmu.Unlock()
	case <-time.After(10 * time.Second):
		o.wmu.Unlock()
		r = <-results
		t.Fatalf("Enqueue kept waiting for the write lock after its context ended; then returned %+v", r)
	}
	if !errors.Is(r.err, context.Canceled) || !strings.Contains(r.err.Error(), "not queued") {
		t.Errorf("Enqueue = %v, want context.Canceled saying the message was not queued", r.err)
	}
	if st := o.Stats(); st.Depth != 0 || st.NextSeq != 1 {
		t.Errorf("Stats = %+v, want nothing queued and NextSeq 1", st)
	}
	if env := mustEnqueue(t, o, "detection", ClassEvent, "next"); env.Seq != 1 {
		t.Errorf("next seq = %d, want 1", env.Seq)
	}
}
