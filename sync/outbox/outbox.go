package outbox

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Class orders what is evicted first when the budget is exceeded. Eviction comes
// later; the class is stored with every message now so that existing backlogs can be
// evicted by class once it exists.
type Class uint8

// Message classes. Faults are ClassEvent.
const (
	ClassTelemetry Class = 1
	ClassEvent     Class = 2
)

// Envelope is one message as it is stored and as the uplink publishes it.
type Envelope struct {
	ID     string          `json:"id"`     // uuid v7, unique, unchanged when resent
	Seq    uint64          `json:"seq"`    // +1 per message per device across all kinds, from 1, survives restarts
	TS     time.Time       `json:"ts"`     // UTC, from Options.Now
	Device string          `json:"device"` // Options.Device
	Kind   string          `json:"kind"`   // "detection", "telemetry", "fault", ...
	Body   json.RawMessage `json:"body"`
}

// Fsync is the durability policy of Enqueue.
type Fsync string

// Fsync policies.
const (
	// FsyncAlways returns from Enqueue after the transaction holding the message
	// committed.
	FsyncAlways Fsync = "always"
	// FsyncInterval returns from Enqueue once the message is queued in memory and
	// commits the queue every FsyncInterval.
	FsyncInterval Fsync = "interval"
)

// Options configure an Outbox.
type Options struct {
	Path          string        // bbolt file, e.g. <state_dir>/outbox.db; the parent directory is created
	Device        string        // written into every envelope
	Fsync         Fsync         // empty means FsyncAlways
	FsyncInterval time.Duration // commit period under FsyncInterval; default 100ms
	// MaxPending bounds the messages held in memory while the store cannot be
	// written; once reached Enqueue fails. Default 10000.
	MaxPending int
	Logger     *slog.Logger     // nil discards
	Now        func() time.Time // nil means time.Now
}

// Stats is a snapshot of the outbox counters.
type Stats struct {
	Depth   int    // committed + pending messages
	Bytes   int64  // encoded envelope bytes of those messages
	Pending int    // messages accepted but not yet committed
	NextSeq uint64 // seq the next Enqueue will get
	Dropped uint64 // messages evicted; always 0 until eviction exists
	// LastError is the error of the current commit failure streak, empty once a
	// commit succeeds again.
	LastError string
}

const (
	defaultFsyncInterval = 100 * time.Millisecond
	defaultMaxPending    = 10000

	// minBackoff and maxBackoff bound the wait between commit retries while the store
	// cannot be written: short enough that a freed disk is noticed quickly, long
	// enough that a dead disk is not hammered.
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// Bucket and key names. Functions instead of package variables so that no caller can
// modify them.
func bucketMessages() []byte { return []byte("messages") }
func bucketMeta() []byte     { return []byte("meta") }
func keyNextSeq() []byte     { return []byte("next_seq") }

// record is one accepted message on its way to the store.
type record struct {
	seq   uint64
	value []byte // 1 byte class + envelope JSON: exactly what is stored
}

// size is the encoded envelope size, the unit of Stats.Bytes.
func (r *record) size() int64 { return int64(len(r.value) - 1) }

// flushWait is shared by the FsyncAlways callers whose messages go into the same
// commit. done is closed once the commit succeeded, or with err set when the outbox
// closed before it could.
type flushWait struct {
	done chan struct{}
	err  error
}

// commitFunc writes recs, ordered by seq, in one transaction. Tests swap it to
// simulate a store that cannot be written.
type commitFunc func(db *bbolt.DB, recs []*record) error

// Outbox is a durable queue of envelopes. It is safe for concurrent use.
type Outbox struct {
	db       *bbolt.DB
	path     string
	policy   Fsync
	interval time.Duration
	max      int
	log      *slog.Logger
	now      func() time.Time
	commit   commitFunc
	device   string
	// deviceJSON is device already JSON-encoded, the same for every message.
	deviceJSON []byte

	kick   chan struct{} // buffer 1: a full buffer already means "commit soon"
	stop   chan struct{} // closed by Close
	exited chan struct{} // closed by the committer when it returns

	// Owned by the committer goroutine: messages taken from pending whose commit has
	// not succeeded yet, and the callers waiting for them.
	inflight      []*record
	inflightWaits []*flushWait
	// finalErr is set by the committer before it closes exited.
	finalErr error

	// mu protects the fields below.
	mu             sync.Mutex
	closed         bool
	nextSeq        uint64
	pending        []*record  // accepted, not yet taken by the committer, in seq order
	wait           *flushWait // for the callers whose messages are in pending
	pendingN       int        // pending + inflight
	pendingBytes   int64
	committedN     int
	committedBytes int64
	lastErr        error
}

// Open opens or creates the outbox file and starts its committer.
func Open(opts Options) (*Outbox, error) {
	return open(opts, commitBatch)
}

func open(opts Options, commit commitFunc) (*Outbox, error) {
	if opts.Path == "" {
		return nil, errors.New("outbox: open: path is empty")
	}
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

	if err := os.MkdirAll(filepath.Dir(opts.Path), 0o750); err != nil {
		return nil, fmt.Errorf("outbox: open %s: create directory: %w", opts.Path, err)
	}
	// The timeout turns bbolt's wait for the file lock into an error: a second
	// process holding the file must not make this one hang at start-up.
	db, err := bbolt.Open(opts.Path, 0o600, &bbolt.Options{Timeout: time.Second})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("outbox: open %s: another vigil may be running: the file is locked: %w", opts.Path, err)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum),
		errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrInvalidMapping):
		return nil, fmt.Errorf("outbox: open %s: the file is not a valid outbox database (corrupt?); move it aside (mv %s %s.corrupt) and restart to begin with an empty outbox: %w",
			opts.Path, opts.Path, opts.Path, err)
	case err != nil:
		return nil, fmt.Errorf("outbox: open %s: %w", opts.Path, err)
	}

	o := &Outbox{
		db:         db,
		path:       opts.Path,
		policy:     opts.Fsync,
		interval:   opts.FsyncInterval,
		max:        opts.MaxPending,
		log:        opts.Logger.With("component", "outbox"),
		now:        opts.Now,
		commit:     commit,
		device:     opts.Device,
		deviceJSON: deviceJSON,
		kick:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		exited:     make(chan struct{}),
	}
	if err := o.load(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("outbox: open %s: %w", opts.Path, err)
	}
	go o.run()
	return o, nil
}

