package deploy

import (
	"errors"
	"io"
)

// Transfer assembles a chunked archive on disk: dir/manifest.json and dir/chunks/<i>
// (each written atomically), so a transfer interrupted by a broker outage or a
// restart continues where it was when its dir is opened again. Its methods are safe
// for concurrent use.
type Transfer struct{}

// OpenTransfer opens (creating it if needed) the transfer of m's archive in dir. A dir
// that holds a different deployment is an error.
func OpenTransfer(dir string, m *Manifest) (*Transfer, error) { return nil, errors.New("TODO") }

// LoadTransfers opens every transfer under root (one directory each), for resuming
// after a restart. Directories without a readable manifest are skipped and reported
// in the error.
func LoadTransfers(root string) ([]*Transfer, error) { return nil, errors.New("TODO") }

// Manifest is the deployment being transferred.
func (t *Transfer) Manifest() *Manifest { return nil }

// Dir is the transfer's directory.
func (t *Transfer) Dir() string { return "" }

// Put stores chunk i. Chunks may come in any order; a chunk already stored is
// ignored. An index out of range or a length that is wrong for the index is an
// error. complete is true once every chunk is stored.
func (t *Transfer) Put(i int, data []byte) (complete bool, err error) { return false, errors.New("TODO") }

// Progress is the fraction of the archive's bytes stored, 0..1.
func (t *Transfer) Progress() float64 { return 0 }

// Missing lists the chunks not stored yet, in order.
func (t *Transfer) Missing() []int { return nil }

// Assemble writes the archive to w, checking its size and SHA-256 against the
// manifest, and returns them.
func (t *Transfer) Assemble(w io.Writer) (sha string, size int64, err error) {
	return "", 0, errors.New("TODO")
}

// Remove deletes the transfer's directory.
func (t *Transfer) Remove() error { return errors.New("TODO") }
