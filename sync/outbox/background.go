package outbox

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// syncer fdatasyncs the open segments. Under FsyncAlways it runs as soon as an
// Enqueue waits, covering everything written so far, so that callers arriving
// during one fdatasync share the next (group commit); under FsyncInterval it runs
// every interval. A failed fdatasync is retried with capped backoff while the
// waiters keep waiting. Started by Open, stopped by Close.
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

// syncFilesLocked fdatasyncs the append descriptors and, on success, wakes the
// callers whose records that covers. Called with fmu held, so that no descriptor
// is closed meanwhile.
func (o *Outbox) syncFilesLocked() error {
	o.mu.Lock()
	target := o.writtenGen
	if target == o.syncedGen {
		o.mu.Unlock()
		return nil
	}
	var files []*os.File
	for _, l := range o.logs {
		if l.f != nil {
			files = append(files, l.f)
		}
	}
	o.mu.Unlock()

	var err error
	for _, f := range files {
		err = errors.Join(err, datasync(f))
	}
	o.mu.Lock()
	if err == nil {
		o.syncedGen = target
		close(o.syncCh)
		o.syncCh = make(chan struct{})
		o.syncErr = nil
	} else {
		o.syncErr = err
	}
	o.mu.Unlock()
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
		if err != nil && isNoSpace(err) && o.evictOldestLocked(o.logs[logIndex(ClassTelemetry)]) {
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
