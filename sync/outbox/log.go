package outbox

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// segment is one file of a log. Its fields are guarded by Outbox.mu; size also only
// changes under wmu, so a wmu holder may read it without mu.
type segment struct {
	base    uint64 // seq of its first record; the file is named after it
	path    string
	size    int64 // bytes of the file: records, and the trailer once sealed
	dataEnd int64 // end of the readable records; short of size by the trailer or by a corrupt part
	count   int   // records in [0, dataEnd)
	last    uint64
	sealed  bool // nothing more is appended
	deleted bool
}

func (s *segment) payloadBytes() int64 { return s.dataEnd - recHeader*int64(s.count) }

func segName(base uint64) string { return fmt.Sprintf("%020d.seg", base) }

func parseSegName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, ".seg")
	if !ok || len(digits) != 20 {
		return 0, false
	}
	base, err := strconv.ParseUint(digits, 10, 64)
	return base, err == nil && base > 0
}

// pos is a place in a log: the record starting at off in seg, with idx records
// before it in seg. A nil seg is the start of the log's first segment.
type pos struct {
	seg *segment
	off int64
	idx int
}

// winEntry is a record of the index: the records from the head on that Peek has
// read, so that acks need no disk I/O to move the head or count Depth.
type winEntry struct {
	seq   uint64
	at    pos
	plen  int64
	acked bool
}

func (e *winEntry) next() pos { return pos{e.at.seg, e.at.off + recHeader + e.plen, e.at.idx + 1} }

// winCap bounds the index per log (48 bytes an entry). Messages Peek returns beyond
// it are acked through the slower path that reads record headers at the head.
const winCap = 1 << 14

// cursor is where the next Peek continues in a log.
type cursor struct {
	pos pos
	seq uint64 // every unacked record before pos has a seq <= seq
}

// wlog is the log of one class: segment files in a directory of their own.
type wlog struct {
	class Class
	name  string
	dir   string

	// Guarded by Outbox.mu; segs and f change only with wmu held too. f is closed
	// only with fmu held too, as the syncer may be using it.
	segs  []*segment
	f     *os.File // append descriptor of the last segment; nil when it is sealed or there is none
	head  pos      // the first record not known to be acked
	win   []winEntry
	known uint64 // every record before winEnd has a seq <= known

	// created counts the segments created in dir, dirSynced how many of them an
	// fsync of dir covers; guarded by Outbox.mu.
	created, dirSynced uint64

	cur cursor    // guarded by pmu, positions read under mu
	rd  segReader // Peek's, guarded by pmu
	ard segReader // Ack's, guarded by amu
}

func newLog(class Class, root string) *wlog {
	name := "events"
	if class == ClassTelemetry {
		name = "telemetry"
	}
	return &wlog{class: class, name: name, dir: filepath.Join(root, name)}
}

func logIndex(c Class) int {
	if c == ClassTelemetry {
		return 1
	}
	return 0
}

func (l *wlog) last() *segment {
	if len(l.segs) == 0 {
		return nil
	}
	return l.segs[len(l.segs)-1]
}

func (l *wlog) indexOf(s *segment) int {
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base >= s.base })
	if i < len(l.segs) && l.segs[i] == s {
		return i
	}
	return -1
}

// fix normalises p: nil or deleted segments become the start of the first segment,
// and the end of a segment that has a successor becomes the successor's start.
func (l *wlog) fix(p pos) pos {
	if len(l.segs) == 0 {
		return pos{}
	}
	if p.seg == nil || p.seg.deleted {
		p = pos{seg: l.segs[0]}
	}
	for p.off >= p.seg.dataEnd {
		i := l.indexOf(p.seg)
		if i < 0 || i+1 >= len(l.segs) {
			break
		}
		p = pos{seg: l.segs[i+1]}
	}
	return p
}

func (l *wlog) winEnd() pos {
	if len(l.win) > 0 {
		return l.win[len(l.win)-1].next()
	}
	return l.head
}

