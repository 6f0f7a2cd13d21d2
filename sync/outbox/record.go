package outbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// Record layout, little endian (see doc.go):
//
//	[0:4)   payload length n
//	[4:8)   CRC-32C (Castagnoli) of bytes [8:16+n), i.e. seq || payload
//	[8:16)  seq
//	[16:16+n) payload: the envelope JSON
//
// A sealed segment ends with a trailer record: seq 0 and a 24-byte payload
// "VGSEAL01" || record count || last seq, so that Open learns a segment's contents
// from its last 40 bytes instead of reading it.
const (
	recHeader      = 16
	trailerPayload = 24
	trailerLen     = recHeader + trailerPayload
	trailerMagic   = "VGSEAL01"

	// readBufSize is what a reader fetches per pread: many small records at once.
	readBufSize = 64 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// sealRecord fills in the header of b, a record whose payload starts at b[16:].
func sealRecord(b []byte, seq uint64) {
	binary.LittleEndian.PutUint32(b[0:4], uint32(len(b)-recHeader))
	binary.LittleEndian.PutUint64(b[8:16], seq)
	binary.LittleEndian.PutUint32(b[4:8], crc32.Checksum(b[8:], castagnoli))
}

// trailerRecord is the record that seals a segment holding count records up to seq last.
func trailerRecord(count int, last uint64) []byte {
	b := make([]byte, trailerLen)
	copy(b[recHeader:], trailerMagic)
	binary.LittleEndian.PutUint64(b[recHeader+8:], uint64(count))
	binary.LittleEndian.PutUint64(b[recHeader+16:], last)
	sealRecord(b, 0)
	return b
}

// parseTrailer reports the count and last seq of a trailer record's payload.
func parseTrailer(payload []byte) (count int, last uint64, ok bool) {
	if len(payload) != trailerPayload || string(payload[:8]) != trailerMagic {
		return 0, 0, false
	}
	c := binary.LittleEndian.Uint64(payload[8:])
	last = binary.LittleEndian.Uint64(payload[16:])
	if c == 0 || c > 1<<40 || last == 0 {
		return 0, 0, false
	}
	return int(c), last, true
}

// badRecordError is a record that fails its checks: a torn write, a flipped bit or
// something that is not a segment. Every other error from a reader is I/O.
type badRecordError struct{ why string }

func (e *badRecordError) Error() string { return e.why }

func badRecord(format string, args ...any) error {
	return &badRecordError{why: fmt.Sprintf(format, args...)}
}

func isBadRecord(err error) bool {
	var b *badRecordError
	return errors.As(err, &b)
}

// segReader reads the records of one segment through its own read-only descriptor
// with pread and a small buffer: one system call per readBufSize of small records,
// never an mmap, never more than one buffer (or one oversized record) in memory.
// A descriptor stays valid after the file is unlinked, so a reader is never
// disturbed by an eviction; its owner checks segment.deleted.
type segReader struct {
	seg    *segment
	f      *os.File
	buf    []byte
	bufOff int64 // file offset of buf[0]
	n      int   // valid bytes in buf
}

// use points the reader at seg, opening it if it is another segment.
func (r *segReader) use(seg *segment) error {
	if r.seg == seg && r.f != nil {
		return nil
	}
	r.close()
	f, err := os.Open(seg.path)
	if err != nil {
		return err
	}
	r.seg, r.f, r.n = seg, f, 0
	return nil
}

func (r *segReader) close() {
	if r.f != nil {
		_ = r.f.Close()
	}
	r.seg, r.f, r.n = nil, nil, 0
}

// read returns the record at off, which must end at or before limit. payload aliases
// the reader's buffer until the next call. A record that is not intact is a
// *badRecordError; seq 0 (a trailer) is returned as such for the caller to judge.
func (r *segReader) read(off, limit int64) (seq uint64, payload []byte, err error) {
	if limit-off < recHeader {
		return 0, nil, badRecord("%d bytes at offset %d are too short for a record header", limit-off, off)
	}
	hdr, err := r.bytes(off, recHeader, limit)
	if err != nil {
		return 0, nil, err
	}
	n := int64(binary.LittleEndian.Uint32(hdr[0:4]))
	sum := binary.LittleEndian.Uint32(hdr[4:8])
	if n == 0 || off+recHeader+n > limit {
		return 0, nil, badRecord("record at offset %d claims a %d-byte payload, %d bytes remain", off, n, limit-off-recHeader)
	}
	rec, err := r.bytes(off, int(recHeader+n), limit)
	if err != nil {
		return 0, nil, err
	}
	if got := crc32.Checksum(rec[8:], castagnoli); got != sum {
		return 0, nil, badRecord("record at offset %d: checksum %08x, header says %08x", off, got, sum)
	}
	return binary.LittleEndian.Uint64(rec[8:16]), rec[recHeader:], nil
}

// bytes returns n bytes at off from the buffer, refilling it with one pread of up to
// readBufSize bytes (never past limit) when they are not there.
func (r *segReader) bytes(off int64, n int, limit int64) ([]byte, error) {
	if off >= r.bufOff && off+int64(n) <= r.bufOff+int64(r.n) {
		s := off - r.bufOff
		return r.buf[s : s+int64(n)], nil
	}
	if n > readBufSize {
		// An oversized record gets a buffer of its own, dropped after use.
		b := make([]byte, n)
		if _, err := r.f.ReadAt(b, off); err != nil {
			return nil, r.shortRead(err, off, n)
		}
		return b, nil
	}
	if r.buf == nil {
		r.buf = make([]byte, readBufSize)
	}
	want := int(min(int64(readBufSize), limit-off))
	m, err := r.f.ReadAt(r.buf[:want], off)
	r.bufOff, r.n = off, m
	if m < n {
		r.n = 0
		return nil, r.shortRead(err, off, n)
	}
	return r.buf[:n], nil
}

func (r *segReader) shortRead(err error, off int64, n int) error {
	if err == nil || errors.Is(err, io.EOF) {
		return badRecord("file ends inside the %d bytes at offset %d", n, off)
	}
	return fmt.Errorf("read %s at offset %d: %w", r.seg.path, off, err)
}
