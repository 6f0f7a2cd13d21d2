package outbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// corruptError is data that cannot be an outbox: Open moves the store aside instead
// of failing.
type corruptError struct{ err error }

func (e *corruptError) Error() string { return e.err.Error() }
func (e *corruptError) Unwrap() error { return e.err }

func corrupt(format string, args ...any) error {
	return &corruptError{fmt.Errorf(format, args...)}
}

// recover loads the store. A corrupt one is moved aside and replaced by an empty one;
// the faults to enqueue say what happened.
func (o *Outbox) recover() ([]any, error) {
	var seen uint64 // next seq asked for by the state or a valid record
	stateErr, faults, err := o.load(&seen)
	var ce *corruptError
	if err != nil && !errors.As(err, &ce) {
		return nil, err
	}
	if ce != nil {
		// Seq must not go back after the store is set aside: load stopped at the
		// damage, so ask every segment of both logs for the seqs it shows.
		o.seqsOnDisk(&seen)
		o.closeAppend()
		moved, err := o.moveAside()
		if err != nil {
			return nil, err
		}
		o.log.Error("the outbox store is corrupt; moved it aside and starting empty",
			"err", ce, "path", o.path, "moved_to", moved, "next_seq", max(seen, 1))
		for i, l := range o.logs {
			o.logs[i] = newLog(l.class, o.path)
			if err := os.MkdirAll(o.logs[i].dir, 0o750); err != nil {
				return nil, err
			}
		}
		o.nextSeq = max(seen, 1)
		o.lastWritten = o.nextSeq - 1
		o.depth, o.bytes, o.segBytes, o.stateNext = 0, 0, 0, 0
		faults = []any{map[string]any{"fault": "outbox_corrupt", "moved_to": moved, "error": ce.Error()}}
	}
	if stateErr != nil {
		faults = append([]any{map[string]any{"fault": "outbox_state_lost", "error": stateErr.Error()}}, faults...)
	}
	if err := o.ops.syncDir(o.path); err != nil {
		return nil, err
	}
	// next_seq must be durable before any segment is deleted.
	if err := o.writeState(); err != nil {
		return nil, err
	}
	if o.policy == FsyncAlways {
		if err := o.syncLoaded(); err != nil {
			return nil, err
		}
	}
	// MaxBytes may have shrunk since the store was written.
	o.wmu.Lock()
	err = o.makeRoomLocked(0)
	o.emitDropFaultLocked()
	o.wmu.Unlock()
	o.flushDoomed()
	if err != nil {
		return nil, err
	}
	return faults, nil
}

// syncLoaded fdatasyncs the segments found at Open, and fsyncs their directories:
// the process that wrote them may have died before it synced them, and under
// FsyncAlways Peek returns only synced records. What fails is left to the syncer,
// and Peek returns nothing until it succeeds.
func (o *Outbox) syncLoaded() error {
	var errs []error
	for _, l := range o.logs {
		if err := o.ops.syncDir(l.dir); err != nil {
			errs = append(errs, fmt.Errorf("fsync directory %s: %w", l.dir, err))
			l.created++ // the syncer retries it
		}
		for _, s := range l.segs {
			if s == l.last() && l.f != nil {
				// The syncer's rounds cover the open segment.
				if err := o.ops.datasync(l.f); err != nil {
					errs = append(errs, err)
				}
				continue
			}
			f, err := os.Open(s.path)
			if err != nil {
				return fmt.Errorf("open %s to fdatasync it: %w", s.path, err)
			}
			if err := o.ops.datasync(f); err != nil {
				errs = append(errs, err)
				o.unsynced = append(o.unsynced, sealedFile{seg: s, f: f})
				continue
			}
			_ = f.Close()
		}
	}
	if len(errs) == 0 {
		o.syncedSeq = o.lastWritten
		return nil
	}
	// Gives the syncer's first round something to cover, so it moves the mark.
	o.writtenGen++
	o.syncErr = errors.Join(errs...)
	o.syncFail = true
	o.log.Error("cannot fdatasync the outbox segments found at open; retrying, and delivering none of them until it succeeds",
		"err", o.syncErr, "path", o.path)
	return nil
}