// find returns the index entry of seq, or nil.
func (l *wlog) find(seq uint64) *winEntry {
	i := sort.Search(len(l.win), func(i int) bool { return l.win[i].seq >= seq })
	if i < len(l.win) && l.win[i].seq == seq {
		return &l.win[i]
	}
	return nil
}

// before reports whether a comes before b; both are fixed and not nil.
func before(a, b pos) bool {
	if a.seg != b.seg {
		return a.seg.base < b.seg.base
	}
	return a.off < b.off
}

// unackedLocked counts the records of s, the log's first segment, not acked yet.
func (l *wlog) unackedLocked(s *segment) (n int, bytes int64) {
	h := l.fix(l.head)
	if h.seg != s {
		return 0, 0
	}
	n = s.count - h.idx
	bytes = s.payloadBytes() - (h.off - recHeader*int64(h.idx))
	for i := range l.win {
		if e := &l.win[i]; e.at.seg == s && e.acked {
			n--
			bytes -= e.plen
		}
	}
	return max(n, 0), max(bytes, 0)
}

// removeSegLocked forgets s and returns the descriptors it had (its append
// descriptor, or its sealed one still waiting for the syncer), for closeDeleted.
func (o *Outbox) removeSegLocked(l *wlog, s *segment) []*os.File {
	var files []*os.File
	if s == l.last() && l.f != nil {
		files = append(files, l.f)
		l.f = nil
	}
	// Its records are gone: the syncer need not (and must not wait to) sync them.
	kept := o.unsynced[:0]
	for _, sf := range o.unsynced {
		if sf.seg == s {
			files = append(files, sf.f)
		} else {
			kept = append(kept, sf)
		}
	}
	clear(o.unsynced[len(kept):])
	o.unsynced = kept
	if i := l.indexOf(s); i >= 0 {
		l.segs = slices.Delete(l.segs, i, i+1)
	}
	s.deleted = true
	o.segBytes -= s.size
	if l.head.seg == s {
		l.head = pos{}
	}
	k := 0
	for k < len(l.win) && l.win[k].at.seg == s {
		k++
	}
	l.win = l.win[k:]
	o.stateDirty = true
	return files
}

// closeDeleted closes the descriptors of deleted segments and the readers left on
// them: a deleted file keeps its disk space while anything holds it open. The syncer
// may be using a descriptor right now (fmu held): then it closes them at the end of
// its round. A reader in use (its lock held) is closed by its owner at its next start.
func (o *Outbox) closeDeleted(files []*os.File) {
	if len(files) > 0 {
		if o.fmu.TryLock() {
			for _, f := range files {
				_ = f.Close()
			}
			o.fmu.Unlock()
		} else {
			o.mu.Lock()
			o.retired = append(o.retired, files...)
			o.mu.Unlock()
			kick(o.syncKick)
		}
	}
	if o.pmu.TryLock() {
		o.closeReadersOnDeleted(func(l *wlog) *segReader { return &l.rd })
		o.pmu.Unlock()
	}
	if o.amu.TryLock() {
		o.closeReadersOnDeleted(func(l *wlog) *segReader { return &l.ard })
		o.amu.Unlock()
	}
}

// closeReadersOnDeleted closes the readers that reader picks (Peek's or Ack's, whose
// lock the caller holds) where their segment has been deleted.
func (o *Outbox) closeReadersOnDeleted(reader func(*wlog) *segReader) {
	for _, l := range o.logs {
		if r := reader(l); r.seg != nil && o.segDeleted(r.seg) {
			r.close()
		}
	}
}

