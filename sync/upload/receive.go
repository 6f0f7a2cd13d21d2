package upload

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// Defaults of a Receiver's and a Handler's bounds.
const (
	// DefaultMaxAge is how long a file's chunks are held without a new one.
	DefaultMaxAge = 10 * time.Minute
	// DefaultMaxPending bounds the bytes of chunks held for files not yet complete.
	DefaultMaxPending = 256 << 20
	// DefaultMaxFile is the largest file a receiver accepts.
	DefaultMaxFile = 64 << 20
)

// maxChunks bounds a chunk index and a manifest's count: a file of DefaultMaxFile in
// chunks of 64 bytes.
const maxChunks = 1 << 20

// sampleFileRE is the name of a sample's file as the agent writes it
// (<camera>-<time>-<seq>.jpg and .json): a base name in a safe alphabet.
var sampleFileRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.(jpg|json)$`)

// CheckFileName returns an error unless name is a sample's file name that is safe to
// write under a directory: a base name (no "/", no ".."), letters, digits, '.', '_'
// and '-', ending in .jpg or .json.
func CheckFileName(name string) error {
	if !sampleFileRE.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("file name %q is not a sample's (a base name of letters, digits, '.', '_', '-', no \"..\", ending in .jpg or .json)", name)
	}
	return nil
}

// CheckDevice returns an error unless device is safe as a directory name: not empty,
// no '/' or '\', not starting with '.', no control characters, at most 128 bytes of
// UTF-8. A device id is an MQTT topic segment, so it may hold more than a file name's
// alphabet.
func CheckDevice(device string) error {
	bad := device == "" || len(device) > 128 || !utf8.ValidString(device) ||
		strings.HasPrefix(device, ".") || strings.ContainsAny(device, `/\`) ||
		strings.IndexFunc(device, unicode.IsControl) >= 0 || strings.TrimSpace(device) != device
	if bad {
		return fmt.Errorf("device id %q is not safe as a directory name (empty, '/', '\\', a leading '.', control characters or over 128 bytes)", device)
	}
	return nil
}

// File is a file of a sample received whole.
type File struct {
	Device, Name string
	Data         []byte
	Chunks       int // chunks it came in over MQTT (0 over HTTP or when empty)

	sha256 string // from the manifest, for Receiver.Saved
}

// Save writes f to dir/<device>/<name> atomically (a temporary file, synced, then
// renamed), making the device's directory when needed, and returns the path.
func (f *File) Save(dir string) (string, error) {
	path, _, err := saveAtomic(dir, f.Device, f.Name, bytes.NewReader(f.Data))
	return path, err
}

// saveAtomic copies r to dir/<device>/<name> through a temporary file in the same
// directory, so a reader never sees a partial file, and reports whether it replaced
// one. The names must have been checked.
func saveAtomic(dir, device, name string, r io.Reader) (path string, replaced bool, err error) {
	if err := errors.Join(CheckDevice(device), CheckFileName(name)); err != nil {
		return "", false, err
	}
	devDir := filepath.Join(dir, device)
	if err := os.MkdirAll(devDir, 0o755); err != nil {
		return "", false, fmt.Errorf("save %s/%s: %w", device, name, err)
	}
	path = filepath.Join(devDir, name)
	// A leading '.' keeps the temporary file out of a sample's names.
	tmp, err := os.CreateTemp(devDir, "."+name+".*.tmp")
	if err != nil {
		return "", false, fmt.Errorf("save %s/%s: %w", device, name, err)
	}
	_, err = io.Copy(tmp, r)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		_, statErr := os.Lstat(path)
		replaced = statErr == nil
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return "", false, fmt.Errorf("save %s/%s: %w", device, name, err)
	}
	// The rename itself survives a power cut once the directory is synced.
	if d, err := os.Open(devDir); err == nil {
		d.Sync()
		d.Close()
	}
	return path, replaced, nil
}

// ReceiverOptions bound what a Receiver holds. Zero values take the defaults.
type ReceiverOptions struct {
	// Spool, when set, is a directory where each chunk is written (atomically and
	// synced) before Add returns, as Spool/<device>/<file>/<index>, so chunks already
	// acknowledged to the broker survive a stop or a crash: NewReceiver picks them up
	// again. Empty: chunks are held in memory, and lost with the process.
	Spool string
	// MaxAge: a file whose chunks stop coming for this long is dropped (DefaultMaxAge).
	// Files found in the spool at the start count from then.
	MaxAge time.Duration
	// MaxPending bounds the bytes of chunks held, in memory or in the spool
	// (DefaultMaxPending); beyond it the file that progressed least recently is dropped.
	MaxPending int64
	// MaxFile is the largest file accepted (DefaultMaxFile).
	MaxFile int64
	// Now is the clock (time.Now); tests drive their own.
	Now func() time.Time
}

// ErrNotStored marks an error of Add that is the receiving side's, not the message's:
// a chunk that could not be written to the spool, or a file that could not be read
// back from it. The message should not be acknowledged, so that the broker delivers
// it again (Subscribe does so).
var ErrNotStored = errors.New("not stored")

// errSpoolSize: a chunk in the spool is not as long as it was received (changed by
// something else); the file is dropped like one with a chunk missing.
var errSpoolSize = errors.New("changed in the spool")

// ReceiverStats are a Receiver's figures since it was made.
type ReceiverStats struct {
	Files      uint64 // files completed and checked
	Resent     uint64 // files started again from chunk 0 before they completed
	Duplicates uint64 // manifests of a file just completed, received again and ignored
	Expired    uint64 // incomplete files dropped after MaxAge without a chunk
	Dropped    uint64 // incomplete files dropped to stay within MaxPending
	Errors     uint64 // messages refused (bad topic or name, mismatch, missing chunks)
	Recovered  uint64 // chunks found in the spool at the start
	Pending    int    // files with chunks held
	Bytes      int64  // bytes of chunks held
}

// Receiver puts together the files a device sends over MQTT (see the package
// comment): chunks are held, per device and file, until the file's manifest comes;
// then the file is checked against it. It is safe for concurrent use, but chunks
// must come in the order they were published for a resend to be seen (an MQTT
// subscriber at QoS 1 gets them so).
//
// With a spool (ReceiverOptions.Spool) the chunks are on disk and only their sizes
// in memory; a file Add returns keeps its chunks in the spool until Saved is called,
// so a file that could not be saved can be completed again by its manifest, received
// again.
type Receiver struct {
	prefix string
	opts   ReceiverOptions

	mu      sync.Mutex // guards the fields below
	partial map[fileKey]*partialFile
	done    map[fileKey]doneFile // files completed within MaxAge, to spot a manifest sent again
	stats   ReceiverStats
}

type fileKey struct{ device, name string }

type partialFile struct {
	sizes map[int]int64  // bytes of each chunk held
	data  map[int][]byte // the chunks, without a spool
	bytes int64
	last  time.Time // the last chunk's arrival
}

type doneFile struct {
	sha256 string
	at     time.Time
}

// maxDone bounds the files remembered as completed.
const maxDone = 4096

// NewReceiver returns a receiver for the topics under prefix (mqtt.topic_prefix on
// the devices, "vigil" by default). With a spool, it makes the directory and takes
// the chunks found there (temporary files of a write cut short are removed; entries
// that are not a device, file or chunk name are left alone); an error says what
// could not be read.
func NewReceiver(prefix string, opts ReceiverOptions) (*Receiver, error) {
	if opts.MaxAge <= 0 {
		opts.MaxAge = DefaultMaxAge
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultMaxPending
	}
	if opts.MaxFile <= 0 {
		opts.MaxFile = DefaultMaxFile
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	r := &Receiver{
		prefix: strings.TrimSuffix(prefix, "/"), opts: opts,
		partial: map[fileKey]*partialFile{}, done: map[fileKey]doneFile{},
	}
	if opts.Spool != "" {
		if err := os.MkdirAll(opts.Spool, 0o755); err != nil {
			return nil, fmt.Errorf("samples spool: %w", err)
		}
		if err := r.load(); err != nil {
			return nil, fmt.Errorf("samples spool %s: %w", opts.Spool, err)
		}
	}
	return r, nil
}

// load takes the chunks in the spool, as a restart after a stop or a crash finds
// them. Their files count their age from now: the rest may be queued at the broker
// for as long as the receiver was away.
func (r *Receiver) load() error {
	now := r.opts.Now()
	devices, err := os.ReadDir(r.opts.Spool)
	if err != nil {
		return err
	}
	for _, d := range devices {
		if !d.IsDir() || CheckDevice(d.Name()) != nil {
			continue
		}
		devDir := filepath.Join(r.opts.Spool, d.Name())
		files, err := os.ReadDir(devDir)
		if err != nil {
			return err
		}
		for _, f := range files {
			if !f.IsDir() || CheckFileName(f.Name()) != nil {
				continue
			}
			key := fileKey{device: d.Name(), name: f.Name()}
			fileDir := filepath.Join(devDir, f.Name())
			chunks, err := os.ReadDir(fileDir)
			if err != nil {
				return err
			}
			p := &partialFile{sizes: map[int]int64{}, last: now}
			for _, c := range chunks {
				if strings.HasPrefix(c.Name(), ".") && strings.HasSuffix(c.Name(), ".tmp") {
					os.Remove(filepath.Join(fileDir, c.Name())) // a write the crash cut short
					continue
				}
				index, err := strconv.Atoi(c.Name())
				if err != nil || index < 0 || index >= maxChunks || strconv.Itoa(index) != c.Name() || !c.Type().IsRegular() {
					continue
				}
				info, err := c.Info()
				if err != nil {
					return err
				}
				p.sizes[index] = info.Size()
				p.bytes += info.Size()
				r.stats.Recovered++
			}
			if len(p.sizes) == 0 {
				os.Remove(fileDir)
				continue
			}
			r.partial[key] = p
			r.stats.Bytes += p.bytes
		}
		os.Remove(devDir) // only when empty
	}
	// Over the budget already (a smaller MaxPending than before): the usual rule.
	r.trim(fileKey{})
	return nil
}

// Stats returns the receiver's figures.
func (r *Receiver) Stats() ReceiverStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.Pending = len(r.partial)
	return s
}

// Add takes one message of <prefix>/<device>/samples/<file>[/<index>]. It returns the
// file when the message is a manifest whose chunks are all held and whose size and
// SHA-256 match; nil and no error while a file is incomplete (or for a manifest
// received again after its file completed). An error names the device and file and
// what was wrong; a file that fails its manifest is dropped.
func (r *Receiver) Add(topic string, payload []byte) (*File, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.opts.Now()
	r.expire(now)
	key, index, isChunk, err := r.parse(topic)
	if err != nil {
		r.stats.Errors++
		return nil, err
	}
	if isChunk {
		if err := r.addChunk(key, index, payload, now); err != nil {
			r.stats.Errors++
			return nil, err
		}
		return nil, nil
	}
	f, err := r.complete(key, payload, now)
	if err != nil {
		r.stats.Errors++
	}
	return f, err
}

// parse splits a sample topic into the file's key and, for a chunk, its index.
func (r *Receiver) parse(topic string) (key fileKey, index int, isChunk bool, err error) {
	rest, ok := strings.CutPrefix(topic, r.prefix+"/")
	parts := strings.Split(rest, "/")
	if !ok || len(parts) < 3 || len(parts) > 4 || parts[1] != "samples" {
		return key, 0, false, fmt.Errorf("topic %q is not %s/<device>/samples/<file>[/<index>]", topic, r.prefix)
	}
	key = fileKey{device: parts[0], name: parts[2]}
	if err := errors.Join(CheckDevice(key.device), CheckFileName(key.name)); err != nil {
		return key, 0, false, fmt.Errorf("topic %q: %w", topic, err)
	}
	if len(parts) == 3 {
		return key, 0, false, nil
	}
	index, err = strconv.Atoi(parts[3])
	if err != nil || index < 0 || index >= maxChunks || strconv.Itoa(index) != parts[3] {
		return key, 0, false, fmt.Errorf("sample %s/%s: chunk index %q is not a number from 0 to %d", key.device, key.name, parts[3], maxChunks-1)
	}
	return key, index, true, nil
}

func (r *Receiver) addChunk(key fileKey, index int, payload []byte, now time.Time) error {
	p := r.partial[key]
	if p != nil && index == 0 {
		if _, again := p.sizes[0]; again {
			// The device sends a file again from its first chunk after an outage.
			r.drop(key)
			r.stats.Resent++
			p = nil
		}
	}
	if p == nil {
		p = &partialFile{sizes: map[int]int64{}}
		if r.opts.Spool == "" {
			p.data = map[int][]byte{}
		}
		r.partial[key] = p
	}
	size := int64(len(payload))
	if old, ok := p.sizes[index]; ok {
		p.bytes -= old
		r.stats.Bytes -= old
		delete(p.sizes, index)
	}
	if p.bytes+size > r.opts.MaxFile {
		r.drop(key)
		return fmt.Errorf("sample %s/%s: over %d bytes in chunks, more than a file may have; dropped", key.device, key.name, r.opts.MaxFile)
	}
	if r.opts.Spool != "" {
		if err := r.writeChunk(key, index, payload); err != nil {
			if len(p.sizes) == 0 {
				r.drop(key)
			}
			return fmt.Errorf("sample %s/%s: chunk %d: %w (%w)", key.device, key.name, index, err, ErrNotStored)
		}
	} else {
		p.data[index] = append([]byte(nil), payload...)
	}
	p.sizes[index] = size
	p.bytes += size
	r.stats.Bytes += size
	p.last = now
	return r.trim(key)
}

// trim drops files, those that progressed least recently first and key last, until
// the chunks held are within MaxPending; an error says when key itself went.
func (r *Receiver) trim(key fileKey) error {
	for r.stats.Bytes > r.opts.MaxPending {
		oldest, found := fileKey{}, false
		for k, q := range r.partial {
			if k != key && (!found || q.last.Before(r.partial[oldest].last)) {
				oldest, found = k, true
			}
		}
		if !found {
			oldest = key
		}
		r.drop(oldest)
		r.stats.Dropped++
		if oldest == key {
			return fmt.Errorf("sample %s/%s: its chunks alone exceed the %d bytes held for incomplete files; dropped", key.device, key.name, r.opts.MaxPending)
		}
	}
	return nil
}

// fileDir is where key's chunks are spooled; the names were checked (CheckDevice,
// CheckFileName), so it is under the spool.
func (r *Receiver) fileDir(key fileKey) string {
	return filepath.Join(r.opts.Spool, key.device, key.name)
}

// writeChunk writes a chunk to the spool atomically (a temporary file, synced, then
// renamed, and the directory synced), so once it returns the chunk survives a crash
// or a power cut and may be acknowledged.
func (r *Receiver) writeChunk(key fileKey, index int, payload []byte) error {
	dir := r.fileDir(key)
	if _, err := os.Stat(dir); err != nil {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		// The new directories' entries, up to the spool.
		syncDir(filepath.Dir(dir))
		syncDir(r.opts.Spool)
	}
	name := strconv.Itoa(index)
	tmp, err := os.CreateTemp(dir, "."+name+".*.tmp")
	if err != nil {
		return err
	}
	_, err = tmp.Write(payload)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// chunk returns chunk i of p, from memory or from the spool.
func (r *Receiver) chunk(key fileKey, p *partialFile, i int) ([]byte, error) {
	if p.data != nil {
		return p.data[i], nil
	}
	b, err := os.ReadFile(filepath.Join(r.fileDir(key), strconv.Itoa(i)))
	if err == nil && int64(len(b)) != p.sizes[i] {
		err = fmt.Errorf("%w: %d bytes, %d received", errSpoolSize, len(b), p.sizes[i])
	}
	return b, err
}

// complete checks a manifest against the chunks held and returns the file.
func (r *Receiver) complete(key fileKey, payload []byte, now time.Time) (*File, error) {
	fail := func(format string, a ...any) (*File, error) {
		r.drop(key)
		return nil, fmt.Errorf("sample %s/%s: "+format, append([]any{key.device, key.name}, a...)...)
	}
	var man Manifest
	if err := json.Unmarshal(payload, &man); err != nil {
		return fail("manifest %.100q: %v", payload, err)
	}
	switch {
	case man.File != key.name:
		return fail("manifest names the file %q", man.File)
	case man.Size < 0 || man.Size > r.opts.MaxFile:
		return fail("manifest size %d is not from 0 to %d", man.Size, r.opts.MaxFile)
	case man.Chunks < 0 || man.Chunks > maxChunks || (man.Chunks == 0) != (man.Size == 0):
		return fail("manifest chunk count %d does not fit its size %d", man.Chunks, man.Size)
	}
	if sum, err := hex.DecodeString(man.SHA256); err != nil || len(sum) != sha256.Size {
		return fail("manifest sha256 %q is not 64 hex digits", man.SHA256)
	}
	p := r.partial[key]
	if p == nil && man.Chunks > 0 {
		if d, ok := r.done[key]; ok && d.sha256 == strings.ToLower(man.SHA256) {
			r.stats.Duplicates++
			return nil, nil
		}
	}
	held := 0
	if p != nil {
		held = len(p.sizes)
	}
	var size int64
	for i := range man.Chunks {
		n, ok := int64(0), false
		if p != nil {
			n, ok = p.sizes[i]
		}
		if !ok {
			return fail("chunk %d of %d missing (%d held): the file is incomplete", i, man.Chunks, held)
		}
		if size += n; size > man.Size {
			return fail("chunks 0 to %d hold more than the manifest's size %d", i, man.Size)
		}
	}
	if size != man.Size {
		return fail("%d bytes in %d chunks, manifest says %d", size, man.Chunks, man.Size)
	}
	var data []byte
	if man.Chunks > 0 {
		data = make([]byte, 0, man.Size)
	}
	for i := range man.Chunks {
		c, err := r.chunk(key, p, i)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errSpoolSize) {
			return fail("chunk %d of the spool: %v", i, err)
		}
		if err != nil {
			// Kept: the spool may be readable again when the manifest comes again.
			return nil, fmt.Errorf("sample %s/%s: chunk %d of the spool: %w (%w)", key.device, key.name, i, err, ErrNotStored)
		}
		data = append(data, c...)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != strings.ToLower(man.SHA256) {
		return fail("sha256 of the %d bytes received is %s, manifest says %s", len(data), got, man.SHA256)
	}
	r.stats.Files++
	f := &File{Device: key.device, Name: key.name, Data: data, Chunks: man.Chunks, sha256: strings.ToLower(man.SHA256)}
	if r.opts.Spool == "" {
		r.finish(key, f.sha256, now)
	} else {
		p.last = now // held until Saved, within MaxAge
	}
	return f, nil
}

// Saved tells a receiver with a spool that the caller has stored f, a file Add
// returned: its chunks are removed from the spool. Until then they are kept (within
// MaxAge and MaxPending), so that the file's manifest, received again, gives it again.
// Without a spool it does nothing (the chunks went when Add returned f).
func (r *Receiver) Saved(f *File) {
	if r.opts.Spool == "" || f == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.finish(fileKey{f.Device, f.Name}, f.sha256, r.opts.Now())
}

// finish forgets a completed file's chunks and remembers it as done.
func (r *Receiver) finish(key fileKey, sha string, now time.Time) {
	r.drop(key)
	if len(r.done) >= maxDone {
		clear(r.done) // remembered only to quiet a repeated manifest: losing them is harmless
	}
	r.done[key] = doneFile{sha256: sha, at: now}
}

// drop forgets a file's chunks, and removes them from the spool.
func (r *Receiver) drop(key fileKey) {
	p := r.partial[key]
	if p == nil {
		return
	}
	r.stats.Bytes -= p.bytes
	delete(r.partial, key)
	if r.opts.Spool != "" {
		// A failure leaves chunks that the next start takes and MaxAge then drops.
		os.RemoveAll(r.fileDir(key))
		os.Remove(filepath.Join(r.opts.Spool, key.device)) // only when empty
	}
}

// expire drops the files that had no chunk for MaxAge, and forgets completed files
// as old.
func (r *Receiver) expire(now time.Time) {
	for k, p := range r.partial {
		if now.Sub(p.last) > r.opts.MaxAge {
			r.drop(k)
			r.stats.Expired++
		}
	}
	for k, d := range r.done {
		if now.Sub(d.at) > r.opts.MaxAge {
			delete(r.done, k)
		}
	}
}