// load reads the state file, validates the tail segment of each log (cutting a torn
// tail), learns the older segments from their trailers and places the heads. seen
// is raised to the next seq that any valid data asks for. A state file that cannot
// be decoded is logged, returned as stateErr, and load goes on as if there were
// none: the heads are at the start of each log, so everything on disk is delivered
// again (at least once), and next_seq comes from the segments.
func (o *Outbox) load(seen *uint64) (stateErr error, faults []any, err error) {
	// The state first: its next_seq is worth keeping even if the rest is corrupt.
	st, haveState, err := o.readState()
	var bad *badStateError
	if errors.As(err, &bad) {
		o.log.Error("the outbox state file cannot be decoded; delivering every message on disk again, seq goes on from the segments",
			"path", filepath.Join(o.path, stateName), "err", bad)
		stateErr, err = bad, nil
	}
	if err != nil {
		return nil, nil, err
	}
	if haveState {
		*seen = max(*seen, st.next)
		o.stateNext = st.next
	}

	entries, err := os.ReadDir(o.path)
	if err != nil {
		return stateErr, nil, err
	}
	for _, e := range entries {
		switch name := e.Name(); name {
		case lockName, stateName, "lost+found":
		case stateTmpName:
			// An interrupted state write; the state file itself is whole.
			if err := os.Remove(filepath.Join(o.path, name)); err != nil {
				return stateErr, nil, err
			}
		case "events", "telemetry":
			if !e.IsDir() {
				return stateErr, nil, corrupt("%s is not a directory", filepath.Join(o.path, name))
			}
		default:
			return stateErr, nil, corrupt("unexpected entry %s", filepath.Join(o.path, name))
		}
	}
	for i, l := range o.logs {
		if err := os.MkdirAll(l.dir, 0o750); err != nil {
			return stateErr, nil, err
		}
		if err := o.loadLog(l, seen, &faults); err != nil {
			return stateErr, nil, err
		}
		if haveState {
			o.placeHead(l, st.heads[i])
		}
	}

	next := max(*seen, 1)
	for _, l := range o.logs {
		for _, s := range l.segs {
			o.depth += s.count
			o.bytes += s.payloadBytes()
			o.segBytes += s.size
			next = max(next, s.last+1)
		}
		if h := l.fix(l.head); h.seg != nil {
			o.depth -= h.idx
			o.bytes -= h.off - recHeader*int64(h.idx)
		}
		if s := l.last(); s != nil && !s.sealed {
			f, err := os.OpenFile(s.path, os.O_WRONLY, 0)
			if err != nil {
				return stateErr, nil, err
			}
			l.f = f
		}
	}
	o.nextSeq = next
	o.lastWritten = next - 1
	return stateErr, faults, nil
}

// loadLog lists the segments of l and learns what each holds.
func (o *Outbox) loadLog(l *wlog, seen *uint64, faults *[]any) error {
	entries, err := os.ReadDir(l.dir)
	if err != nil {
		return err
	}
	var bases []uint64
	for _, e := range entries {
		base, ok := parseSegName(e.Name())
		if !ok || !e.Type().IsRegular() {
			return corrupt("%s is not a segment", filepath.Join(l.dir, e.Name()))
		}
		bases = append(bases, base)
	}
	slices.Sort(bases)
	var prevLast uint64
	for i, base := range bases {
		s := &segment{base: base, path: filepath.Join(l.dir, segName(base))}
		fi, err := os.Stat(s.path)
		if err != nil {
			return err
		}
		s.size = fi.Size()
		tail := i == len(bases)-1
		if s.size == 0 {
			// Created, then nothing written before a crash or a write failure.
			if err := os.Remove(s.path); err != nil {
				return err
			}
			continue
		}
		if tail {
			err = o.scanSegment(s, true, seen, faults)
		} else {
			err = o.loadSealed(s, seen, faults)
		}
		if err != nil {
			return err
		}
		if s.count == 0 {
			// A tail torn at its first record.
			if err := os.Remove(s.path); err != nil {
				return err
			}
			continue
		}
		if s.base <= prevLast {
			return corrupt("segment %s starts at seq %d, not after the previous segment's last seq %d", s.path, s.base, prevLast)
		}
		prevLast = s.last
		l.segs = append(l.segs, s)
	}
	return nil
}