// wouldLowerMaxLocked reports whether deleting victims removes the highest seq on
// disk while the state file does not yet promise a next_seq above it: the state
// must then be saved first, or a restart could hand out a seq again.
func (o *Outbox) wouldLowerMaxLocked(victims map[*segment]bool) bool {
	var gone, kept uint64
	for _, l := range o.logs {
		for _, s := range l.segs {
			if victims[s] {
				gone = max(gone, s.last)
			} else {
				kept = max(kept, s.last)
			}
		}
	}
	return gone > kept && o.stateNext <= gone
}

// flushDoomed saves the state, then deletes the segment files that waited for it
// (see doomedSeg). It is called by whoever released wmu, so that no Enqueue waits
// for this fsync. If the state cannot be saved, a file is deleted anyway once a
// higher seq is on disk (the promise is then not needed); the others wait for the
// janitor's next try. It reports whether it saved the state.
func (o *Outbox) flushDoomed() (saved bool) {
	o.mu.Lock()
	doomed := o.doomed
	o.doomed = nil
	o.mu.Unlock()
	if len(doomed) == 0 {
		return false
	}
	err := o.writeState()
	var keep []doomedSeg
	if err != nil {
		o.mu.Lock()
		var onDisk uint64
		for _, l := range o.logs {
			for _, s := range l.segs {
				onDisk = max(onDisk, s.last)
			}
		}
		o.mu.Unlock()
		for _, d := range doomed {
			if d.last >= onDisk {
				keep = append(keep, d)
			}
		}
		o.log.Warn("cannot save the outbox state; a deleted segment holding the highest seq stays on disk until it can",
			"err", err, "segments", len(keep))
	}
	for _, d := range doomed {
		if slices.Contains(keep, d) {
			continue
		}
		if err := os.Remove(d.path); err != nil {
			o.log.Error("cannot delete an outbox segment", "path", d.path, "err", err)
		}
	}
	if len(keep) > 0 {
		o.mu.Lock()
		o.doomed = append(o.doomed, keep...)
		o.mu.Unlock()
	}
	return err == nil
}

// storeLocked appends w to its log, making room within MaxBytes first. fresh says
// w is not yet counted (it did not wait in pending). Called with wmu held.
func (o *Outbox) storeLocked(w *wrec, fresh bool) error {
	l := o.logs[logIndex(w.class)]
	size := int64(len(w.b))
	need := size
	if o.rollNeeded(l, size) {
		need += trailerLen
	}
	if err := o.makeRoomLocked(need); err != nil {
		return err
	}
	if o.rollNeeded(l, size) {
		o.rollLocked(l)
	}
	if l.f == nil {
		if err := o.createSegLocked(l, w.seq); err != nil {
			return err
		}
	}
	seg := l.last()
	n, err := o.ops.writeAt(l.f, w.b, seg.size)
	if err == nil && n != len(w.b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		err = fmt.Errorf("write %s at offset %d: %w", seg.path, seg.size, err)
		if terr := l.f.Truncate(seg.size); terr != nil && n > 0 {
			// The partial record stays; it must not be appended after. The next
			// Open finds it at the end of a segment without trailer and cuts it.
			// What the segment holds before it was promised: the syncer still
			// syncs it.
			o.log.Error("cannot cut a partial record; sealing the segment", "path", seg.path, "err", terr)
			o.mu.Lock()
			seg.size += int64(n)
			o.segBytes += int64(n)
			o.sealLocked(l)
			o.mu.Unlock()
			kick(o.syncKick)
		}
		return err
	}
	o.mu.Lock()
	seg.size += size
	seg.dataEnd = seg.size
	seg.count++
	seg.last = w.seq
	o.segBytes += size
	o.lastWritten = w.seq
	o.writtenGen++
	w.gen = o.writtenGen
	if fresh {
		o.nextSeq = w.seq + 1
		o.depth++
		o.bytes += w.plen()
	}
	o.mu.Unlock()
	if o.policy == FsyncInterval {
		o.signal()
	} else {
		// Readable once synced; the syncer then signals. A waiting Enqueue kicks it
		// too, but a record may have no waiter (a fault, a retried pending one).
		kick(o.syncKick)
	}
	return nil
}

