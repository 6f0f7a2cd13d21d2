package outbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

// The state file, little endian, written whole to state.tmp, fdatasynced, renamed
// over state and the directory fsynced:
//
//	"VGOBST01" | next_seq u64 | events head | telemetry head | CRC-32C of all before u32
//
// A head is segment base u64 | offset u64 | records before it in the segment u64 |
// seq of the record there u64 (0: unknown or none). Every record before a head is
// acked; the acks beyond it are not saved, so after a restart those messages are
// delivered again (the contract is at least once; the cloud de-duplicates by id).
const (
	stateMagic   = "VGOBST01"
	stateLen     = 8 + 8 + 2*32 + 4
	stateName    = "state"
	stateTmpName = "state.tmp"
	lockName     = "lock"
)

type stateHead struct{ base, off, idx, seq uint64 }

type stateData struct {
	next  uint64
	heads [2]stateHead // by logIndex
}

func encodeState(s stateData) []byte {
	b := make([]byte, 0, stateLen)
	b = append(b, stateMagic...)
	b = binary.LittleEndian.AppendUint64(b, s.next)
	for _, h := range s.heads {
		b = binary.LittleEndian.AppendUint64(b, h.base)
		b = binary.LittleEndian.AppendUint64(b, h.off)
		b = binary.LittleEndian.AppendUint64(b, h.idx)
		b = binary.LittleEndian.AppendUint64(b, h.seq)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func decodeState(b []byte) (stateData, error) {
	var s stateData
	if len(b) != stateLen {
		return s, fmt.Errorf("state file is %d bytes, want %d", len(b), stateLen)
	}
	if string(b[:8]) != stateMagic {
		return s, fmt.Errorf("state file does not start with %q", stateMagic)
	}
	if got, want := crc32.Checksum(b[:stateLen-4], castagnoli), binary.LittleEndian.Uint32(b[stateLen-4:]); got != want {
		return s, fmt.Errorf("state file checksum %08x, stored %08x", got, want)
	}
	s.next = binary.LittleEndian.Uint64(b[8:])
	for i := range s.heads {
		p := b[16+32*i:]
		s.heads[i] = stateHead{
			base: binary.LittleEndian.Uint64(p),
			off:  binary.LittleEndian.Uint64(p[8:]),
			idx:  binary.LittleEndian.Uint64(p[16:]),
			seq:  binary.LittleEndian.Uint64(p[24:]),
		}
	}
	return s, nil
}

// writeState saves next_seq and the acked heads atomically.
func (o *Outbox) writeState() error {
	o.smu.Lock()
	defer o.smu.Unlock()
	o.mu.Lock()
	st := stateData{next: o.nextSeq}
	for i, l := range o.logs {
		if h := l.fix(l.head); h.seg != nil {
			var seq uint64
			if len(l.win) > 0 {
				seq = l.win[0].seq
			}
			st.heads[i] = stateHead{h.seg.base, uint64(h.off), uint64(h.idx), seq}
		}
	}
	o.stateDirty = false
	o.mu.Unlock()

	err := writeFileAtomic(o.ops, o.path, stateName, stateTmpName, encodeState(st))
	o.mu.Lock()
	if err != nil {
		o.stateDirty = true
	} else {
		o.stateNext = max(o.stateNext, st.next)
		o.stateBytes = stateLen
	}
	o.mu.Unlock()
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}

func writeFileAtomic(ops fileOps, dir, name, tmpName string, b []byte) error {
	tmp := filepath.Join(dir, tmpName)
	err := func() error {
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, werr := f.Write(b)
		if werr == nil {
			werr = ops.datasync(f)
		}
		return errors.Join(werr, f.Close())
	}()
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return ops.syncDir(dir)
}

// badStateError is a state file that cannot be decoded. It costs the acked heads
// only (Open then delivers everything on disk again), never the store.
type badStateError struct{ err error }

func (e *badStateError) Error() string { return e.err.Error() }
func (e *badStateError) Unwrap() error { return e.err }

// readState returns the state file; ok is false when there is none. One that cannot
// be decoded is a *badStateError.
func (o *Outbox) readState() (st stateData, ok bool, err error) {
	path := filepath.Join(o.path, stateName)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, err
	}
	st, err = decodeState(b)
	if err != nil {
		return st, false, &badStateError{fmt.Errorf("%s: %w", path, err)}
	}
	return st, true, nil
}
