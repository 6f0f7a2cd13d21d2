package outbox

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// syncer makes written records durable: the open segments, the sealed ones not
// synced yet and the directories of new segments. Under FsyncAlways it runs as soon
// as an Enqueue waits, covering everything written so far, so that callers arriving
// during one fdatasync share the next (group commit); under FsyncInterval it runs
// every interval. A failure is retried with capped backoff while the waiters keep
// waiting. It also closes the descriptors of deleted segments that the writer could
// not close while it was busy. Started by Open, stopped by Close.
func (o *Outbox) syncer() {
	defer o.wg.Done()
	var tick <-chan time.Time
	if o.policy == FsyncInterval {
		t := time.NewTicker(o.interval)
		defer t.Stop()
		tick = t.C
	}
	var backoff time.Duration
	for {
		select {
		case <-o.stop:
			return
		case <-o.syncKick:
		case <-tick:
		}
		o.fmu.Lock()
		err := o.syncFilesLocked()
		o.fmu.Unlock()
		if err == nil {
			backoff = 0
			continue
		}
		backoff = min(max(2*backoff, minBackoff), maxBackoff)
		t := time.NewTimer(backoff)
		select {
		case <-o.stop:
			t.Stop()
			return
		case <-t.C:
		}
		kick(o.syncKick)
	}
}

// syncFilesLocked fsyncs the directories that have new segments and fdatasyncs the
// sealed segments not synced yet and the open ones; a sealed one is closed once that
// succeeds. Only if all of it succeeded does the synced mark move to what was
// written when the round began, waking the callers that it covers (and, under
// FsyncAlways, the drainer: Peek returns only synced records). A failure leaves the
// mark where it was, so no record after a file that failed counts as synced, and
// goes to LastError; the syncer retries. Called with fmu held, so that no
// descriptor is closed meanwhile.
func (o *Outbox) syncFilesLocked() error {
	o.mu.Lock()
	target, targetSeq := o.writtenGen, o.lastWritten
	var (
		created  [2]uint64
		dirDirty [2]bool
	)
	for i, l := range o.logs {
		created[i], dirDirty[i] = l.created, l.created != l.dirSynced
	}
	if target == o.syncedGen && dirDirty == [2]bool{} && len(o.unsynced) == 0 && len(o.retired) == 0 {
		o.mu.Unlock()
		return nil
	}
	sealed := slices.Clone(o.unsynced)
	var files []*os.File
	for _, l := range o.logs {
		if l.f != nil {
			files = append(files, l.f)
		}
	}
	o.mu.Unlock()

	var errs []error
	var dirOK [2]bool
	for i, l := range o.logs {
		if !dirDirty[i] {
			continue
		}
		if err := o.ops.syncDir(l.dir); err != nil {
			errs = append(errs, fmt.Errorf("fsync directory %s: %w", l.dir, err))
			continue
		}
		dirOK[i] = true
	}
	var done []*os.File
	for _, sf := range sealed {
		if err := o.ops.datasync(sf.f); err != nil {
			errs = append(errs, fmt.Errorf("sealed segment: %w", err))
			continue
		}
		done = append(done, sf.f)
	}
	for _, f := range files {
		if err := o.ops.datasync(f); err != nil {
			errs = append(errs, err)
		}
	}
	err := errors.Join(errs...)

	o.mu.Lock()
	// A sealed descriptor that is no longer listed belongs to a deleted segment: it
	// is in retired now.
	toClose := o.retired
	o.retired = nil
	o.unsynced = slices.DeleteFunc(o.unsynced, func(sf sealedFile) bool {
		if slices.Contains(done, sf.f) {
			toClose = append(toClose, sf.f)
			return true
		}
		return false
	})
	for i, l := range o.logs {
		if dirOK[i] {
			l.dirSynced = max(l.dirSynced, created[i])
		}
	}
	if err == nil {
		if target > o.syncedGen {
			o.syncedGen = target
			o.syncedSeq = max(o.syncedSeq, targetSeq)
			if o.policy == FsyncAlways {
				// Readers first, then the waiting Enqueues: once Enqueue returns, the
				// drainer's token is already there, never a late one that wakes it
				// for nothing after it has read.
				o.signal()
			}
			close(o.syncCh)
			o.syncCh = make(chan struct{})
		}
		o.syncErr = nil
	} else {
		o.syncErr = err
	}
	o.mu.Unlock()
	for _, f := range toClose {
		_ = f.Close()
	}
	switch {
	case err != nil && !o.syncFail:
		o.syncFail = true
		o.log.Error("cannot fdatasync the outbox; retrying", "err", err, "path", o.path)
	case err == nil && o.syncFail:
		o.syncFail = false
		o.log.Info("outbox fdatasync succeeds again", "path", o.path)
	}
	return err
}

