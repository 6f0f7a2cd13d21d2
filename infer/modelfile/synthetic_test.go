package modelfile

import (
	"encoding/binary"
	"math"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/vigil-edge/vigil/infer"
)

// Small models written field by field, for what the real files do not have.

// pb is a protobuf message under construction.
type pb []byte

func (m pb) varint(num protowire.Number, v uint64) pb {
	m = protowire.AppendTag(m, num, protowire.VarintType)
	return protowire.AppendVarint(m, v)
}

func (m pb) bytes(num protowire.Number, b []byte) pb {
	m = protowire.AppendTag(m, num, protowire.BytesType)
	return protowire.AppendBytes(m, b)
}

func (m pb) str(num protowire.Number, s string) pb { return m.bytes(num, []byte(s)) }

// tensorValue is a ValueInfoProto for a tensor; dims are ints (dim_value) or strings
// (dim_param).
func tensorValue(name string, elem uint64, dims ...any) pb {
	var shape pb
	for _, d := range dims {
		switch d := d.(type) {
		case int:
			shape = shape.bytes(shapeDim, pb(nil).varint(dimValue, uint64(int64(d))))
		case string:
			shape = shape.bytes(shapeDim, pb(nil).str(dimParam, d))
		}
	}
	tt := pb(nil).varint(tensorTypeElem, elem).bytes(tensorTypeShape, shape)
	return pb(nil).str(valueName, name).bytes(valueType, pb(nil).bytes(typeTensor, tt))
}

func node(domain, op string, attrs ...pb) pb {
	n := pb(nil).str(1, "x").str(nodeOpType, op)
	if domain != "" {
		n = n.str(nodeDomain, domain)
	}
	for _, a := range attrs {
		n = n.bytes(nodeAttribute, a)
	}
	return n
}

