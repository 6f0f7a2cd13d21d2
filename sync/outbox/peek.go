package outbox

import (
	"encoding/json"
	"fmt"
	"math"
)

// deferCap bounds the acks held for messages the index does not cover (Peek ran
// more than winCap messages ahead of the oldest unacked one).
const deferCap = 1 << 16

// rrec is a record read by Peek, not yet consumed.
type rrec struct {
	at      pos
	seq     uint64
	payload []byte // aliases the log's reader buffer
}

func (r *rrec) next() pos {
	return pos{r.at.seg, r.at.off + recHeader + int64(len(r.payload)), r.at.idx + 1}
}

// Peek returns up to n messages with seq > after that are written and not acked,
// in seq order across both classes. Under FsyncAlways only messages an fdatasync
// covers are returned: one the broker acknowledged before it was on disk could
// otherwise be lost in a power cut and its seq given to another message. Under
// FsyncInterval written messages are returned at once. It keeps a cursor per log, so a drainer calling
// Peek(last seq returned, window) again and again reads each record once; an after
// below the cursor rescans from the oldest unacked message. It holds no more than
// the returned messages in memory.
func (o *Outbox) Peek(after uint64, n int) ([]Envelope, error) {
	o.pmu.Lock()
	defer o.pmu.Unlock()
	// A reader left on a deleted segment holds its disk space.
	o.closeReadersOnDeleted(func(l *wlog) *segReader { return &l.rd })
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil, fmt.Errorf("outbox: peek %s: outbox is closed", o.path)
	}
	// Seqs are written in order across both logs, so what is visible now is exactly
	// 1..lastWritten (1..syncedSeq under always): a record beyond it in one log must
	// not be returned before a lower one that a concurrent write is adding to the
	// other log.
	visible := o.lastWritten
	if o.policy == FsyncAlways {
		visible = o.syncedSeq
	}
	for _, l := range o.logs {
		if after < l.cur.seq {
			l.cur = cursor{pos: l.head}
		}
	}
	o.mu.Unlock()
	if n <= 0 || after == math.MaxUint64 || after >= visible {
		return nil, nil
	}

	var (
		cand [2]*rrec
		done [2]bool
		out  = make([]Envelope, 0, min(n, 1024))
	)
	for len(out) < n {
		pick := -1
		for i, l := range o.logs {
			if cand[i] == nil && !done[i] {
				r, err := o.readNext(l)
				if err != nil {
					return nil, fmt.Errorf("outbox: peek %s after seq %d: %w", o.path, after, err)
				}
				if r == nil || r.seq > visible {
					done[i] = true
				} else {
					cand[i] = r
				}
			}
			if cand[i] != nil && (pick < 0 || cand[i].seq < cand[pick].seq) {
				pick = i
			}
		}
		if pick < 0 {
			break
		}
		r := cand[pick]
		cand[pick] = nil
		if o.consume(o.logs[pick], r) || r.seq <= after {
			continue
		}
		var env Envelope
		if err := json.Unmarshal(r.payload, &env); err != nil {
			return nil, fmt.Errorf("outbox: peek %s: seq %d in %s at offset %d: decode envelope: %w", o.path, r.seq, r.at.seg.path, r.at.off, err)
		}
		out = append(out, env)
	}
	return out, nil
}

