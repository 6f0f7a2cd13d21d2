package outbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
)

// faultyDisk makes record writes fail on demand. A full disk or an I/O error cannot
// be produced for an ordinary test without root and a dedicated mount (see
// TestFullFilesystem for the real thing when that is possible), so these tests swap
// the write function through open's unexported parameter; everything around it
// (cutting partial records, eviction, pending, retries, backoff, waking callers,
// counters) is the real code.
type faultyDisk struct {
	err      atomic.Pointer[error] // non-nil: fail with it
	partial  atomic.Bool           // write half the record before failing
	attempts atomic.Int64          // writes attempted while failing
	once     atomic.Bool           // stop failing after one failure
}

func (d *faultyDisk) fail(err error) { d.err.Store(&err) }
func (d *faultyDisk) heal()          { d.err.Store(nil) }

func (d *faultyDisk) writeAt(f *os.File, b []byte, off int64) (int, error) {
	if p := d.err.Load(); p != nil {
		d.attempts.Add(1)
		if d.once.Load() {
			d.heal()
		}
		n := 0
		if d.partial.Load() {
			n, _ = f.WriteAt(b[:len(b)/2], off)
		}
		return n, fmt.Errorf("injected: %w", *p)
	}
	return f.WriteAt(b, off)
}

func openFaulty(t *testing.T, opts Options) (*Outbox, *faultyDisk) {
	t.Helper()
	d := &faultyDisk{}
	o, err := open(opts, fileOps{writeAt: d.writeAt})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return o, d
}

type enqueueResult struct {
	env Envelope
	err error
}

func TestWriteFailure(t *testing.T) {
	const maxPending = 5
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		logger, logs := captureLog()
		opts := testOptions(t, p)
		opts.MaxPending = maxPending
		opts.Logger = logger
		o, d := openFaulty(t, opts)
		defer func() {
			if err := o.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}()
		mustEnqueue(t, o, "telemetry", ClassTelemetry, 0) // seq 1, written while healthy

		d.partial.Store(true) // each failed write leaves half a record to cut
		d.fail(syscall.EIO)
		// Each Enqueue runs in its own goroutine: under always they wait for a
		// write that cannot happen yet.
		results := make(chan enqueueResult, maxPending)
		for i := range maxPending {
			go func() {
				env, err := o.Enqueue(context.Background(), "detection", ClassEvent, map[string]int{"i": i})
				results <- enqueueResult{env, err}
			}()
		}
		testkit.WaitFor(t, 10*time.Second, "all messages pending and the write error reported", func() bool {
			st := o.Stats()
			return st.Pending == maxPending && st.LastError != ""
		})
		if st := o.Stats(); !strings.Contains(st.LastError, syscall.EIO.Error()) || st.Depth != maxPending+1 {
			t.Errorf("while failing Stats = %+v, want LastError naming EIO and Depth %d", st, maxPending+1)
		}

		returned := 0
		if p == FsyncInterval {
			// Under interval a message held in memory is accepted.
			for range maxPending {
				if r := <-results; r.err != nil {
					t.Errorf("Enqueue under interval with a failing disk: %v", r.err)
				}
				returned++
			}
		} else if len(results) != 0 {
			t.Errorf("Enqueue under always returned while the disk could not be written: %+v", <-results)
		}

		// MaxPending reached: the next message is refused at once, and says why.
		_, err := o.Enqueue(context.Background(), "fault", ClassEvent, "one too many")
		if err == nil {
			t.Fatal("Enqueue past MaxPending succeeded")
		}
		if !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "cannot be written") || !strings.Contains(err.Error(), opts.Path) {
			t.Errorf("Enqueue past MaxPending = %v, want an error naming the outbox, saying it cannot be written and why", err)
		}

		// Several retries, one log line for the streak.
		testkit.WaitFor(t, 10*time.Second, "at least 3 write attempts", func() bool { return d.attempts.Load() >= 3 })
		if n := strings.Count(logs.String(), "cannot write to the outbox"); n != 1 {
			t.Errorf("%d 'cannot write' log lines after %d attempts, want 1:\n%s", n, d.attempts.Load(), logs)
		}

		d.heal()
		for ; returned < maxPending; returned++ {
			if r := <-results; r.err != nil {
				t.Errorf("Enqueue after the disk recovered: %v", r.err)
			}
		}
		waitWritten(t, o)
		if st := o.Stats(); st.LastError != "" || st.Depth != maxPending+1 {
			t.Errorf("after recovery Stats = %+v, want no LastError and Depth %d", st, maxPending+1)
		}
		if !strings.Contains(logs.String(), "outbox writes succeed again") {
			t.Errorf("recovery not logged:\n%s", logs)
		}
		// The refused message took no seq: the next one follows without a gap.
		mustEnqueue(t, o, "fault", ClassEvent, "after recovery")
		if got := seqsOf(peekAll(t, o)); !slices.Equal(got, seqRange(1, maxPending+2)) {
			t.Errorf("Peek = %v, want %v", got, seqRange(1, maxPending+2))
		}
		// The halves of records written by the failed attempts were cut.
		for _, path := range segFiles(t, opts.Path, "events") {
			parseSegment(t, path)
		}
	})
}

