package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
)

// Class orders what is evicted first when the outbox is full: telemetry before
// events. Faults are events.
type Class uint8

// Message classes.
const (
	ClassTelemetry Class = 1
	ClassEvent     Class = 2
)

func (c Class) valid() bool { return c == ClassTelemetry || c == ClassEvent }

// Envelope is one message as it is stored and as the uplink publishes it.
type Envelope struct {
	ID     string          `json:"id"`     // uuid v7, unique, unchanged when resent
	Seq    uint64          `json:"seq"`    // +1 per message per device across both classes, from 1, survives restarts
	TS     time.Time       `json:"ts"`     // UTC, from Options.Now
	Device string          `json:"device"` // Options.Device
	Kind   string          `json:"kind"`   // "detection", "telemetry", "fault", ...
	Body   json.RawMessage `json:"body"`
}

// Fsync is the durability policy of Enqueue.
type Fsync string

// Fsync policies. Under both, Enqueue has written the message to its segment file
// with write(2) before it returns, so a killed process loses nothing.
const (
	// FsyncAlways returns from Enqueue after an fdatasync covering the message;
	// concurrent callers share one fdatasync.
	FsyncAlways Fsync = "always"
	// FsyncInterval fdatasyncs every FsyncInterval: a power loss can lose up to
	// one interval.
	FsyncInterval Fsync = "interval"
)

// Options configure an Outbox.
type Options struct {
	// Path is the outbox directory, e.g. <state_dir>/outbox, created if missing.
	// A regular file there (the bbolt outbox.db of older versions) is refused.
	Path          string
	Device        string        // written into every envelope
	Fsync         Fsync         // empty means FsyncAlways
	FsyncInterval time.Duration // fdatasync period under FsyncInterval; default 100ms
	// MaxBytes bounds the bytes on disk under Path; default 256 MiB, minimum 1 MiB.
	MaxBytes int64
	// MaxPending bounds the messages held in memory while the disk refuses writes;
	// once reached Enqueue fails. Default 10000.
	MaxPending int
	Logger     *slog.Logger     // nil discards
	Now        func() time.Time // nil means time.Now
	// OnFault, if set, is told about every fault event the outbox writes itself
	// (a corrupt store set aside, events dropped for lack of space), so the agent can
	// show it. It may be called with the outbox's write lock held: it must return
	// quickly and must not call the Outbox.
	OnFault func(Envelope)
}

// Stats is a snapshot of the outbox counters.
type Stats struct {
	Depth     int   // unacked messages, written or pending
	Bytes     int64 // their envelope bytes
	DiskBytes int64 // bytes of the segments and the state file, never more than MaxBytes
	Pending   int   // accepted but not yet written, only while the disk refuses writes
	NextSeq   uint64
	// Dropped counts events evicted for lack of space or lost to corruption.
	Dropped uint64
	// EvictedTelemetry counts telemetry evicted for lack of space or lost to
	// corruption.
	EvictedTelemetry uint64
	// LastError is the current write or fsync failure, empty once they succeed again.
	LastError string
}

const (
	defaultFsyncInterval = 100 * time.Millisecond
	defaultMaxPending    = 10000
	defaultMaxBytes      = 256 << 20
	minMaxBytes          = 1 << 20

	minSegment = 64 << 10
	maxSegment = 4 << 20

	// minBackoff and maxBackoff bound the wait between write retries while the disk
	// refuses them: a freed disk is noticed quickly, a dead one is not hammered.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second

	// statePeriod is how often the acked heads are saved while acks arrive.
	statePeriod = time.Second
)

// fileOps are the file operations that tests replace to make them fail or slow, where
// an ordinary test cannot make a real disk do so (see failure_test.go). Everything
// around them is the real code. Nil fields are the real operations.
type fileOps struct {
	writeAt  func(f *os.File, b []byte, off int64) (int, error)
	datasync func(f *os.File) error // segments and the state file
	syncDir  func(dir string) error
}