// janitor writes what readers and recoveries queue (fault events), retries pending
// messages with capped backoff while the disk refuses them, and saves the state
// file once a second while acks move the heads. Started by Open, stopped by Close.
func (o *Outbox) janitor() {
	defer o.wg.Done()
	timer := time.NewTimer(statePeriod)
	defer timer.Stop()
	var (
		backoff   time.Duration
		nextRetry time.Time
		lastState time.Time
	)
	for {
		select {
		case <-o.stop:
			return
		case <-o.houseKick:
		case <-timer.C:
		}
		now := time.Now()
		o.wmu.Lock()
		o.flushFaultsLocked()
		if o.pendingLen() > 0 && !now.Before(nextRetry) {
			if err := o.retryPendingLocked(false); err != nil {
				backoff = min(max(2*backoff, minBackoff), maxBackoff)
				nextRetry = now.Add(backoff)
			} else {
				backoff, nextRetry = 0, time.Time{}
			}
		}
		o.wmu.Unlock()
		if o.flushDoomed() {
			lastState = now
		}
		if o.policy == FsyncAlways {
			kick(o.syncKick)
		}

		o.mu.Lock()
		dirty := o.stateDirty
		o.mu.Unlock()
		if dirty && now.Sub(lastState) >= statePeriod {
			if err := o.writeState(); err != nil {
				o.log.Warn("cannot save the outbox state", "err", err)
			}
			lastState = now
		}

		wait := statePeriod
		if o.pendingLen() > 0 {
			wait = max(time.Until(nextRetry), time.Millisecond)
		}
		timer.Reset(wait)
	}
}

func (o *Outbox) pendingLen() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.pending)
}

// retryPendingLocked writes pending messages in seq order until one fails. In the
// final attempt (Close) what still fails is lost, and the error says which.
func (o *Outbox) retryPendingLocked(final bool) error {
	for {
		o.mu.Lock()
		if len(o.pending) == 0 {
			o.pending = nil
			o.mu.Unlock()
			o.writeSucceededLocked()
			return nil
		}
		w := o.pending[0]
		o.mu.Unlock()

		err := o.storeLocked(w, false)
		if err != nil && isNoSpace(err) && o.evictOldestLocked(o.logs[logIndex(ClassTelemetry)], true) {
			err = o.storeLocked(w, false)
		}
		if err != nil {
			o.writeFailedLocked(err)
			if !final {
				return err
			}
			o.mu.Lock()
			lost := o.pending
			o.pending = nil
			for _, w := range lost {
				w.err = fmt.Errorf("the outbox closed before the message could be written: %w", err)
				o.depth--
				o.bytes -= w.plen()
			}
			o.mu.Unlock()
			return fmt.Errorf("outbox: close %s: %d messages (seq %d..%d) are lost: %w",
				o.path, len(lost), lost[0].seq, lost[len(lost)-1].seq, err)
		}
		o.mu.Lock()
		o.pending[0] = nil
		o.pending = o.pending[1:]
		o.mu.Unlock()
		o.emitDropFaultLocked()
	}
}

// flushFaultsLocked writes the fault events that readers queued.
func (o *Outbox) flushFaultsLocked() {
	o.mu.Lock()
	faults := o.faults
	o.faults = nil
	o.mu.Unlock()
	for _, body := range faults {
		if err := o.writeFaultLocked(body); err != nil {
			o.log.Error("cannot enqueue a fault event", "err", err, "fault", body)
		}
	}
}
