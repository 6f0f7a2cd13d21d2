package modelfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// A small bounds-checked flatbuffer reader. The flatbuffers Go runtime indexes the
// buffer directly and panics on a bad offset (its verifier needs flatc-generated
// code), so the few tables TFLite needs are read here with every offset checked.
//
// Layout (flatbuffers "internals"): a table starts with an int32 offset back to its
// vtable; the vtable holds its own size (uint16), the table's size (uint16), then one
// uint16 offset per field (0 = absent, use the default). References to tables,
// vectors and strings are uint32 offsets relative to where they are stored; a vector
// or string starts with a uint32 element count.

var errOutOfRange = errors.New("offset out of range")

type flatbuf struct {
	b []byte
	// budget bounds the bytes read through vectors and strings. A well-formed file
	// reads each byte about once; tables that alias each other could otherwise make
	// a small file cost quadratic time or memory.
	budget int64
}

func newFlatbuf(b []byte) *flatbuf {
	return &flatbuf{b: b, budget: 2*int64(len(b)) + 4096}
}

func (f *flatbuf) charge(n int64) error {
	f.budget -= n
	if f.budget < 0 {
		return errBudget
	}
	return nil
}

// in reports whether [off, off+n) lies inside the buffer.
func (f *flatbuf) in(off, n uint64) bool {
	return off <= uint64(len(f.b)) && n <= uint64(len(f.b))-off
}

func (f *flatbuf) u16(off uint64) (uint16, error) {
	if !f.in(off, 2) {
		return 0, errOutOfRange
	}
	return binary.LittleEndian.Uint16(f.b[off:]), nil
}

func (f *flatbuf) u32(off uint64) (uint32, error) {
	if !f.in(off, 4) {
		return 0, errOutOfRange
	}
	return binary.LittleEndian.Uint32(f.b[off:]), nil
}

// deref follows the uint32 offset stored at off.
func (f *flatbuf) deref(off uint64) (uint64, error) {
	u, err := f.u32(off)
	if err != nil {
		return 0, err
	}
	target := off + uint64(u)
	if !f.in(target, 4) {
		return 0, fmt.Errorf("reference at %d to %d: %w", off, target, errOutOfRange)
	}
	return target, nil
}

type fbTable struct {
	f      *flatbuf
	pos    uint64 // where the table starts
	vt     uint64 // where its vtable starts
	vtLen  uint64
	tblLen uint64
}

// table reads the table that starts at pos.
func (f *flatbuf) table(pos uint64) (fbTable, error) {
	u, err := f.u32(pos)
	if err != nil {
		return fbTable{}, fmt.Errorf("table at %d: %w", pos, err)
	}
	vt := int64(pos) - int64(int32(u))
	if vt < 0 {
		return fbTable{}, fmt.Errorf("table at %d: vtable %w", pos, errOutOfRange)
	}
	vtLen, err := f.u16(uint64(vt))
	if err != nil {
		return fbTable{}, fmt.Errorf("table at %d: vtable %w", pos, err)
	}
	tblLen, err := f.u16(uint64(vt) + 2)
	if err != nil {
		return fbTable{}, fmt.Errorf("table at %d: vtable %w", pos, err)
	}
	if vtLen < 4 || vtLen%2 != 0 || !f.in(uint64(vt), uint64(vtLen)) || tblLen < 4 || !f.in(pos, uint64(tblLen)) {
		return fbTable{}, fmt.Errorf("table at %d: bad vtable (size %d, table size %d)", pos, vtLen, tblLen)
	}
	return fbTable{f: f, pos: pos, vt: uint64(vt), vtLen: uint64(vtLen), tblLen: uint64(tblLen)}, nil
}

// field returns where field i's value (size bytes) is stored, or 0 when it is absent.
func (t fbTable) field(i int, size uint64) (uint64, error) {
	slot := 4 + 2*uint64(i)
	if slot+2 > t.vtLen {
		return 0, nil
	}
	o, err := t.f.u16(t.vt + slot)
	if err != nil || o == 0 {
		return 0, err
	}
	if uint64(o)+size > t.tblLen {
		return 0, fmt.Errorf("field %d of the table at %d: %w", i, t.pos, errOutOfRange)
	}
	return t.pos + uint64(o), nil
}

func (t fbTable) uint8(i int, def uint8) (uint8, error) {
	p, err := t.field(i, 1)
	if err != nil || p == 0 {
		return def, err
	}
	return t.f.b[p], nil
}

func (t fbTable) int32(i int, def int32) (int32, error) {
	p, err := t.field(i, 4)
	if err != nil || p == 0 {
		return def, err
	}
	u, err := t.f.u32(p)
	return int32(u), err
}

func (t fbTable) uint32(i int, def uint32) (uint32, error) {
	v, err := t.int32(i, int32(def))
	return uint32(v), err
}

// ref returns the position a reference field points to, or ok=false when absent.
func (t fbTable) ref(i int) (pos uint64, ok bool, err error) {
	p, err := t.field(i, 4)
	if err != nil || p == 0 {
		return 0, false, err
	}
	pos, err = t.f.deref(p)
	return pos, err == nil, err
}

// subTable reads a table-valued field.
func (t fbTable) subTable(i int) (fbTable, bool, error) {
	pos, ok, err := t.ref(i)
	if !ok {
		return fbTable{}, false, err
	}
	sub, err := t.f.table(pos)
	return sub, err == nil, err
}

// fbVector is a vector's element count and where its elements start.
type fbVector struct {
	f     *flatbuf
	start uint64
	n     uint64
	size  uint64
}

// vector reads a vector-valued field whose elements are size bytes. An absent vector
// has no elements.
func (t fbTable) vector(i int, size uint64) (fbVector, error) {
	pos, ok, err := t.ref(i)
	if !ok {
		return fbVector{f: t.f, size: size}, err
	}
	n, err := t.f.u32(pos)
	if err != nil {
		return fbVector{}, err
	}
	// The element count is checked against the bytes that are there before any use.
	if !t.f.in(pos+4, uint64(n)*size) {
		return fbVector{}, fmt.Errorf("vector at %d: %d elements of %d bytes: %w", pos, n, size, errOutOfRange)
	}
	if err := t.f.charge(int64(n) * int64(size)); err != nil {
		return fbVector{}, err
	}
	return fbVector{f: t.f, start: pos + 4, n: uint64(n), size: size}, nil
}

func (t fbTable) string(i int) (string, error) {
	v, err := t.vector(i, 1)
	if err != nil {
		return "", err
	}
	return string(t.f.b[v.start : v.start+v.n]), nil
}

func (v fbVector) len() int { return int(v.n) }

func (v fbVector) int32(j int) int32 {
	return int32(binary.LittleEndian.Uint32(v.f.b[v.start+uint64(j)*4:]))
}

func (v fbVector) int64(j int) int64 {
	return int64(binary.LittleEndian.Uint64(v.f.b[v.start+uint64(j)*8:]))
}

func (v fbVector) float32(j int) float32 {
	return math.Float32frombits(binary.LittleEndian.Uint32(v.f.b[v.start+uint64(j)*4:]))
}

// table reads element j of a vector of tables.
func (v fbVector) table(j int) (fbTable, error) {
	pos, err := v.f.deref(v.start + uint64(j)*4)
	if err != nil {
		return fbTable{}, err
	}
	return v.f.table(pos)
}
