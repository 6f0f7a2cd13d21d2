package outbox

import (
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// run is the committer goroutine, started by Open and stopped by Close. It is the only
// writer of messages: under FsyncAlways it commits whenever Enqueue kicks it, taking
// everything that queued up during the previous commit (group commit, no artificial
// delay); under FsyncInterval it commits on every tick, or early when Enqueue finds
// half of MaxPending used. While commits fail it retries with capped exponential
// backoff and ignores kicks and ticks, since the retry takes everything pending anyway.
func (o *Outbox) run() {
	defer close(o.exited)

	var tick <-chan time.Time
	if o.policy == FsyncInterval {
		t := time.NewTicker(o.interval)
		defer t.Stop()
		tick = t.C
	}
	var (
		retry    *time.Timer // non-nil during a failure streak
		backoff  time.Duration
		failures int
	)
	for {
		kick, tickC, retryC := o.kick, tick, (<-chan time.Time)(nil)
		if retry != nil {
			kick, tickC, retryC = nil, nil, retry.C
		}
		select {
		case <-o.stop:
			if retry != nil {
				retry.Stop()
			}
			o.finalErr = o.finish()
			return
		case <-kick:
		case <-tickC:
		case <-retryC:
		}

		err := o.flush()
		if err == nil {
			if failures > 0 {
				o.log.Info("commit succeeded again", "failed_attempts", failures)
			}
			retry, backoff, failures = nil, 0, 0
			continue
		}
		failures++
		if failures == 1 {
			// Once per streak: a dead disk would otherwise log every backoff step.
			// Stats().LastError keeps the current error for the status page.
			o.log.Error("commit failed; holding messages in memory and retrying",
				"err", err, "path", o.path, "pending", o.Stats().Pending)
		}
		backoff = min(max(2*backoff, minBackoff), maxBackoff)
		retry = time.NewTimer(backoff)
	}
}

// flush commits everything pending, together with what a failed attempt left in
// flight, in one transaction and wakes the FsyncAlways callers waiting for it. On
// failure the messages stay in flight for the next attempt.
func (o *Outbox) flush() error {
	o.mu.Lock()
	o.inflight = append(o.inflight, o.pending...)
	o.pending = nil
	if o.wait != nil {
		o.inflightWaits = append(o.inflightWaits, o.wait)
		o.wait = nil
	}
	o.mu.Unlock()
	if len(o.inflight) == 0 {
		return nil
	}

	if err := o.commit(o.db, o.inflight); err != nil {
		err = fmt.Errorf("commit seq %d..%d: %w", o.inflight[0].seq, o.inflight[len(o.inflight)-1].seq, err)
		o.mu.Lock()
		o.lastErr = err
		o.mu.Unlock()
		return err
	}

	var bytes int64
	for _, r := range o.inflight {
		bytes += r.size()
	}
	o.mu.Lock()
	o.pendingN -= len(o.inflight)
	o.pendingBytes -= bytes
	o.committedN += len(o.inflight)
	o.committedBytes += bytes
	o.lastErr = nil
	o.mu.Unlock()
	for _, w := range o.inflightWaits {
		close(w.done)
	}
	clear(o.inflight)
	clear(o.inflightWaits)
	o.inflight, o.inflightWaits = o.inflight[:0], o.inflightWaits[:0]
	return nil
}

// finish is the final attempt made by Close. What it cannot commit is lost with the
// process's memory; the error says so, and so do the waiting callers' errors.
func (o *Outbox) finish() error {
	err := o.flush()
	if err == nil {
		return nil
	}
	lost := fmt.Errorf("the outbox closed before the message could be committed: %w", err)
	for _, w := range o.inflightWaits {
		w.err = lost
		close(w.done)
	}
	var bytes int64
	for _, r := range o.inflight {
		bytes += r.size()
	}
	first, last, n := o.inflight[0].seq, o.inflight[len(o.inflight)-1].seq, len(o.inflight)
	o.mu.Lock()
	o.pendingN -= n
	o.pendingBytes -= bytes
	o.mu.Unlock()
	o.inflight, o.inflightWaits = nil, nil
	return fmt.Errorf("outbox: close %s: %d messages (seq %d..%d) are lost: %w", o.path, n, first, last, err)
}

// commitBatch writes recs and the next seq in one bbolt transaction; bbolt fsyncs on
// commit. next_seq goes into the same transaction so that seq keeps counting after a
// restart even if every message has been acked and deleted.
func commitBatch(db *bbolt.DB, recs []*record) error {
	return db.Update(func(tx *bbolt.Tx) error {
		msgs := tx.Bucket(bucketMessages())
		for _, r := range recs {
			if err := msgs.Put(seqKey(r.seq), r.value); err != nil {
				return fmt.Errorf("put seq %d: %w", r.seq, err)
			}
		}
		next := binary.BigEndian.AppendUint64(nil, recs[len(recs)-1].seq+1)
		if err := tx.Bucket(bucketMeta()).Put(keyNextSeq(), next); err != nil {
			return fmt.Errorf("put next_seq: %w", err)
		}
		return nil
	})
}