// load creates the buckets and initialises the in-memory counters with one scan, so
// that Stats never touches the disk.
func (o *Outbox) load() error {
	return o.db.Update(func(tx *bbolt.Tx) error {
		msgs, err := tx.CreateBucketIfNotExists(bucketMessages())
		if err != nil {
			return fmt.Errorf("create bucket messages: %w", err)
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta())
		if err != nil {
			return fmt.Errorf("create bucket meta: %w", err)
		}
		next := uint64(1)
		if v := meta.Get(keyNextSeq()); v != nil {
			if len(v) != 8 {
				return fmt.Errorf("meta next_seq is %d bytes, want 8; move the file aside", len(v))
			}
			next = max(next, binary.BigEndian.Uint64(v))
		}
		c := msgs.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			o.committedN++
			o.committedBytes += int64(max(len(v)-1, 0))
		}
		// next_seq is written with every batch; the last key only matters for a
		// file whose meta was lost, and then it keeps seq from going backwards.
		if k, _ := c.Last(); len(k) == 8 {
			next = max(next, binary.BigEndian.Uint64(k)+1)
		}
		o.nextSeq = next
		return nil
	})
}

// Enqueue stores body (json.Marshal; a json.RawMessage passes through) in an envelope
// with the next seq and returns the envelope once the message is as durable as the
// policy promises: committed under FsyncAlways, queued in memory under FsyncInterval.
//
// ctx cancels only the wait for the commit: the message stays queued and will still
// be committed, and the returned error says so; the returned Envelope is then the
// queued message. When MaxPending messages are already waiting for a store that
// cannot be written, Enqueue fails at once without queueing.
func (o *Outbox) Enqueue(ctx context.Context, kind string, class Class, body any) (Envelope, error) {
	if kind == "" {
		return Envelope{}, errors.New("outbox: enqueue: kind is empty")
	}
	if class != ClassTelemetry && class != ClassEvent {
		return Envelope{}, fmt.Errorf("outbox: enqueue %s: unknown class %d", kind, class)
	}
	if err := ctx.Err(); err != nil {
		return Envelope{}, fmt.Errorf("outbox: enqueue %s: not queued: %w", kind, err)
	}
	bodyJSON, err := json.Marshal(body)
	if err != nil {
		return Envelope{}, fmt.Errorf("outbox: enqueue %s: encode body: %w", kind, err)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return Envelope{}, fmt.Errorf("outbox: enqueue %s: new id: %w", kind, err)
	}
	env := Envelope{
		ID:     id.String(),
		TS:     o.now().UTC(),
		Device: o.device,
		Kind:   kind,
		Body:   bodyJSON,
	}
	// Everything but seq is encoded here, outside the lock; under it only seq is
	// appended, so concurrent callers serialise on a few copied bytes.
	head, tail, err := o.encode(class, env)
	if err != nil {
		return Envelope{}, fmt.Errorf("outbox: enqueue %s: %w", kind, err)
	}

	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return Envelope{}, fmt.Errorf("outbox: enqueue %s: outbox is closed", kind)
	}
	if o.pendingN >= o.max {
		n, why := o.pendingN, o.lastErr
		o.mu.Unlock()
		if why == nil {
			why = errors.New("commits are not keeping up with enqueues")
		}
		return Envelope{}, fmt.Errorf("outbox: enqueue %s: %d messages already wait in memory (max_pending): the store %s cannot be written: %w",
			kind, n, o.path, why)
	}
	// Seq is assigned and the record queued under one lock so that commits happen
	// in seq order: the uplink reads with Peek(after) and would skip a seq that
	// became visible after a higher one.
	env.Seq = o.nextSeq
	o.nextSeq++
	r := &record{seq: env.Seq, value: append(strconv.AppendUint(head, env.Seq, 10), tail...)}
	o.pending = append(o.pending, r)
	o.pendingN++
	o.pendingBytes += r.size()
	var w *flushWait
	if o.policy == FsyncAlways {
		if o.wait == nil {
			o.wait = &flushWait{done: make(chan struct{})}
		}
		w = o.wait
	}
	// Under FsyncInterval the committer runs early once half the budget is used,
	// so a burst does not hit MaxPending while the store is healthy.
	wake := w != nil || o.pendingN >= o.max/2
	o.mu.Unlock()

	if wake {
		select {
		case o.kick <- struct{}{}:
		default: // a kick is already waiting; the committer takes everything pending
		}
	}
	if w == nil {
		return env, nil
	}
	select {
	case <-w.done:
		if w.err != nil {
			return env, fmt.Errorf("outbox: enqueue %s seq %d: %w", kind, env.Seq, w.err)
		}
		return env, nil
	case <-ctx.Done():
		return env, fmt.Errorf("outbox: enqueue %s seq %d: stopped waiting for the commit; the message stays queued and will still be committed: %w",
			kind, env.Seq, ctx.Err())
	}
}

