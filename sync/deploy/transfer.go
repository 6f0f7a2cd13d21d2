package deploy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// ErrTransferMismatch is OpenTransfer's error for a directory that holds another
// deployment's (or another archive's) transfer.
var ErrTransferMismatch = errors.New("directory holds a different transfer")

// ErrDigestMismatch is Assemble's and Store.Install's error for an archive whose
// size or SHA-256 differs from the manifest's.
var ErrDigestMismatch = errors.New("archive does not match the manifest")

const (
	transferManifest = "manifest.json"
	chunksDir        = "chunks"
)

// Transfer assembles a chunked archive on disk: dir/manifest.json and dir/chunks/<i>
// (each written atomically), so a transfer interrupted by a broker outage or a
// restart continues where it was when its dir is opened again. Its methods are safe
// for concurrent use.
type Transfer struct {
	dir string
	m   *Manifest

	// mu protects the fields below.
	mu      sync.Mutex
	have    []bool
	stored  int64 // bytes of the chunks stored
	count   int   // chunks stored
	removed bool
}

// OpenTransfer opens (creating it if needed) the transfer of m's archive in dir. A
// dir that holds a different deployment is an error wrapping ErrTransferMismatch.
// Chunk files whose length is wrong for their index (a write cut short by a crash)
// are dropped, to be received again.
func OpenTransfer(dir string, m *Manifest) (*Transfer, error) {
	if !m.CarriesBundle() || m.Transfer == nil || m.Transfer.Via != ViaChunks {
		return nil, fmt.Errorf("open transfer of deployment %s: the manifest has no chunked transfer", m.Deployment)
	}
	if data, err := os.ReadFile(filepath.Join(dir, transferManifest)); err == nil {
		old, err := ParseManifest(data, Limits{MaxBytes: 1 << 62})
		if err != nil {
			return nil, fmt.Errorf("open transfer %s: %w", dir, err)
		}
		if old.Deployment != m.Deployment || old.SHA256 != m.SHA256 || old.Size != m.Size ||
			old.Transfer.Chunks != m.Transfer.Chunks || old.Transfer.ChunkSize != m.Transfer.ChunkSize {
			return nil, fmt.Errorf("open transfer %s: %w (deployment %s, not %s)", dir, ErrTransferMismatch, old.Deployment, m.Deployment)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open transfer: %w", err)
	} else {
		data, err := m.Marshal()
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Join(dir, chunksDir), 0o755); err != nil {
			return nil, fmt.Errorf("open transfer: %w", err)
		}
		if err := writeFileAtomic(filepath.Join(dir, transferManifest), data, 0o644); err != nil {
			return nil, fmt.Errorf("open transfer: %w", err)
		}
	}
	t := &Transfer{dir: dir, m: m, have: make([]bool, m.Transfer.Chunks)}
	if err := os.MkdirAll(filepath.Join(dir, chunksDir), 0o755); err != nil {
		return nil, fmt.Errorf("open transfer: %w", err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, chunksDir))
	if err != nil {
		return nil, fmt.Errorf("open transfer: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, chunksDir, e.Name())
		i, err := strconv.Atoi(e.Name())
		fi, ierr := e.Info()
		if err != nil || ierr != nil || !e.Type().IsRegular() || strconv.Itoa(i) != e.Name() ||
			m.ChunkLen(i) < 0 || fi.Size() != int64(m.ChunkLen(i)) {
			// Temporary files and chunks cut short by a crash: receive them again.
			if err := os.RemoveAll(p); err != nil {
				return nil, fmt.Errorf("open transfer: %w", err)
			}
			continue
		}
		t.have[i] = true
		t.count++
		t.stored += fi.Size()
	}
	return t, nil
}

// LoadTransfers opens every transfer under root (one directory each), for resuming
// after a restart. Directories that cannot be opened are left out and named in the
// error; the others are returned all the same.
func LoadTransfers(root string) ([]*Transfer, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load transfers: %w", err)
	}
	var out []*Transfer
	var errs []error
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		data, err := os.ReadFile(filepath.Join(dir, transferManifest))
		if err != nil {
			errs = append(errs, fmt.Errorf("load transfer %s: %w", dir, err))
			continue
		}
		// The size limit was applied when the manifest arrived.
		m, err := ParseManifest(data, Limits{MaxBytes: 1 << 62})
		if err != nil {
			errs = append(errs, fmt.Errorf("load transfer %s: %w", dir, err))
			continue
		}
		t, err := OpenTransfer(dir, m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, t)
	}
	return out, errors.Join(errs...)
}