func (ops fileOps) withDefaults() fileOps {
	if ops.writeAt == nil {
		ops.writeAt = func(f *os.File, b []byte, off int64) (int, error) { return f.WriteAt(b, off) }
	}
	if ops.datasync == nil {
		ops.datasync = datasync
	}
	if ops.syncDir == nil {
		ops.syncDir = syncDir
	}
	return ops
}

// chanMutex is a mutex whose Lock can give up when a context ends: Enqueue must not
// wait longer than its caller allows for I/O that is not its own.
type chanMutex chan struct{}

func newChanMutex() chanMutex { return make(chanMutex, 1) }

func (m chanMutex) Lock() { m <- struct{}{} }

// LockCtx takes the lock, or returns ctx's error if ctx ends first.
func (m chanMutex) LockCtx(ctx context.Context) error {
	select {
	case m <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m chanMutex) Unlock() {
	select {
	case <-m:
	default:
		panic("outbox: unlock of an unlocked chanMutex")
	}
}

// sealedFile is the append descriptor of a sealed segment whose last fdatasync has
// not succeeded yet. The syncer fdatasyncs it and closes it only once that succeeds;
// until then no record written after it counts as synced.
type sealedFile struct {
	seg *segment
	f   *os.File
}

// doomedSeg is a segment already forgotten whose file is deleted only after the state
// file is saved: it holds the highest seq on disk, which the state must promise first.
type doomedSeg struct {
	path string
	last uint64
}

// wrec is one accepted message on its way to a segment.
type wrec struct {
	class Class
	seq   uint64
	b     []byte // the whole record, header included
	gen   uint64 // write generation once written; guarded by mu
	err   error  // set when the outbox closed before it could be written; guarded by mu
}

func (w *wrec) plen() int64 { return int64(len(w.b) - recHeader) }

// dropSummary collects event evictions until one fault event reports them.
type dropSummary struct {
	n           uint64
	first, last uint64
}

// Outbox is a durable queue of envelopes. It is safe for concurrent use.
type Outbox struct {
	// Set by Open, then read-only.
	path       string
	device     string
	deviceJSON []byte
	onFault    func(Envelope)
	policy     Fsync
	interval   time.Duration
	maxBytes   int64
	segSize    int64
	maxRecord  int64
	maxPending int
	log        *slog.Logger
	now        func() time.Time
	ops        fileOps
	lock       *os.File
	notify     chan struct{} // cap 1: a token waiting already says "there is more"
	syncKick   chan struct{} // cap 1, wakes the syncer
	houseKick  chan struct{} // cap 1, wakes the janitor
	stop       chan struct{} // closed by Close
	wg         sync.WaitGroup
	logs       [2]*wlog // events, telemetry

	// wmu serialises everything that changes files: seq assignment with the append
	// of its record, rolls, evictions and deletions, pending retries. It is held
	// around write(2) and unlink(2) on purpose: records must land in seq order. It is
	// never held around an fsync (the syncer does those, and state saves that must
	// precede a deletion happen after it is released), so that Enqueue waits for no
	// I/O but its own write. Enqueue gives up waiting for it when its ctx ends. Stats
	// and Peek never wait for it.
	wmu      chanMutex
	dropSum  dropSummary // guarded by wmu
	inFault  bool        // guarded by wmu: writing an outbox_full fault now
	failing  bool        // guarded by wmu: in a write failure streak (logged once)
	closing  bool        // guarded by wmu: Close's last writes, allowed after closed
	smu      sync.Mutex  // serialises state file writes
	fmu      sync.Mutex  // held while segment descriptors are fdatasynced or closed
	pmu      sync.Mutex  // Peek: the cursors and their readers
	amu      sync.Mutex  // Ack's readers for acks beyond the index
	syncFail bool        // guarded by fmu: in an fsync failure streak

	// mu protects the fields below and the in-memory state of the logs. It is
	// never held around I/O.
	mu          sync.Mutex
	closed      bool
	shut        bool // Close has finished: nothing will be written or synced any more
	nextSeq     uint64
	lastWritten uint64 // highest seq written; every seq below it is written, evicted or acked
	depth       int
	bytes       int64
	segBytes    int64
	stateBytes  int64
	stateNext   uint64 // next_seq in the state file on disk
	stateDirty  bool
	pending     []*wrec
	dropped     uint64
	evictedTel  uint64
	writeErr    error
	syncErr     error
	writtenGen  uint64
	syncedGen   uint64
	syncedSeq   uint64 // every seq up to it is synced (or acked or evicted): what Peek returns under FsyncAlways
	unsynced    []sealedFile
	retired     []*os.File    // descriptors of deleted segments for the syncer to close (fmu was busy)
	doomed      []doomedSeg   // deleted once the state is saved, by whoever released wmu
	syncCh      chan struct{} // closed and replaced whenever syncedGen moves
	deferred    map[uint64]struct{}
	deferWarned bool
	faults      []any // fault bodies found by readers, written by the janitor
}

// Open opens or creates the outbox directory, recovers it (see doc.go) and starts
// its syncer and janitor. Corrupt data never makes it fail: the store is moved aside
// and a fault event says so. It fails for I/O errors and when another process holds
// the outbox.
func Open(opts Options) (*Outbox, error) {
	return open(opts, fileOps{})
}

func open(opts Options, ops fileOps) (*Outbox, error) {
	if opts.Path == "" {
		return nil, errors.New("outbox: open: path is empty")
	}
	opts.Path = filepath.Clean(opts.Path)
	if opts.Device == "" {
		return nil, fmt.Errorf("outbox: open %s: device is empty", opts.Path)
	}
	switch opts.Fsync {
	case "":
		opts.Fsync = FsyncAlways
	case FsyncAlways, FsyncInterval:
	default:
		return nil, fmt.Errorf("outbox: open %s: fsync %q: want %q or %q", opts.Path, opts.Fsync, FsyncAlways, FsyncInterval)
	}
	switch {
	case opts.MaxBytes == 0:
		opts.MaxBytes = defaultMaxBytes
	case opts.MaxBytes < minMaxBytes:
		return nil, fmt.Errorf("outbox: open %s: max_bytes %d is below the minimum of 1MiB", opts.Path, opts.MaxBytes)
	}
	if opts.FsyncInterval <= 0 {
		opts.FsyncInterval = defaultFsyncInterval
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = defaultMaxPending
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	deviceJSON, err := json.Marshal(opts.Device)
	if err != nil {
		return nil, fmt.Errorf("outbox: open %s: encode device: %w", opts.Path, err)
	}

	switch fi, err := os.Stat(opts.Path); {
	case err == nil && !fi.IsDir():
		return nil, fmt.Errorf("outbox: open %s: it is a file, but the outbox is now a directory (an outbox.db from an older vigil?); move the file away or point the outbox at a directory", opts.Path)
	case err != nil:
		// Missing, or something in the way that MkdirAll names.
		if err := os.MkdirAll(opts.Path, 0o750); err != nil {
			return nil, fmt.Errorf("outbox: open %s: create directory: %w", opts.Path, err)
		}
	}
	lock, err := lockDir(opts.Path)
	if err != nil {
		return nil, err
	}

	o := &Outbox{
		path:       opts.Path,
		device:     opts.Device,
		deviceJSON: deviceJSON,
		policy:     opts.Fsync,
		interval:   opts.FsyncInterval,
		maxBytes:   opts.MaxBytes,
		segSize:    min(max(opts.MaxBytes/32, minSegment), maxSegment),
		maxRecord:  opts.MaxBytes / 4,
		maxPending: opts.MaxPending,
		log:        opts.Logger.With("component", "outbox"),
		onFault:    opts.OnFault,
		now:        opts.Now,
		ops:        ops.withDefaults(),
		wmu:        newChanMutex(),
		lock:       lock,
		notify:     make(chan struct{}, 1),
		syncKick:   make(chan struct{}, 1),
		houseKick:  make(chan struct{}, 1),
		stop:       make(chan struct{}),
		syncCh:     make(chan struct{}),
		deferred:   map[uint64]struct{}{},
	}
	o.logs[logIndex(ClassEvent)] = newLog(ClassEvent, opts.Path)
	o.logs[logIndex(ClassTelemetry)] = newLog(ClassTelemetry, opts.Path)

	faults, err := o.recover()
	if err != nil {
		o.closeFiles()
		return nil, fmt.Errorf("outbox: open %s: %w", opts.Path, err)
	}
	o.wg.Add(2)
	go o.syncer()
	go o.janitor()

	// Faults found while recovering are the first new messages.
	for _, body := range faults {
		env, err := o.Enqueue(context.Background(), "fault", ClassEvent, body)
		if err != nil {
			o.log.Error("cannot enqueue the fault event about the recovery", "err", err)
			continue
		}
		o.reportFault(env, env.Seq)
	}
	if o.Stats().Depth > 0 {
		o.signal()
	}
	return o, nil
}

// Enqueue stores body (json.Marshal; a json.RawMessage passes through) in an envelope
// with the next seq. It has written the record before it returns; under
// FsyncAlways it also waits for an fdatasync covering it.
//
// While the disk refuses writes the message is held in memory (up to MaxPending)
// and retried in the background: under FsyncInterval Enqueue then returns the
// envelope with a nil error, under FsyncAlways it keeps waiting until the message
// is written and synced or ctx ends. Once the message has its seq, ctx ends only the
// wait: the returned error says the message stays queued. If ctx ends while Enqueue
// waits for the write lock (another caller's slow write), the message is not queued
// and the error says so. With MaxPending messages already waiting, Enqueue fails at
// once with an error wrapping the disk's.
func (o *Outbox) Enqueue(ctx context.Context, kind string, class Class, body any) (Envelope, error) {
	if kind == "" {
		return Envelope{}, errors.New("outbox: enqueue: kind is empty")
	}
	if !class.valid() {
		return Envelope{}, fmt.Errorf("outbox: enqueue %s: unknown class %d", kind, class)
	}
	if err := ctx.Err(); err != nil {
		return Envelope{}, fmt.Errorf("outbox: enqueue %s: not queued: %w", kind, err)
	}
	env, prefix, tail, err := o.prepare(kind, body)
	if err != nil {
		return Envelope{}, fmt.Errorf("outbox: enqueue %s: %w", kind, err)
	}
	if size := int64(len(prefix) + maxSeqDigits + len(tail)); size > o.maxRecord {
		return Envelope{}, fmt.Errorf("outbox: enqueue %s: the message is %d bytes, more than a quarter of outbox.max_bytes (%d); send less or raise max_bytes",
			kind, size, o.maxBytes)
	}

	if err := o.wmu.LockCtx(ctx); err != nil {
		return Envelope{}, fmt.Errorf("outbox: enqueue %s: not queued, stopped waiting for the write lock: %w", kind, err)
	}
	w, err := o.acceptLocked(class, prefix, tail)
	o.wmu.Unlock()
	o.flushDoomed()
	if err != nil {
		return Envelope{}, fmt.Errorf("outbox: enqueue %s: %w", kind, err)
	}
	env.Seq = w.seq
	if o.policy == FsyncInterval {
		return env, nil
	}
	if err := o.waitSynced(ctx, w); err != nil {
		return env, fmt.Errorf("outbox: enqueue %s seq %d: %w", kind, env.Seq, err)
	}
	return env, nil
}

// waitSynced waits until w is written and an fdatasync covers it.
func (o *Outbox) waitSynced(ctx context.Context, w *wrec) error {
	for {
		o.mu.Lock()
		done, err, ch, shut := w.gen != 0 && o.syncedGen >= w.gen, w.err, o.syncCh, o.shut
		o.mu.Unlock()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if shut {
			return errors.New("the outbox closed before an fdatasync covered the message; it is written but may not survive a power loss")
		}
		kick(o.syncKick)
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("stopped waiting for the fdatasync; the message stays queued and will still be written: %w", ctx.Err())
		}
	}
}

const maxSeqDigits = 20

// prepare builds the envelope and its record except for the seq, outside any lock:
// prefix is the record header space and the JSON up to the seq digits, tail the
// rest. prefix has room for the digits and tail, so that the locked part appends
// without allocating. The JSON is byte for byte what json.Marshal(env) produces.
func (o *Outbox) prepare(kind string, body any) (env Envelope, prefix, tail []byte, err error) {
	bodyJSON, err := json.Marshal(body)
	if err != nil {
		return env, nil, nil, fmt.Errorf("encode body: %w", err)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return env, nil, nil, fmt.Errorf("new id: %w", err)
	}
	env = Envelope{ID: id.String(), TS: o.now().UTC(), Device: o.device, Kind: kind, Body: bodyJSON}
	ts, err := env.TS.MarshalJSON()
	if err != nil {
		return env, nil, nil, fmt.Errorf("encode ts: %w", err)
	}
	kindJSON, err := json.Marshal(kind)
	if err != nil {
		return env, nil, nil, fmt.Errorf("encode kind: %w", err)
	}
	tailLen := len(`,"ts":`) + len(ts) + len(`,"device":`) + len(o.deviceJSON) +
		len(`,"kind":`) + len(kindJSON) + len(`,"body":`) + len(bodyJSON) + len(`}`)
	prefix = make([]byte, recHeader, recHeader+len(`{"id":"`)+len(env.ID)+len(`","seq":`)+maxSeqDigits+tailLen)
	prefix = append(prefix, `{"id":"`...)
	prefix = append(prefix, env.ID...)
	prefix = append(prefix, `","seq":`...)
	tail = make([]byte, 0, tailLen)
	tail = append(tail, `,"ts":`...)
	tail = append(tail, ts...)
	tail = append(tail, `,"device":`...)
	tail = append(tail, o.deviceJSON...)
	tail = append(tail, `,"kind":`...)
	tail = append(tail, kindJSON...)
	tail = append(tail, `,"body":`...)
	tail = append(tail, bodyJSON...)
	tail = append(tail, '}')
	return env, prefix, tail, nil
}

// acceptLocked gives the message the next seq and writes it, or holds it in pending
// when the disk refuses. Called with wmu held.
func (o *Outbox) acceptLocked(class Class, prefix, tail []byte) (*wrec, error) {
	o.mu.Lock()
	if o.closed && !o.closing {
		o.mu.Unlock()
		return nil, errors.New("outbox is closed")
	}
	seq, npend, diskErr := o.nextSeq, len(o.pending), o.writeErr
	o.mu.Unlock()

	b := strconv.AppendUint(prefix, seq, 10)
	b = append(b, tail...)
	sealRecord(b, seq)
	w := &wrec{class: class, seq: seq, b: b}

	if npend == 0 {
		err := o.storeLocked(w, true)
		if err != nil && isNoSpace(err) && o.evictOldestLocked(o.logs[logIndex(ClassTelemetry)], true) {
			err = o.storeLocked(w, true)
		}
		if err == nil {
			o.writeSucceededLocked()
			o.emitDropFaultLocked()
			return w, nil
		}
		o.writeFailedLocked(err)
		diskErr = err
	}

	o.mu.Lock()
	if len(o.pending) >= o.maxPending {
		n := len(o.pending)
		o.mu.Unlock()
		return nil, fmt.Errorf("%d messages already wait in memory (max_pending): the outbox %s cannot be written: %w", n, o.path, diskErr)
	}
	o.pending = append(o.pending, w)
	o.nextSeq = seq + 1
	o.depth++
	o.bytes += w.plen()
	first := len(o.pending) == 1
	o.mu.Unlock()
	if first {
		kick(o.houseKick)
	}
	o.emitDropFaultLocked()
	return w, nil
}

// Notify returns a channel that receives a token whenever new messages become
// readable, so that a drainer can wait instead of polling. It has room for one
// token and the writer never blocks on it: a token means "Peek again", not "one
// more message".
func (o *Outbox) Notify() <-chan struct{} { return o.notify }

func (o *Outbox) signal() { kick(o.notify) }

// kick sends a token without blocking; a token already there means the same.
func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Stats returns the counters. It does no disk I/O.
func (o *Outbox) Stats() Stats {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := Stats{
		Depth:            o.depth,
		Bytes:            o.bytes,
		DiskBytes:        o.segBytes + o.stateBytes,
		Pending:          len(o.pending),
		NextSeq:          o.nextSeq,
		Dropped:          o.dropped,
		EvictedTelemetry: o.evictedTel,
	}
	switch {
	case o.writeErr != nil:
		s.LastError = o.writeErr.Error()
	case o.syncErr != nil:
		s.LastError = o.syncErr.Error()
	}
	return s
}

// Close writes what is pending in one last attempt, fdatasyncs, saves the state,
// stops the goroutines and waits for them, and releases the lock. Messages that
// could not be written are lost, and the returned error says which. A second Close
// returns nil.
func (o *Outbox) Close() error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil
	}
	o.closed = true
	o.mu.Unlock()
	close(o.stop)
	o.wg.Wait()

	var errs []error
	o.wmu.Lock()
	o.closing = true
	o.flushFaultsLocked()
	if err := o.retryPendingLocked(true); err != nil {
		errs = append(errs, err)
	}
	o.fmu.Lock()
	if err := o.syncFilesLocked(); err != nil {
		errs = append(errs, fmt.Errorf("outbox: close %s: %w", o.path, err))
	}
	o.fmu.Unlock()
	if err := o.writeState(); err != nil {
		errs = append(errs, fmt.Errorf("outbox: close %s: %w", o.path, err))
	}
	o.flushDoomed()
	o.fmu.Lock()
	o.closeDescriptorsLocked()
	o.fmu.Unlock()
	o.closing = false
	o.wmu.Unlock()

	o.mu.Lock()
	o.shut = true
	close(o.syncCh) // wake whoever still waits; they see their result
	o.syncCh = make(chan struct{})
	o.mu.Unlock()
	o.closeFiles()
	return errors.Join(errs...)
}

// closeDescriptorsLocked closes every segment descriptor the writer and the syncer
// hold. Called with fmu held, once nothing writes any more.
func (o *Outbox) closeDescriptorsLocked() {
	o.mu.Lock()
	var files []*os.File
	for _, l := range o.logs {
		if l.f != nil {
			files = append(files, l.f)
			l.f = nil
		}
	}
	for _, sf := range o.unsynced {
		files = append(files, sf.f)
	}
	files = append(files, o.retired...)
	o.unsynced, o.retired = nil, nil
	o.mu.Unlock()
	for _, f := range files {
		_ = f.Close()
	}
}

// closeFiles closes the readers and every other descriptor, and releases the lock.
func (o *Outbox) closeFiles() {
	o.amu.Lock()
	o.pmu.Lock()
	for _, l := range o.logs {
		l.rd.close()
		l.ard.close()
	}
	o.pmu.Unlock()
	o.amu.Unlock()
	o.fmu.Lock()
	o.closeDescriptorsLocked()
	o.fmu.Unlock()
	if o.lock != nil {
		_ = o.lock.Close()
		o.lock = nil
	}
}

// isNoSpace reports a full disk or quota, which evicting telemetry may cure.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