// encode returns the stored value of env without its seq: head (class byte and the
// JSON up to the seq digits, with room for them and tail) and tail (the rest).
// The result is byte for byte what json.Marshal(env) produces.
func (o *Outbox) encode(class Class, env Envelope) (head, tail []byte, err error) {
	ts, err := env.TS.MarshalJSON()
	if err != nil {
		return nil, nil, fmt.Errorf("encode ts: %w", err)
	}
	kind, err := json.Marshal(env.Kind)
	if err != nil {
		return nil, nil, fmt.Errorf("encode kind: %w", err)
	}
	const maxSeqDigits = 20
	tailLen := len(`,"ts":`) + len(ts) + len(`,"device":`) + len(o.deviceJSON) +
		len(`,"kind":`) + len(kind) + len(`,"body":`) + len(env.Body) + len(`}`)
	head = make([]byte, 0, 1+len(`{"id":"`)+len(env.ID)+len(`","seq":`)+maxSeqDigits+tailLen)
	head = append(head, byte(class))
	head = append(head, `{"id":"`...)
	head = append(head, env.ID...)
	head = append(head, `","seq":`...)
	tail = make([]byte, 0, tailLen)
	tail = append(tail, `,"ts":`...)
	tail = append(tail, ts...)
	tail = append(tail, `,"device":`...)
	tail = append(tail, o.deviceJSON...)
	tail = append(tail, `,"kind":`...)
	tail = append(tail, kind...)
	tail = append(tail, `,"body":`...)
	tail = append(tail, env.Body...)
	tail = append(tail, '}')
	return head, tail, nil
}

// Peek returns up to n committed messages with seq > after, oldest first. It reads
// with a cursor, so a large backlog is never loaded as a whole.
func (o *Outbox) Peek(after uint64, n int) ([]Envelope, error) {
	if n <= 0 || after == math.MaxUint64 {
		return nil, nil
	}
	var out []Envelope
	err := o.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketMessages()).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < n; k, v = c.Next() {
			if len(v) < 1 {
				return fmt.Errorf("seq %d: empty value", binary.BigEndian.Uint64(k))
			}
			var env Envelope
			// Unmarshal copies, so nothing refers to bbolt's memory after the
			// transaction.
			if err := json.Unmarshal(v[1:], &env); err != nil {
				return fmt.Errorf("seq %d: decode envelope: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, env)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: peek %s after seq %d: %w", o.path, after, err)
	}
	return out, nil
}

// Ack deletes the given messages, once the broker has acknowledged them. Seqs that
// are not stored are ignored.
func (o *Outbox) Ack(seqs ...uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	var n int
	var bytes int64
	err := o.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketMessages())
		n, bytes = 0, 0
		for _, seq := range seqs {
			k := seqKey(seq)
			v := b.Get(k)
			if v == nil {
				continue
			}
			n++
			bytes += int64(max(len(v)-1, 0))
			if err := b.Delete(k); err != nil {
				return fmt.Errorf("delete seq %d: %w", seq, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("outbox: ack %d messages in %s: %w", len(seqs), o.path, err)
	}
	o.mu.Lock()
	o.committedN -= n
	o.committedBytes -= bytes
	o.mu.Unlock()
	return nil
}

// Stats returns the counters. It does no disk I/O.
func (o *Outbox) Stats() Stats {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := Stats{
		Depth:   o.committedN + o.pendingN,
		Bytes:   o.committedBytes + o.pendingBytes,
		Pending: o.pendingN,
		NextSeq: o.nextSeq,
	}
	if o.lastErr != nil {
		s.LastError = o.lastErr.Error()
	}
	return s
}

// Close commits whatever is pending in one final attempt, stops the committer, waits
// for it and closes the file. Messages the final attempt could not commit are lost,
// and the returned error says which. A second Close returns nil.
func (o *Outbox) Close() error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil
	}
	o.closed = true
	o.mu.Unlock()

	close(o.stop)
	<-o.exited
	err := o.finalErr
	if cerr := o.db.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("outbox: close %s: %w", o.path, cerr))
	}
	return err
}

func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq)
}