// TestNoSpaceEvictsTelemetry: ENOSPC on a disk shared with others (the outbox is
// within MaxBytes) evicts the oldest telemetry and retries once.
func TestNoSpaceEvictsTelemetry(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		opts := testOptions(t, p)
		o, d := openFaulty(t, opts)
		defer o.Close()
		for i := range 10 {
			mustEnqueue(t, o, "telemetry", ClassTelemetry, i)
		}
		d.once.Store(true)
		d.fail(syscall.ENOSPC)
		env := mustEnqueue(t, o, "detection", ClassEvent, "must fit")
		st := o.Stats()
		if st.EvictedTelemetry != 10 || st.Pending != 0 || st.Depth != 1 || st.Dropped != 0 {
			t.Errorf("Stats = %+v, want the 10 telemetry messages evicted and the event written", st)
		}
		if got := peekAll(t, o); len(got) != 1 || got[0].ID != env.ID {
			t.Errorf("Peek = %+v, want the event only", got)
		}
	})
}

// TestEnqueueContextCancel: under always, giving up the wait does not give up the
// message.
func TestEnqueueContextCancel(t *testing.T) {
	o, d := openFaulty(t, testOptions(t, FsyncAlways))
	defer func() {
		if err := o.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	d.fail(syscall.EIO)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := make(chan enqueueResult, 1)
	go func() {
		env, err := o.Enqueue(ctx, "fault", ClassEvent, "camera stalled")
		results <- enqueueResult{env, err}
	}()
	testkit.WaitFor(t, 10*time.Second, "the message to be pending", func() bool { return o.Stats().Pending == 1 && d.attempts.Load() > 0 })
	cancel()
	r := <-results
	if !errors.Is(r.err, context.Canceled) || !strings.Contains(r.err.Error(), "will still be written") {
		t.Fatalf("Enqueue after cancel = %v, want context.Canceled saying the message will still be written", r.err)
	}
	if r.env.Seq != 1 {
		t.Errorf("cancelled Enqueue returned seq %d, want the queued message's seq 1", r.env.Seq)
	}

	d.heal()
	// Nobody waits for it any more: it becomes readable once the syncer covers it.
	var got []Envelope
	testkit.WaitFor(t, 10*time.Second, "the cancelled message to be readable", func() bool {
		got = peekAll(t, o)
		return len(got) > 0
	})
	if len(got) != 1 || got[0].ID != r.env.ID {
		t.Errorf("Peek = %+v, want the cancelled message %s", got, r.env.ID)
	}
}

// TestCloseWithUnwritableDisk: when the last write attempt fails, nothing is
// dropped silently: Close says which messages are lost and waiting callers are told.
func TestCloseWithUnwritableDisk(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		o, d := openFaulty(t, testOptions(t, p))
		d.fail(syscall.EIO)
		results := make(chan enqueueResult, 2)
		for i := range 2 {
			go func() {
				env, err := o.Enqueue(context.Background(), "detection", ClassEvent, i)
				results <- enqueueResult{env, err}
			}()
		}
		testkit.WaitFor(t, 10*time.Second, "two pending messages", func() bool { return o.Stats().Pending == 2 })

		err := o.Close()
		if err == nil || !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "2 messages (seq 1..2) are lost") {
			t.Errorf("Close = %v, want an error saying seq 1..2 are lost because of EIO", err)
		}
		for range 2 {
			r := <-results
			switch {
			case p == FsyncInterval && r.err != nil:
				t.Errorf("Enqueue under interval: %v", r.err)
			case p == FsyncAlways && (r.err == nil || !strings.Contains(r.err.Error(), "closed before the message could be written")):
				t.Errorf("Enqueue under always = %v, want an error saying the outbox closed first", r.err)
			}
		}
	})
}