// rollNeeded reports whether the open segment of l must be sealed before a record
// of size bytes is appended; it also closes a segment that a reader sealed.
func (o *Outbox) rollNeeded(l *wlog, size int64) bool {
	o.mu.Lock()
	seg, f := l.last(), l.f
	sealed := seg != nil && seg.sealed
	o.mu.Unlock()
	if f == nil {
		return false
	}
	if sealed {
		o.closeAppendLocked(l)
		return false
	}
	return seg.size > 0 && seg.size+size > o.segSize
}

// closeAppendLocked hands l's append descriptor, of a segment a reader sealed, to the
// syncer. Called with wmu held.
func (o *Outbox) closeAppendLocked(l *wlog) {
	o.mu.Lock()
	o.sealLocked(l)
	o.mu.Unlock()
	kick(o.syncKick)
}

// sealLocked marks the last segment of l sealed and hands its append descriptor to
// the syncer, which fdatasyncs it and closes it once that succeeds. Called with wmu
// and mu held.
func (o *Outbox) sealLocked(l *wlog) {
	s := l.last()
	if s != nil {
		s.sealed = true
	}
	if l.f != nil {
		o.unsynced = append(o.unsynced, sealedFile{seg: s, f: l.f})
		l.f = nil
	}
}

// rollLocked seals the open segment of l: it writes the trailer and hands the
// descriptor to the syncer, so the Enqueue that rolls waits for no fdatasync. A
// trailer that cannot be written is left out; Open then reads the segment instead.
func (o *Outbox) rollLocked(l *wlog) {
	seg := l.last()
	o.mu.Lock()
	t := trailerRecord(seg.count, seg.last)
	o.mu.Unlock()
	n, err := o.ops.writeAt(l.f, t, seg.size)
	ok := err == nil && n == len(t)
	if !ok && n > 0 {
		_ = l.f.Truncate(seg.size)
	}
	o.mu.Lock()
	if ok {
		seg.size += trailerLen
		o.segBytes += trailerLen
	}
	o.sealLocked(l)
	o.mu.Unlock()
	kick(o.syncKick)
}

// createSegLocked starts a new segment in l named after seq, its first record. The
// directory entry must be durable before a record in it is promised: the syncer
// fsyncs the directory (l.created) before it counts any later record as synced.
func (o *Outbox) createSegLocked(l *wlog, seq uint64) error {
	path := filepath.Join(l.dir, segName(seq))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create segment: %w", err)
	}
	seg := &segment{base: seq, path: path}
	o.mu.Lock()
	l.segs = append(l.segs, seg)
	l.f = f
	l.created++
	o.mu.Unlock()
	return nil
}

// faultReserve is room kept for the outbox_full fault event when events are evicted.
func (o *Outbox) faultReserve() int64 { return 512 + int64(len(o.deviceJSON)) }

// makeRoomLocked frees space until need more bytes fit within MaxBytes (less room
// for the state file and its temporary copy): fully acked segments first, then the
// oldest telemetry, then the oldest events.
func (o *Outbox) makeRoomLocked(need int64) error {
	limit := o.maxBytes - 2*stateLen
	reserved := false
	for {
		o.mu.Lock()
		used := o.segBytes
		o.mu.Unlock()
		if used+need <= limit {
			return nil
		}
		if o.collectLocked(true) {
			continue
		}
		if o.evictOldestLocked(o.logs[logIndex(ClassTelemetry)], false) {
			continue
		}
		if !reserved && !o.inFault {
			reserved = true
			need += o.faultReserve()
			continue
		}
		if o.evictOldestLocked(o.logs[logIndex(ClassEvent)], false) {
			continue
		}
		return fmt.Errorf("%d bytes do not fit within max_bytes %d", need, o.maxBytes)
	}
}