func TestONNXSynthetic(t *testing.T) {
	body := pb(nil).bytes(graphNode, node("", "Relu")).bytes(graphNode, node("", "Relu"))
	graph := pb(nil).
		bytes(graphNode, node("", "Conv")).
		bytes(graphNode, node("ai.onnx", "Conv")).
		bytes(graphNode, node("com.microsoft", "QLinearAdd")).
		bytes(graphNode, node("", "If", pb(nil).str(1, "then_branch").bytes(attrGraph, body))).
		str(2, "g").
		bytes(graphInitializer, pb(nil).str(tensorName, "weight").varint(2, 1)).
		bytes(graphInitializer, pb(nil).str(tensorName, "big").varint(tensorDataLocation, 1)).
		bytes(graphSparseInitializer, pb(nil).bytes(sparseValues, pb(nil).str(tensorName, "sparse"))).
		bytes(graphInput, tensorValue("pixels", 2, "batch", 224, 224, 3)).
		bytes(graphInput, tensorValue("weight", 1, 8, 3, 3, 3)).
		bytes(graphInput, tensorValue("sparse", 1, 8)).
		bytes(graphOutput, tensorValue("scores", 7, -5, 1000)).
		bytes(graphOutput, pb(nil).str(valueName, "list").bytes(valueType, pb(nil).bytes(typeSequence, nil))).
		bytes(graphOutput, tensorValue("half", 10))
	model := pb(nil).varint(modelIRVersion, 8).
		bytes(modelOpsetImport, pb(nil).str(opsetDomain, "ai.onnx").varint(opsetVersion, 17)).
		bytes(modelOpsetImport, pb(nil).str(opsetDomain, "com.microsoft").varint(opsetVersion, 1)).
		str(modelProducerName, "test").
		varint(99, 5). // unknown fields are skipped
		bytes(modelGraph, graph)
	m, err := Parse(model)
	if err != nil {
		t.Fatal(err)
	}
	if m.IRVersion != 8 || m.Opset("") != 17 || m.Opset("com.microsoft") != 1 || m.Producer != "test" || m.ExternalTensors != 1 {
		t.Errorf("header %+v", m)
	}
	// Initializers listed as graph inputs (old exporters) are weights, not inputs.
	checkIO(t, m.Inputs, "pixels uint8 [-1 224 224 3]")
	checkIO(t, m.Outputs, "scores int64 [-1 1000]", "list sequence []", "half float16 []")
	if m.Outputs[1].Shape != nil || m.Outputs[2].Shape == nil {
		t.Errorf("unknown shape must be nil, a scalar's empty: %#v", m.Outputs)
	}
	want := []Operator{{Type: "Conv", Count: 2}, {Type: "Relu", Count: 2}, {Type: "If", Count: 1}, {Domain: "com.microsoft", Type: "QLinearAdd", Count: 1}}
	if !slices.Equal(m.Operators, want) {
		t.Errorf("operators %+v, want %+v", m.Operators, want)
	}

	for name, tc := range map[string]struct {
		data pb
		want string
	}{
		"no graph":        {pb(nil).varint(modelIRVersion, 7), "no graph"},
		"graph as varint": {pb(nil).varint(modelIRVersion, 7).varint(modelGraph, 1), "ModelProto.graph (field 7) has wire type 0"},
		"node without op": {pb(nil).varint(modelIRVersion, 7).bytes(modelGraph, pb(nil).bytes(graphNode, pb(nil).str(1, "x"))), "node without op_type"},
		"deep subgraphs":  {pb(nil).varint(modelIRVersion, 7).bytes(modelGraph, nested(40)), "nested deeper than 32"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse(tc.data); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// nested is a graph whose one node holds a graph attribute, depth levels deep.
func nested(depth int) pb {
	g := pb(nil).bytes(graphNode, node("", "Relu"))
	for range depth {
		g = pb(nil).bytes(graphNode, node("", "Loop", pb(nil).bytes(attrGraph, g)))
	}
	return g
}

// A flatbuffer writer for tests: tables are laid out front to back, each child after
// its parent, so every reference is a forward uint32 offset, as in real files.

type fbTableNode []any // field i = element i; nil = absent

type (
	fbU8    uint8
	fbI32   int32
	fbStr   string
	fbI32s  []int32
	fbF32s  []float32
	fbI64s  []int64
	fbTabls []fbTableNode
)

type fbWriter struct{ buf []byte }

func (w *fbWriter) u32(v uint32) { w.buf = binary.LittleEndian.AppendUint32(w.buf, v) }

func (w *fbWriter) patch(at int, target int) {
	binary.LittleEndian.PutUint32(w.buf[at:], uint32(target-at))
}

// write writes v and returns its position.
func (w *fbWriter) write(v any) int {
	pos := len(w.buf)
	switch v := v.(type) {
	case fbStr:
		w.u32(uint32(len(v)))
		w.buf = append(w.buf, v...)
		w.buf = append(w.buf, 0)
	case fbI32s:
		w.u32(uint32(len(v)))
		for _, x := range v {
			w.u32(uint32(x))
		}
	case fbF32s:
		w.u32(uint32(len(v)))
		for _, x := range v {
			w.u32(math.Float32bits(x))
		}
	case fbI64s:
		w.u32(uint32(len(v)))
		for _, x := range v {
			w.buf = binary.LittleEndian.AppendUint64(w.buf, uint64(x))
		}
	case fbTabls:
		w.u32(uint32(len(v)))
		slots := make([]int, len(v))
		for i := range v {
			slots[i] = len(w.buf)
			w.u32(0)
		}
		for i, t := range v {
			w.patch(slots[i], w.write(t))
		}
	case fbTableNode:
		return w.table(v)
	}
	return pos
}

func (w *fbWriter) table(fields fbTableNode) int {
	// vtable: its size, the table's size, one offset per field.
	vt := len(w.buf)
	offs := make([]uint16, len(fields))
	size := 4
	for i, f := range fields {
		switch f.(type) {
		case nil:
		case fbU8:
			offs[i] = uint16(size)
			size++
		default:
			offs[i] = uint16(size)
			size += 4
		}
	}
	w.buf = binary.LittleEndian.AppendUint16(w.buf, uint16(4+2*len(fields)))
	w.buf = binary.LittleEndian.AppendUint16(w.buf, uint16(size))
	for _, o := range offs {
		w.buf = binary.LittleEndian.AppendUint16(w.buf, o)
	}
	pos := len(w.buf)
	w.u32(uint32(pos - vt)) // soffset: vtable = pos - soffset
	var refs []int
	for _, f := range fields {
		switch f := f.(type) {
		case nil:
		case fbU8:
			w.buf = append(w.buf, byte(f))
		case fbI32:
			w.u32(uint32(f))
		default:
			refs = append(refs, len(w.buf))
			w.u32(0)
		}
	}
	i := 0
	for _, f := range fields {
		switch f.(type) {
		case nil, fbU8, fbI32:
		default:
			w.patch(refs[i], w.write(f))
			i++
		}
	}
	return pos
}

func tfliteFile(model fbTableNode) []byte {
	w := &fbWriter{}
	w.u32(0)
	w.buf = append(w.buf, "TFL3"...)
	w.patch(0, w.table(model))
	return w.buf
}

func TestTFLiteSynthetic(t *testing.T) {
	tensor := func(name string, typ uint8, shape, signature fbI32s, quant any) fbTableNode {
		return fbTableNode{shape, fbU8(typ), nil, fbStr(name), quant, nil, nil, signature}
	}
	opcode := func(dep int8, custom string, version int32, builtin int32) fbTableNode {
		var c any
		if custom != "" {
			c = fbStr(custom)
		}
		return fbTableNode{fbU8(uint8(dep)), c, fbI32(version), fbI32(builtin)}
	}
	op := func(i int32) fbTableNode { return fbTableNode{fbI32(i)} }
	model := fbTableNode{
		fbI32(3),
		fbTabls{
			opcode(3, "", 5, 0),     // CONV_2D v5, old style: code only in the byte
			opcode(127, "", 1, 150), // GELU: code > 127 only in builtin_code
			opcode(32, "TFLite_Detection_PostProcess", 2, 32),
			{fbU8(0)}, // ADD, version defaults to 1
		},
		fbTabls{
			{ // subgraph 0
				fbTabls{
					tensor("image", 3, fbI32s{1, 320, 320, 3}, fbI32s{-1, 320, 320, 3},
						fbTableNode{nil, nil, fbF32s{0.0078125}, fbI64s{128}}),
					tensor("boxes", 0, fbI32s{1, 10, 4}, nil, nil),
					tensor("per-channel", 9, fbI32s{2}, nil, fbTableNode{nil, nil, fbF32s{0.1, 0.2}, fbI64s{0, 0}}),
				},
				fbI32s{0},
				fbI32s{1, 2},
				fbTabls{op(0), op(0), op(1), op(2), op(3)},
			},
			{nil, nil, nil, fbTabls{op(0)}}, // a second subgraph (e.g. a WHILE body)
		},
		fbStr("synthetic"),
	}
	m, err := Parse(tfliteFile(model))
	if err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != 3 || m.Description != "synthetic" || m.Subgraphs != 2 {
		t.Errorf("header %+v", m)
	}
	if len(m.Inputs) != 1 || m.Inputs[0].String() != "image uint8 [-1 320 320 3]" || m.Inputs[0].Quant == nil ||
		*m.Inputs[0].Quant != (infer.Quantization{Scale: 0.0078125, ZeroPoint: 128}) {
		t.Errorf("inputs %+v", m.Inputs)
	}
	if len(m.Outputs) != 2 || m.Outputs[0].String() != "boxes float32 [1 10 4]" || m.Outputs[1].Type != infer.Int8 || m.Outputs[1].Quant != nil {
		t.Errorf("outputs %+v (per-channel quantisation has no single Quant)", m.Outputs)
	}
	want := []Operator{
		{Type: "CONV_2D", Version: 5, Count: 3},
		{Type: "ADD", Version: 1, Count: 1},
		{Type: "GELU", Version: 1, Count: 1},
		{Type: "TFLite_Detection_PostProcess", Version: 2, Custom: true, Count: 1},
	}
	if !slices.Equal(m.Operators, want) {
		t.Errorf("operators %+v\nwant %+v", m.Operators, want)
	}

	bad := func(edit func(fbTableNode) fbTableNode) []byte {
		return tfliteFile(edit(slices.Clone(model)))
	}
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"no subgraphs": {bad(func(m fbTableNode) fbTableNode { m[2] = nil; return m }), "no subgraphs"},
		"bad opcode index": {bad(func(m fbTableNode) fbTableNode {
			m[2] = fbTabls{{nil, nil, nil, fbTabls{op(7)}}}
			return m
		}), "opcode index 7, the model has 4 operator codes"},
		"bad tensor index": {bad(func(m fbTableNode) fbTableNode {
			m[2] = fbTabls{{fbTabls{}, fbI32s{3}}}
			return m
		}), "tensor index 3, the subgraph has 0 tensors"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse(tc.data); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// A vector whose count claims more elements than the file holds is an error before
// anything is allocated for it.
func TestTFLiteHugeCount(t *testing.T) {
	data := tfliteFile(fbTableNode{fbI32(3), nil, fbTabls{{nil, fbI32s{0}}}})
	// Find the subgraph's inputs vector (count 1, element 0) and claim 2^31 elements.
	i := strings.LastIndex(string(data), "\x01\x00\x00\x00\x00\x00\x00\x00")
	if i < 0 {
		t.Fatal("inputs vector not found")
	}
	binary.LittleEndian.PutUint32(data[i:], 1<<31)
	allocs := testing.AllocsPerRun(10, func() {
		if _, err := Parse(data); err == nil || !strings.Contains(err.Error(), "elements of 4 bytes: offset out of range") {
			t.Fatalf("got %v", err)
		}
	})
	if allocs > 50 {
		t.Errorf("%v allocations for a tiny file", allocs)
	}
}
