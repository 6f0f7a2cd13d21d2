package outbox

// Faults: a streak of failed writes is logged once (and shown in Stats) until a write
// succeeds again, and events evicted to stay within MaxBytes are summed up in one
// outbox_full fault event, which OnFault also hears of.

// writeFailedLocked records a write failure; the first of a streak is logged.
func (o *Outbox) writeFailedLocked(err error) {
	o.mu.Lock()
	o.writeErr = err
	pending := len(o.pending)
	o.mu.Unlock()
	if !o.failing {
		o.failing = true
		o.log.Error("cannot write to the outbox; holding messages in memory and retrying",
			"err", err, "path", o.path, "pending", pending)
	}
}

func (o *Outbox) writeSucceededLocked() {
	if !o.failing {
		return
	}
	o.failing = false
	o.mu.Lock()
	o.writeErr = nil
	o.mu.Unlock()
	o.log.Info("outbox writes succeed again", "path", o.path)
}

// emitDropFaultLocked writes one fault event for the events evicted since the last
// one. Its own write has room reserved by makeRoomLocked; should it evict more
// events anyway they are added to the next summary, never to an endless chain.
func (o *Outbox) emitDropFaultLocked() {
	if o.inFault || o.dropSum.n == 0 {
		return
	}
	o.inFault = true
	defer func() { o.inFault = false }()
	for range 3 {
		if o.dropSum.n == 0 {
			return
		}
		d := o.dropSum
		o.dropSum = dropSummary{}
		body := map[string]any{"fault": "outbox_full", "dropped_events": d.n, "first_seq": d.first, "last_seq": d.last}
		if err := o.writeFaultLocked(body); err != nil {
			o.log.Error("cannot enqueue the outbox_full fault event", "err", err, "dropped_events", d.n)
			return
		}
	}
}

// writeFaultLocked writes a fault event and tells OnFault. Called with wmu held.
func (o *Outbox) writeFaultLocked(body any) error {
	env, prefix, tail, err := o.prepare("fault", body)
	if err != nil {
		return err
	}
	w, err := o.acceptLocked(ClassEvent, prefix, tail)
	if err != nil {
		return err
	}
	o.reportFault(env, w.seq)
	return nil
}

func (o *Outbox) reportFault(env Envelope, seq uint64) {
	if o.onFault != nil {
		env.Seq = seq
		o.onFault(env)
	}
}