// loadSealed learns an older segment from its first record and its trailer, without
// reading the rest; the records in between are validated when they are read.
func (o *Outbox) loadSealed(s *segment, seen *uint64, faults *[]any) error {
	var r segReader
	if err := r.use(s); err != nil {
		return err
	}
	defer r.close()
	seq, _, err := r.read(0, s.size)
	if err != nil && !isBadRecord(err) {
		return err
	}
	if err != nil || seq != s.base {
		if err == nil {
			err = fmt.Errorf("first record has seq %d, the file name says %d", seq, s.base)
		}
		return corrupt("segment %s is not the last and has a bad record at offset 0: %w", s.path, err)
	}
	if s.size >= recHeader+trailerLen {
		seq, payload, err := r.read(s.size-trailerLen, s.size)
		if err != nil && !isBadRecord(err) {
			return err
		}
		if err == nil && seq == 0 {
			if count, last, ok := parseTrailer(payload); ok && last >= s.base {
				s.count, s.last, s.sealed = count, last, true
				s.dataEnd = s.size - trailerLen
				*seen = max(*seen, last+1)
				return nil
			}
		}
	}
	// Sealed without a trailer (a roll that could not write one): read it all.
	r.close()
	return o.scanSegment(s, false, seen, faults)
}

// scanSegment validates every record of s, learning its count and last seq. At the
// first bad record the file is truncated: in the tail segment that is a torn write
// and a warning; in an older one (which has no trailer, so it was the tail when
// something failed) an error and a fault event.
func (o *Outbox) scanSegment(s *segment, tail bool, seen *uint64, faults *[]any) error {
	var r segReader
	if err := r.use(s); err != nil {
		return err
	}
	defer r.close()
	var (
		off    int64
		prev   uint64
		count  int
		sealed bool
		bad    error
	)
	for off < s.size {
		seq, payload, err := r.read(off, s.size)
		if err != nil && !isBadRecord(err) {
			return err
		}
		if err == nil && seq == 0 {
			if c, last, ok := parseTrailer(payload); ok && off+trailerLen == s.size && c == count && last == prev {
				sealed = true
				break
			}
			err = badRecord("unexpected trailer at offset %d", off)
		}
		if err == nil && count == 0 && seq != s.base {
			err = badRecord("first record has seq %d, the file name says %d", seq, s.base)
		}
		if err == nil && count > 0 && seq <= prev {
			err = badRecord("record at offset %d has seq %d after %d", off, seq, prev)
		}
		if err != nil {
			bad = err
			break
		}
		count++
		prev = seq
		off += recHeader + int64(len(payload))
	}
	s.count, s.last, s.dataEnd, s.sealed = count, prev, off, sealed
	*seen = max(*seen, prev+1)
	if bad == nil {
		if sealed {
			s.size = off + trailerLen
		}
		return nil
	}
	cut := s.size - off
	if err := os.Truncate(s.path, off); err != nil {
		return err
	}
	s.size = off
	if tail {
		o.log.Warn("torn tail in the outbox: truncated the last segment at its first bad record",
			"path", s.path, "offset", off, "bytes_cut", cut, "err", bad)
		return nil
	}
	o.log.Error("outbox segment ends with a bad record; truncated it, messages after it are lost",
		"path", s.path, "offset", off, "bytes_cut", cut, "err", bad)
	*faults = append(*faults, map[string]any{
		"fault": "outbox_segment_corrupt", "segment": s.path, "offset": off, "bytes_cut": cut, "error": bad.Error(),
	})
	s.sealed = true
	return nil
}