// readNext reads the record at l's cursor without consuming it; nil at the end of
// what is written. A bad record cuts its segment there and reading goes on after it.
func (o *Outbox) readNext(l *wlog) (*rrec, error) {
	for {
		o.mu.Lock()
		p := l.fix(l.cur.pos)
		l.cur.pos = p
		var limit int64
		if p.seg != nil {
			limit = p.seg.dataEnd
		}
		o.mu.Unlock()
		if p.seg == nil || p.off >= limit {
			return nil, nil
		}
		if err := l.rd.use(p.seg); err != nil {
			if o.segDeleted(p.seg) {
				continue
			}
			return nil, err
		}
		seq, payload, err := l.rd.read(p.off, limit)
		if err == nil && seq == 0 {
			err = badRecord("record at offset %d has seq 0", p.off)
		}
		if isBadRecord(err) {
			if !o.cut(l, p, err) {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		return &rrec{at: p, seq: seq, payload: payload}, nil
	}
}

func (o *Outbox) segDeleted(s *segment) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return s.deleted
}

// consume moves l's cursor past r, adds r to the index if it is next in line, and
// reports whether r is acked (or gone) and so must not be returned.
func (o *Outbox) consume(l *wlog, r *rrec) (skip bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	l.cur.pos = r.next()
	l.cur.seq = max(l.cur.seq, r.seq)
	if r.at.seg.deleted {
		return true
	}
	h := l.fix(l.head)
	if before(r.at, h) {
		return true
	}
	we := l.fix(l.winEnd())
	switch {
	case before(r.at, we):
		e := l.find(r.seq)
		return e != nil && e.acked
	case r.at.seg == we.seg && r.at.off == we.off:
		_, acked := o.deferred[r.seq]
		if len(l.win) >= winCap {
			return acked
		}
		if acked {
			delete(o.deferred, r.seq)
			o.depth--
			o.bytes -= int64(len(r.payload))
		}
		l.win = append(l.win, winEntry{seq: r.seq, at: r.at, plen: int64(len(r.payload)), acked: acked})
		l.known = max(l.known, r.seq)
		o.advanceLocked(l)
		return acked
	default:
		_, acked := o.deferred[r.seq]
		return acked
	}
}

// cut handles a bad record found at p while reading an older segment: the rest of
// the segment is unreadable, its messages are counted as lost, logged, and reported
// by a fault event. It returns false when it cannot be handled this way (the record
// was read fine before), so the caller reports an error instead.
func (o *Outbox) cut(l *wlog, p pos, why error) bool {
	o.mu.Lock()
	s := p.seg
	if s.deleted || p.off >= s.dataEnd {
		o.mu.Unlock()
		return true
	}
	if we := l.fix(l.winEnd()); before(p, we) {
		o.mu.Unlock()
		return false
	}
	lost := max(s.count-p.idx, 0)
	lostBytes := max((s.dataEnd-p.off)-recHeader*int64(lost), 0)
	s.count, s.dataEnd = p.idx, p.off
	s.sealed = true // a writer closes its descriptor before the next append
	o.depth -= lost
	o.bytes -= lostBytes
	if l.class == ClassEvent {
		o.dropped += uint64(lost)
	} else {
		o.evictedTel += uint64(lost)
	}
	o.faults = append(o.faults, map[string]any{
		"fault": "outbox_segment_corrupt", "segment": s.path, "offset": p.off, "lost_messages": lost, "error": why.Error(),
	})
	o.mu.Unlock()
	o.log.Error("corrupt record in an outbox segment; skipping the rest of it",
		"path", s.path, "offset", p.off, "lost_messages", lost, "class", l.name, "err", why)
	kick(o.houseKick)
	return true
}

// advanceLocked moves l's head past the acked records at the start of the index.
func (o *Outbox) advanceLocked(l *wlog) {
	k := 0
	for k < len(l.win) && l.win[k].acked {
		k++
	}
	if k == 0 {
		return
	}
	l.head = l.win[k-1].next()
	l.win = l.win[k:]
	if len(l.win) == 0 {
		l.win = nil
	}
	o.stateDirty = true
}

// Ack forgets delivered messages. Unknown, already acked and evicted seqs are
// ignored. Segments left entirely behind the acked head are deleted, so disk space
// returns as the backlog drains; the head is saved to the state file within a
// second (after a crash, messages acked since are delivered again).
func (o *Outbox) Ack(seqs ...uint64) error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return fmt.Errorf("outbox: ack %d messages in %s: outbox is closed", len(seqs), o.path)
	}
	for _, s := range seqs {
		o.ackLocked(s)
	}
	for _, l := range o.logs {
		o.advanceLocked(l)
	}
	fallback := len(o.deferred) > 0
	o.mu.Unlock()
	// A reader left on a deleted segment holds its disk space; one in use is
	// checked by ackBeyondIndex when it starts.
	if o.amu.TryLock() {
		o.closeReadersOnDeleted(func(l *wlog) *segReader { return &l.ard })
		o.amu.Unlock()
	}

	if fallback {
		if err := o.ackBeyondIndex(); err != nil {
			return fmt.Errorf("outbox: ack %d messages in %s: %w", len(seqs), o.path, err)
		}
	}
	if o.collectable() {
		o.wmu.Lock()
		deleted := o.collectLocked(false)
		o.wmu.Unlock()
		saved := o.flushDoomed()
		// Save the head that now points past the deleted segments.
		if deleted && !saved {
			if err := o.writeState(); err != nil {
				o.log.Warn("cannot save the outbox state", "err", err)
			}
		}
	}
	return nil
}