// evictOldestLocked deletes the oldest segment of l for lack of space and counts
// the messages in it that were not acked. If the segment holds the highest seq on
// disk and the state does not promise more yet, its file is deleted after the state
// is saved: by flushDoomed once wmu is released, or at once (saving the state under
// wmu) when now is set, because a full disk needs the space before the retry.
func (o *Outbox) evictOldestLocked(l *wlog, now bool) bool {
	o.mu.Lock()
	if len(l.segs) == 0 {
		o.mu.Unlock()
		return false
	}
	s := l.segs[0]
	needState := o.wouldLowerMaxLocked(map[*segment]bool{s: true})
	o.mu.Unlock()
	if needState && now {
		// Best effort: the disk may be full. Not saving it risks a reused seq only
		// if the process dies before the next record is written.
		if err := o.writeState(); err != nil {
			o.log.Warn("cannot save the outbox state before evicting", "err", err)
		}
		needState = false
	}

	o.mu.Lock()
	n, nb := l.unackedLocked(s)
	first := s.base
	if h := l.fix(l.head); h.seg == s && len(l.win) > 0 && l.win[0].at.seg == s {
		first = l.win[0].seq
	}
	files := o.removeSegLocked(l, s)
	o.depth -= n
	o.bytes -= nb
	if l.class == ClassEvent {
		o.dropped += uint64(n)
	} else {
		o.evictedTel += uint64(n)
	}
	if needState {
		o.doomed = append(o.doomed, doomedSeg{path: s.path, last: s.last})
	}
	o.mu.Unlock()
	o.closeDeleted(files)
	if !needState {
		if err := os.Remove(s.path); err != nil {
			o.log.Error("cannot delete an evicted segment", "path", s.path, "err", err)
		}
	}

	if l.class == ClassEvent && n > 0 {
		if o.dropSum.n == 0 {
			o.dropSum.first = first
		}
		o.dropSum.n += uint64(n)
		o.dropSum.last = max(o.dropSum.last, s.last)
		o.log.Warn("outbox full: evicted the oldest events", "path", s.path, "events", n, "first_seq", first, "last_seq", s.last)
	} else if n > 0 {
		o.log.Debug("outbox full: evicted the oldest telemetry", "path", s.path, "messages", n)
	}
	return true
}

// collectLocked deletes the segments behind the acked head of each log, so that
// disk space returns as the backlog drains. The open segment goes too once fully
// acked if it is over a quarter segment, or whatever its size when force is set.
// Files whose deletion must wait for a state save are left to flushDoomed.
func (o *Outbox) collectLocked(force bool) bool {
	o.mu.Lock()
	if o.closed && !o.closing {
		o.mu.Unlock()
		return false
	}
	victims := map[*segment]bool{}
	for _, l := range o.logs {
		h := l.fix(l.head)
		if h.seg == nil {
			continue
		}
		for _, s := range l.segs {
			if s == h.seg {
				break
			}
			victims[s] = true
		}
		last := l.last()
		if h.seg == last && h.off >= last.dataEnd && (last.sealed || force || last.size > o.segSize/4) {
			victims[last] = true
		}
	}
	if len(victims) == 0 {
		o.mu.Unlock()
		return false
	}
	needState := o.wouldLowerMaxLocked(victims)
	var (
		files []*os.File
		paths []string
	)
	for _, l := range o.logs {
		for _, s := range slices.Clone(l.segs) {
			if !victims[s] {
				continue
			}
			files = append(files, o.removeSegLocked(l, s)...)
			if needState {
				o.doomed = append(o.doomed, doomedSeg{path: s.path, last: s.last})
			} else {
				paths = append(paths, s.path)
			}
		}
	}
	o.mu.Unlock()
	o.closeDeleted(files)
	for _, p := range paths {
		if err := os.Remove(p); err != nil {
			o.log.Error("cannot delete an acked segment", "path", p, "err", err)
		}
	}
	return true
}