// placeHead puts l's head where the state file says, dropping the segments before
// it (acked, but not deleted before a crash). A head that does not match the data
// falls back to the start of its segment: those messages are delivered again.
func (o *Outbox) placeHead(l *wlog, h stateHead) {
	l.head = pos{}
	if h.base == 0 || len(l.segs) == 0 {
		return
	}
	i := 0
	for i < len(l.segs) && l.segs[i].base < h.base {
		i++
	}
	for _, s := range l.segs[:i] {
		if err := os.Remove(s.path); err != nil {
			o.log.Warn("cannot delete an acked segment", "path", s.path, "err", err)
		}
	}
	l.segs = slices.Delete(l.segs, 0, i)
	if len(l.segs) == 0 || l.segs[0].base != h.base {
		return
	}
	s := l.segs[0]
	off, idx := int64(h.off), int(h.idx)
	if off > s.dataEnd && !s.sealed && s == l.last() {
		// The tail was cut below the head: everything left in it was acked.
		l.head = pos{s, s.dataEnd, s.count}
		return
	}
	ok := off <= s.dataEnd && idx <= s.count && off >= recHeader*int64(idx) && (off == s.dataEnd) == (idx == s.count)
	if ok && off < s.dataEnd {
		var r segReader
		if r.use(s) == nil {
			seq, _, err := r.read(off, s.dataEnd)
			ok = err == nil && seq != 0 && (h.seq == 0 || seq == h.seq)
			r.close()
		} else {
			ok = false
		}
	}
	if !ok {
		o.log.Warn("the acked head in the outbox state does not match its segment; delivering the segment again",
			"path", s.path, "offset", off)
		return
	}
	l.head = pos{s, off, idx}
}

// seqsOnDisk raises seen above every seq that the segments of both logs show: each
// file's name (its first seq) and its intact records (its trailer, or else its
// records up to the first bad one). It runs on a store about to be moved aside, so
// it changes nothing and skips what it cannot read.
func (o *Outbox) seqsOnDisk(seen *uint64) {
	for _, l := range o.logs {
		entries, err := os.ReadDir(l.dir)
		if err != nil {
			continue
		}
		for _, e := range entries {
			base, ok := parseSegName(e.Name())
			if !ok || !e.Type().IsRegular() {
				continue
			}
			*seen = max(*seen, base+1)
			if last := lastIntactSeq(filepath.Join(l.dir, e.Name()), base); last > 0 {
				*seen = max(*seen, last+1)
			}
		}
	}
}

// lastIntactSeq returns the highest seq a segment file shows: its trailer's, or
// else that of its records before the first bad one; 0 if it shows none.
func lastIntactSeq(path string, base uint64) uint64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	s := &segment{base: base, path: path, size: fi.Size()}
	var r segReader
	if r.use(s) != nil {
		return 0
	}
	defer r.close()
	if s.size >= trailerLen {
		if seq, payload, err := r.read(s.size-trailerLen, s.size); err == nil && seq == 0 {
			if _, last, ok := parseTrailer(payload); ok && last >= base {
				return last
			}
		}
	}
	var (
		off  int64
		last uint64
	)
	for off < s.size {
		seq, payload, err := r.read(off, s.size)
		if err != nil || seq == 0 {
			break
		}
		last = max(last, seq)
		off += recHeader + int64(len(payload))
	}
	return last
}

// closeAppend closes the append descriptors opened by load.
func (o *Outbox) closeAppend() {
	for _, l := range o.logs {
		if l.f != nil {
			_ = l.f.Close()
			l.f = nil
		}
	}
}

// moveAside renames the store to Path.corrupt-<UTC time>, creates an empty one and
// moves the lock over.
func (o *Outbox) moveAside() (string, error) {
	ts := o.now().UTC().Format("20060102T150405Z")
	dst := o.path + ".corrupt-" + ts
	for i := 2; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, os.ErrNotExist) {
			break
		}
		dst = fmt.Sprintf("%s.corrupt-%s-%d", o.path, ts, i)
	}
	if err := os.Rename(o.path, dst); err != nil {
		return "", fmt.Errorf("move the corrupt outbox aside: %w", err)
	}
	if err := os.MkdirAll(o.path, 0o750); err != nil {
		return "", fmt.Errorf("create directory: %w", err)
	}
	lock, err := lockDir(o.path)
	if err != nil {
		return "", err
	}
	_ = o.lock.Close()
	o.lock = lock
	if err := o.ops.syncDir(filepath.Dir(o.path)); err != nil {
		return "", err
	}
	return dst, nil
}