// Manifest is the deployment being transferred.
func (t *Transfer) Manifest() *Manifest { return t.m }

// Dir is the transfer's directory.
func (t *Transfer) Dir() string { return t.dir }

// Put stores chunk i. Chunks may come in any order; a chunk already stored is
// ignored. An index out of range or a length that is wrong for the index is an
// error. complete is true once every chunk is stored.
func (t *Transfer) Put(i int, data []byte) (complete bool, err error) {
	want := t.m.ChunkLen(i)
	if want < 0 {
		return false, fmt.Errorf("deployment %s: chunk %d is out of range (%d chunks)", t.m.Deployment, i, t.m.Transfer.Chunks)
	}
	if len(data) != want {
		return false, fmt.Errorf("deployment %s: chunk %d has %d bytes, want %d", t.m.Deployment, i, len(data), want)
	}
	t.mu.Lock()
	have, removed := t.have[i], t.removed
	done := t.count == len(t.have)
	t.mu.Unlock()
	if removed {
		return false, fmt.Errorf("deployment %s: transfer removed", t.m.Deployment)
	}
	if have {
		return done, nil
	}
	// Written outside the lock; two Puts of the same chunk write the same bytes, and
	// the rename makes either one whole.
	if err := writeChunk(filepath.Join(t.dir, chunksDir, strconv.Itoa(i)), data); err != nil {
		return false, fmt.Errorf("deployment %s: store chunk %d: %w", t.m.Deployment, i, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.have[i] {
		t.have[i] = true
		t.count++
		t.stored += int64(len(data))
	}
	return t.count == len(t.have), nil
}

// writeChunk writes a chunk beside its name and renames it, so a chunk file is
// whole or absent. The data is synced (a chunk the file system lost to a power cut
// would otherwise be garbage of the right length, found only by the SHA-256); the
// directory is not (a chunk whose name was lost is simply received again).
// writeChunk stores a chunk atomically: a crash leaves it whole or absent.
func writeChunk(p string, data []byte) error {
	return writeFileAtomic(p, data, 0o640)
}

// Progress is the fraction of the archive's bytes stored, 0..1.
func (t *Transfer) Progress() float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return float64(t.stored) / float64(t.m.Size)
}

// Complete reports whether every chunk is stored.
func (t *Transfer) Complete() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.count == len(t.have)
}

// Missing lists the chunks not stored yet, in order.
func (t *Transfer) Missing() []int {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []int
	for i, h := range t.have {
		if !h {
			out = append(out, i)
		}
	}
	return out
}

// Assemble writes the archive to w, checking its size and SHA-256 against the
// manifest (an error wrapping ErrDigestMismatch when they differ: a corrupted chunk),
// and returns them. Every chunk must be stored.
func (t *Transfer) Assemble(w io.Writer) (sha string, size int64, err error) {
	if missing := t.Missing(); len(missing) > 0 {
		return "", 0, fmt.Errorf("assemble deployment %s: %d chunks missing (first %d)", t.m.Deployment, len(missing), missing[0])
	}
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, h)}
	for i := range t.m.Transfer.Chunks {
		if err := copyFile(cw, filepath.Join(t.dir, chunksDir, strconv.Itoa(i)), int64(t.m.ChunkLen(i))); err != nil {
			return "", 0, fmt.Errorf("assemble deployment %s: chunk %d: %w", t.m.Deployment, i, err)
		}
	}
	sha = hex.EncodeToString(h.Sum(nil))
	if cw.n != t.m.Size || sha != t.m.SHA256 {
		return sha, cw.n, fmt.Errorf("assemble deployment %s: %w: got %d bytes with SHA-256 %s, manifest says %d bytes, %s",
			t.m.Deployment, ErrDigestMismatch, cw.n, sha, t.m.Size, t.m.SHA256)
	}
	return sha, cw.n, nil
}

// Remove deletes the transfer's directory.
func (t *Transfer) Remove() error {
	t.mu.Lock()
	t.removed = true
	t.mu.Unlock()
	if err := os.RemoveAll(t.dir); err != nil {
		return fmt.Errorf("remove transfer of deployment %s: %w", t.m.Deployment, err)
	}
	return nil
}
