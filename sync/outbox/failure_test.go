package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"go.etcd.io/bbolt"
)

// faultyStore makes commits fail on demand. A full disk or an I/O error cannot be
// produced here without root and a dedicated mount, so the tests swap the commit
// function through open's unexported parameter; everything around it (queueing,
// retries, backoff, waking callers, counters) is the real code.
type faultyStore struct {
	failing  atomic.Bool
	attempts atomic.Int64 // commits attempted while failing
}

// errDiskFull wraps the errno a full disk gives, as bbolt would report it.
var errDiskFull = fmt.Errorf("write outbox.db: %w", syscall.ENOSPC)

func (f *faultyStore) commit(db *bbolt.DB, recs []*record) error {
	if f.failing.Load() {
		f.attempts.Add(1)
		return errDiskFull
	}
	return commitBatch(db, recs)
}

func openFaulty(t *testing.T, opts Options) (*Outbox, *faultyStore) {
	t.Helper()
	f := &faultyStore{}
	o, err := open(opts, f.commit)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return o, f
}

type enqueueResult struct {
	env Envelope
	err error
}

func TestCommitFailure(t *testing.T) {
	const maxPending = 5
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		logs := &logBuffer{}
		opts := testOptions(t, p)
		opts.MaxPending = maxPending
		opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
		o, f := openFaulty(t, opts)
		defer func() {
			if err := o.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}()
		mustEnqueue(t, o, "telemetry", ClassTelemetry, 0) // seq 1, committed while healthy
		waitCommitted(t, o)

		f.failing.Store(true)
		// Each Enqueue runs in its own goroutine: under always they wait for a
		// commit that cannot happen yet.
		results := make(chan enqueueResult, maxPending)
		for i := range maxPending {
			go func() {
				env, err := o.Enqueue(context.Background(), "detection", ClassEvent, map[string]int{"i": i})
				results <- enqueueResult{env, err}
			}()
		}
		waitFor(t, "all messages pending and the commit error reported", func() bool {
			st := o.Stats()
			return st.Pending == maxPending && st.LastError != ""
		})
		if st := o.Stats(); !strings.Contains(st.LastError, syscall.ENOSPC.Error()) || st.Depth != maxPending+1 {
			t.Errorf("while failing Stats = %+v, want LastError naming ENOSPC and Depth %d", st, maxPending+1)
		}

		returned := 0
		if p == FsyncInterval {
			// The interval promise is "queued in memory", which still holds.
			for range maxPending {
				if r := <-results; r.err != nil {
					t.Errorf("Enqueue under interval with a failing store: %v", r.err)
				}
				returned++
			}
		} else if len(results) != 0 {
			t.Errorf("Enqueue under always returned while the store could not be written: %+v", <-results)
		}

		// MaxPending reached: the next message is refused at once, and the error
		// says why.
		_, err := o.Enqueue(context.Background(), "fault", ClassEvent, "one too many")
		if err == nil {
			t.Fatal("Enqueue past MaxPending succeeded")
		}
		if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "cannot be written") || !strings.Contains(err.Error(), opts.Path) {
			t.Errorf("Enqueue past MaxPending = %v, want an error naming the file, saying it cannot be written and why", err)
		}

		// Several retries, one log line for the streak.
		waitFor(t, "at least 3 commit attempts", func() bool { return f.attempts.Load() >= 3 })
		if n := strings.Count(logs.String(), "commit failed"); n != 1 {
			t.Errorf("%d 'commit failed' log lines after %d attempts, want 1:\n%s", n, f.attempts.Load(), logs)
		}

		f.failing.Store(false)
		for ; returned < maxPending; returned++ {
			if r := <-results; r.err != nil {
				t.Errorf("Enqueue after the store recovered: %v", r.err)
			}
		}
		waitCommitted(t, o)
		if st := o.Stats(); st.LastError != "" || st.Depth != maxPending+1 {
			t.Errorf("after recovery Stats = %+v, want no LastError and Depth %d", st, maxPending+1)
		}
		if !strings.Contains(logs.String(), "commit succeeded again") {
			t.Errorf("recovery not logged:\n%s", logs)
		}
		// The refused message took no seq: the next one follows without a gap.
		mustEnqueue(t, o, "fault", ClassEvent, "after recovery")
		waitCommitted(t, o)
		if got := seqsOf(peekAll(t, o)); !slices.Equal(got, seqRange(1, maxPending+2)) {
			t.Errorf("Peek = %v, want %v", got, seqRange(1, maxPending+2))
		}
	})
}

// TestEnqueueContextCancel: under always, giving up the wait does not give up the
// message.
func TestEnqueueContextCancel(t *testing.T) {
	o, f := openFaulty(t, testOptions(t, FsyncAlways))
	defer func() {
		if err := o.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	f.failing.Store(true)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	results := make(chan enqueueResult, 1)
	go func() {
		env, err := o.Enqueue(ctx, "fault", ClassEvent, "camera stalled")
		results <- enqueueResult{env, err}
	}()
	waitFor(t, "the message to be pending", func() bool { return o.Stats().Pending == 1 && f.attempts.Load() > 0 })
	cancel()
	r := <-results
	if !errors.Is(r.err, context.Canceled) || !strings.Contains(r.err.Error(), "will still be committed") {
		t.Fatalf("Enqueue after cancel = %v, want context.Canceled saying the message will still be committed", r.err)
	}
	if r.env.Seq != 1 {
		t.Errorf("cancelled Enqueue returned seq %d, want the queued message's seq 1", r.env.Seq)
	}

	f.failing.Store(false)
	waitCommitted(t, o)
	got := peekAll(t, o)
	if len(got) != 1 || got[0].ID != r.env.ID {
		t.Errorf("Peek = %+v, want the cancelled message %s", got, r.env.ID)
	}
}

// TestCloseWithUnwritableStore: when the final commit fails, nothing is dropped
// silently: Close says which messages are lost and waiting callers are told.
func TestCloseWithUnwritableStore(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		o, f := openFaulty(t, testOptions(t, p))
		f.failing.Store(true)
		results := make(chan enqueueResult, 2)
		for i := range 2 {
			go func() {
				env, err := o.Enqueue(context.Background(), "detection", ClassEvent, i)
				results <- enqueueResult{env, err}
			}()
		}
		waitFor(t, "two pending messages", func() bool { return o.Stats().Pending == 2 })

		err := o.Close()
		if err == nil || !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "2 messages (seq 1..2) are lost") {
			t.Errorf("Close = %v, want an error saying seq 1..2 are lost because of ENOSPC", err)
		}
		for range 2 {
			r := <-results
			switch {
			case p == FsyncInterval && r.err != nil:
				t.Errorf("Enqueue under interval: %v", r.err)
			case p == FsyncAlways && (r.err == nil || !strings.Contains(r.err.Error(), "closed before the message could be committed")):
				t.Errorf("Enqueue under always = %v, want an error saying the outbox closed first", r.err)
			}
		}
	})
}