func (o *Outbox) ackLocked(seq uint64) {
	if seq == 0 || seq > o.lastWritten {
		return
	}
	for _, l := range o.logs {
		if e := l.find(seq); e != nil {
			if !e.acked {
				e.acked = true
				o.depth--
				o.bytes -= e.plen
			}
			return
		}
	}
	for _, l := range o.logs {
		if seq > o.knownLocked(l) {
			if len(o.deferred) < deferCap {
				o.deferred[seq] = struct{}{}
			} else if !o.deferWarned {
				o.deferWarned = true
				o.log.Warn("too many acks for messages far beyond the oldest unacked one; some are ignored and will be delivered again after a restart",
					"held", len(o.deferred))
			}
			return
		}
	}
}

// knownLocked is a seq such that every record of l not in the index and not acked
// has a higher one.
func (o *Outbox) knownLocked(l *wlog) uint64 {
	we := l.fix(l.winEnd())
	if we.seg == nil || (we.seg == l.last() && we.off >= we.seg.dataEnd) {
		return o.lastWritten
	}
	return l.known
}

// pruneDeferredLocked drops held acks that no log can still hold a record for.
func (o *Outbox) pruneDeferredLocked() {
	if len(o.deferred) == 0 {
		return
	}
	floor := uint64(math.MaxUint64)
	for _, l := range o.logs {
		floor = min(floor, o.knownLocked(l))
	}
	for s := range o.deferred {
		if s <= floor {
			delete(o.deferred, s)
		}
	}
}

// ackBeyondIndex moves heads over acked records that the index does not cover,
// reading their headers from disk.
func (o *Outbox) ackBeyondIndex() error {
	o.amu.Lock()
	defer o.amu.Unlock()
	o.closeReadersOnDeleted(func(l *wlog) *segReader { return &l.ard })
	for _, l := range o.logs {
		for {
			o.mu.Lock()
			if o.closed || len(o.deferred) == 0 || len(l.win) > 0 {
				o.mu.Unlock()
				break
			}
			h := l.fix(l.head)
			if h.seg == nil || h.off >= h.seg.dataEnd {
				o.mu.Unlock()
				break
			}
			limit := h.seg.dataEnd
			o.mu.Unlock()

			if err := l.ard.use(h.seg); err != nil {
				if o.segDeleted(h.seg) {
					continue
				}
				return err
			}
			seq, payload, err := l.ard.read(h.off, limit)
			if err == nil && seq == 0 {
				err = badRecord("record at offset %d has seq 0", h.off)
			}
			if isBadRecord(err) {
				if !o.cut(l, h, err) {
					return err
				}
				continue
			}
			if err != nil {
				return err
			}

			o.mu.Lock()
			if now := l.fix(l.head); now != h || len(l.win) > 0 {
				o.mu.Unlock()
				continue
			}
			plen := int64(len(payload))
			next := pos{h.seg, h.off + recHeader + plen, h.idx + 1}
			l.known = max(l.known, seq)
			if _, ok := o.deferred[seq]; ok {
				delete(o.deferred, seq)
				o.depth--
				o.bytes -= plen
				l.head = next
				o.stateDirty = true
				o.mu.Unlock()
				continue
			}
			// Not acked: index it, so that it is not read again.
			l.win = append(l.win, winEntry{seq: seq, at: h, plen: plen})
			o.mu.Unlock()
			break
		}
	}
	o.mu.Lock()
	o.pruneDeferredLocked()
	o.mu.Unlock()
	return nil
}

// collectable reports whether collectLocked(false) has something to delete.
func (o *Outbox) collectable() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, l := range o.logs {
		h := l.fix(l.head)
		if h.seg == nil {
			continue
		}
		if h.seg != l.segs[0] {
			return true
		}
		if last := l.last(); h.seg == last && h.off >= last.dataEnd && (last.sealed || last.size > o.segSize/4) {
			return true
		}
	}
	return false
}
