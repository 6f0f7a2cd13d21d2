package tflite

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// Tiny TFLite models written by the tests, for what the YOLOX models cannot show:
// quantised and float16 inputs and outputs, unsupported element types, unknown
// operator versions. They follow TFLite's schema.fbs (version 3); TFLite verifies
// them as it verifies any file.

// fbuf writes a flatbuffer front to back: an object is appended after the object
// that refers to it, and the reference is patched once the target's position is known.
type fbuf struct{ b []byte }

// obj writes one object and returns its position.
type obj func(f *fbuf) int

// field is a table field: a scalar of size bytes, or a reference to an object.
type field struct {
	size int
	bits uint64
	ref  obj
}

func u8(v uint8) *field   { return &field{size: 1, bits: uint64(v)} }
func i32(v int32) *field  { return &field{size: 4, bits: uint64(uint32(v))} }
func u32(v uint32) *field { return &field{size: 4, bits: uint64(v)} }
func ref(o obj) *field    { return &field{size: 4, ref: o} }

func (f *fbuf) zeros(n int) { f.b = append(f.b, make([]byte, n)...) }

// table writes a vtable followed by its table; nil fields are absent.
func table(fields ...*field) obj {
	return func(f *fbuf) int {
		offs := make([]int, len(fields))
		size := 4 // the table's soffset to its vtable
		for i, fl := range fields {
			if fl == nil {
				continue
			}
			for size%fl.size != 0 {
				size++
			}
			offs[i] = size
			size += fl.size
		}
		for size%4 != 0 {
			size++
		}
		vt := 4 + 2*len(fields)
		for (len(f.b)+vt)%4 != 0 {
			f.zeros(1)
		}
		vtPos := len(f.b)
		f.b = binary.LittleEndian.AppendUint16(f.b, uint16(vt))
		f.b = binary.LittleEndian.AppendUint16(f.b, uint16(size))
		for _, o := range offs {
			f.b = binary.LittleEndian.AppendUint16(f.b, uint16(o))
		}
		pos := len(f.b)
		f.zeros(size)
		binary.LittleEndian.PutUint32(f.b[pos:], uint32(pos-vtPos))
		for i, fl := range fields {
			if fl == nil || fl.ref != nil {
				continue
			}
			at := f.b[pos+offs[i]:]
			switch fl.size {
			case 1:
				at[0] = byte(fl.bits)
			case 4:
				binary.LittleEndian.PutUint32(at, uint32(fl.bits))
			}
		}
		for i, fl := range fields {
			if fl != nil && fl.ref != nil {
				f.patch(pos+offs[i], fl.ref(f))
			}
		}
		return pos
	}
}

func (f *fbuf) patch(at, target int) {
	binary.LittleEndian.PutUint32(f.b[at:], uint32(target-at))
}

// vector writes a vector of scalars of elemSize bytes.
func vector(elemSize int, vals ...uint64) obj {
	return func(f *fbuf) int {
		for len(f.b)%4 != 0 || (len(f.b)+4)%elemSize != 0 {
			f.zeros(1)
		}
		pos := len(f.b)
		f.b = binary.LittleEndian.AppendUint32(f.b, uint32(len(vals)))
		for _, v := range vals {
			switch elemSize {
			case 4:
				f.b = binary.LittleEndian.AppendUint32(f.b, uint32(v))
			case 8:
				f.b = binary.LittleEndian.AppendUint64(f.b, v)
			}
		}
		return pos
	}
}

func ints(vs ...int32) obj {
	u := make([]uint64, len(vs))
	for i, v := range vs {
		u[i] = uint64(uint32(v))
	}
	return vector(4, u...)
}

// tables writes a vector of references to objs.
func tables(objs ...obj) obj {
	return func(f *fbuf) int {
		for len(f.b)%4 != 0 {
			f.zeros(1)
		}
		pos := len(f.b)
		f.b = binary.LittleEndian.AppendUint32(f.b, uint32(len(objs)))
		f.zeros(4 * len(objs))
		for i, o := range objs {
			f.patch(pos+4+4*i, o(f))
		}
		return pos
	}
}

func str(s string) obj {
	return func(f *fbuf) int {
		for len(f.b)%4 != 0 {
			f.zeros(1)
		}
		pos := len(f.b)
		f.b = binary.LittleEndian.AppendUint32(f.b, uint32(len(s)))
		f.b = append(f.b, s...)
		f.b = append(f.b, 0)
		return pos
	}
}

// TFLite schema values used below.
const (
	tflFloat32 = 0
	tflFloat16 = 1
	tflInt32   = 2
	tflUint8   = 3
	tflInt8    = 9

	opAdd        = 0
	opDequantize = 6
	opQuantize   = 114
)

type tensorSpec struct {
	name  string
	typ   uint8
	shape []int32
	// scale and zero are per-tensor quantisation; scale 0 writes none.
	scale float32
	zero  int64
}

type opSpec struct {
	code, version int32
	inputs        []int32
	outputs       []int32
}

// tinyModel is a one-subgraph model: tensors (none with constant data), operators and
// the subgraph's inputs and outputs by tensor index.
func tinyModel(tensors []tensorSpec, ops []opSpec, inputs, outputs []int32) []byte {
	var tensorObjs []obj
	for _, t := range tensors {
		var quant *field
		if t.scale != 0 {
			quant = ref(table(nil, nil,
				ref(vector(4, uint64(math.Float32bits(t.scale)))),
				ref(vector(8, uint64(t.zero)))))
		}
		tensorObjs = append(tensorObjs, table(ref(ints(t.shape...)), u8(t.typ), u32(0), ref(str(t.name)), quant))
	}
	var codes, opObjs []obj
	for i, op := range ops {
		codes = append(codes, table(u8(uint8(op.code)), nil, i32(op.version)))
		opObjs = append(opObjs, table(u32(uint32(i)), ref(ints(op.inputs...)), ref(ints(op.outputs...))))
	}
	subgraph := table(ref(tables(tensorObjs...)), ref(ints(inputs...)), ref(ints(outputs...)), ref(tables(opObjs...)), ref(str("main")))
	model := table(u32(3), ref(tables(codes...)), ref(tables(subgraph)), ref(str("vigil test model")), ref(tables(table())))
	f := &fbuf{b: make([]byte, 8)}
	copy(f.b[4:], "TFL3")
	f.patch(0, model(f))
	return f.b
}

// writeModel writes a model into the test's temporary directory.
func writeModel(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".tflite")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
