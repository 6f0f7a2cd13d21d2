package modelfile

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/vigil-edge/vigil/infer"
)

// ONNX field numbers, from onnx/onnx.proto. Only the fields Vigil reads are listed;
// everything else (weights included) is skipped without being decoded.
const (
	modelIRVersion       = 1 // int64
	modelProducerName    = 2 // string
	modelProducerVersion = 3 // string
	modelGraph           = 7 // GraphProto
	modelOpsetImport     = 8 // repeated OperatorSetIdProto

	opsetDomain  = 1 // string
	opsetVersion = 2 // int64

	graphNode              = 1  // repeated NodeProto
	graphInitializer       = 5  // repeated TensorProto
	graphInput             = 11 // repeated ValueInfoProto
	graphOutput            = 12 // repeated ValueInfoProto
	graphSparseInitializer = 15 // repeated SparseTensorProto

	nodeOpType    = 4 // string
	nodeAttribute = 5 // repeated AttributeProto
	nodeDomain    = 7 // string

	attrGraph  = 6  // GraphProto
	attrGraphs = 11 // repeated GraphProto

	tensorName         = 8  // string
	tensorDataLocation = 14 // enum DataLocation: 0 DEFAULT, 1 EXTERNAL

	sparseValues = 1 // TensorProto

	valueName = 1 // string
	valueType = 2 // TypeProto

	typeTensor       = 1 // TypeProto.Tensor
	typeSequence     = 4
	typeMap          = 5
	typeSparseTensor = 8 // TypeProto.SparseTensor: same fields as Tensor
	typeOptional     = 9

	tensorTypeElem  = 1 // int32, TensorProto.DataType
	tensorTypeShape = 2 // TensorShapeProto

	shapeDim = 1 // repeated Dimension

	dimValue = 1 // int64
	dimParam = 2 // string
)

// maxGraphDepth bounds the nesting of subgraphs (If/Loop/Scan bodies) that are walked.
const maxGraphDepth = 32

// onnxTypes names TensorProto.DataType values.
var onnxTypes = []infer.DataType{
	0: "undefined", 1: infer.Float32, 2: infer.Uint8, 3: infer.Int8, 4: "uint16", 5: "int16",
	6: "int32", 7: "int64", 8: "string", 9: "bool", 10: infer.Float16, 11: "float64",
	12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128", 16: "bfloat16",
	17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz",
	21: "uint4", 22: "int4", 23: "float4e2m1", 24: "float8e8m0", 25: "uint2", 26: "int2",
}

func onnxType(t uint64) infer.DataType {
	if t < uint64(len(onnxTypes)) {
		return onnxTypes[t]
	}
	return infer.DataType(fmt.Sprintf("onnx_type_%d", t))
}

// field is one decoded protobuf field: a varint's value or a length-delimited payload.
type field struct {
	num protowire.Number
	typ protowire.Type
	val uint64
	buf []byte
}

// fields calls fn for each field of the message b. Fixed-size and group fields are
// skipped (none of the fields read here has those types).
func fields(b []byte, fn func(f field) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		f := field{num: num, typ: typ}
		switch typ {
		case protowire.VarintType:
			f.val, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			f.buf, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.VarintType && typ != protowire.BytesType {
			continue
		}
		if err := fn(f); err != nil {
			return err
		}
	}
	return nil
}

// want checks a known field's wire type, so bytes that merely look like protobuf are
// not read as a model.
func (f field) want(typ protowire.Type, name string) error {
	if f.typ != typ {
		return fmt.Errorf("%s (field %d) has wire type %d, want %d", name, f.num, f.typ, typ)
	}
	return nil
}

type onnxParser struct {
	model        *Model
	ops          opCounter
	initializers map[string]bool
}

func parseONNX(data []byte) (*Model, error) {
	p := &onnxParser{model: &Model{Format: ONNX}, initializers: map[string]bool{}}
	m := p.model
	var graph []byte
	haveIR := false
	err := fields(data, func(f field) error {
		switch f.num {
		case modelIRVersion:
			haveIR = true
			m.IRVersion = int64(f.val)
			return f.want(protowire.VarintType, "ModelProto.ir_version")
		case modelProducerName:
			m.Producer = string(f.buf)
			return f.want(protowire.BytesType, "ModelProto.producer_name")
		case modelProducerVersion:
			m.ProducerVersion = string(f.buf)
			return f.want(protowire.BytesType, "ModelProto.producer_version")
		case modelGraph:
			graph = f.buf
			return f.want(protowire.BytesType, "ModelProto.graph")
		case modelOpsetImport:
			if err := f.want(protowire.BytesType, "ModelProto.opset_import"); err != nil {
				return err
			}
			o, err := parseOpset(f.buf)
			if err != nil {
				return fmt.Errorf("opset_import: %w", err)
			}
			m.Opsets = append(m.Opsets, o)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !haveIR || m.IRVersion <= 0 {
		return nil, errors.New("no IR version (ModelProto.ir_version)")
	}
	if graph == nil {
		return nil, errors.New("no graph (ModelProto.graph)")
	}
	var inputs []infer.TensorInfo
	if err := p.graph(graph, 0, &inputs); err != nil {
		return nil, fmt.Errorf("graph: %w", err)
	}
	// Old exporters list every weight as a graph input too; those are not inputs a
	// caller feeds.
	m.Inputs = []infer.TensorInfo{}
	for _, in := range inputs {
		if !p.initializers[in.Name] {
			m.Inputs = append(m.Inputs, in)
		}
	}
	if m.Outputs == nil {
		m.Outputs = []infer.TensorInfo{}
	}
	m.Operators = p.ops.sorted()
	return m, nil
}

func parseOpset(b []byte) (Opset, error) {
	var o Opset
	err := fields(b, func(f field) error {
		switch f.num {
		case opsetDomain:
			o.Domain = string(f.buf)
			return f.want(protowire.BytesType, "OperatorSetIdProto.domain")
		case opsetVersion:
			o.Version = int64(f.val)
			return f.want(protowire.VarintType, "OperatorSetIdProto.version")
		}
		return nil
	})
	if o.Domain == "ai.onnx" {
		o.Domain = ""
	}
	return o, err
}

// graph walks a GraphProto. The main graph (depth 0) fills the model's inputs and
// outputs; every graph, nested ones included, contributes operators and initializers.
func (p *onnxParser) graph(b []byte, depth int, inputs *[]infer.TensorInfo) error {
	if depth > maxGraphDepth {
		return fmt.Errorf("subgraphs nested deeper than %d", maxGraphDepth)
	}
	main := depth == 0
	return fields(b, func(f field) error {
		switch f.num {
		case graphNode:
			if err := f.want(protowire.BytesType, "GraphProto.node"); err != nil {
				return err
			}
			return p.node(f.buf, depth)
		case graphInitializer:
			if err := f.want(protowire.BytesType, "GraphProto.initializer"); err != nil {
				return err
			}
			return p.initializer(f.buf, main)
		case graphSparseInitializer:
			if err := f.want(protowire.BytesType, "GraphProto.sparse_initializer"); err != nil {
				return err
			}
			return fields(f.buf, func(g field) error {
				if g.num != sparseValues {
					return nil
				}
				if err := g.want(protowire.BytesType, "SparseTensorProto.values"); err != nil {
					return err
				}
				return p.initializer(g.buf, main)
			})
		case graphInput, graphOutput:
			if err := f.want(protowire.BytesType, "GraphProto.input/output"); err != nil {
				return err
			}
			if !main {
				return nil
			}
			t, err := valueInfo(f.buf)
			if err != nil {
				return fmt.Errorf("value %q: %w", t.Name, err)
			}
			if f.num == graphInput {
				*inputs = append(*inputs, t)
			} else {
				p.model.Outputs = append(p.model.Outputs, t)
			}
		}
		return nil
	})
}

func (p *onnxParser) node(b []byte, depth int) error {
	var op Operator
	err := fields(b, func(f field) error {
		switch f.num {
		case nodeOpType:
			op.Type = string(f.buf)
			return f.want(protowire.BytesType, "NodeProto.op_type")
		case nodeDomain:
			op.Domain = string(f.buf)
			return f.want(protowire.BytesType, "NodeProto.domain")
		case nodeAttribute:
			if err := f.want(protowire.BytesType, "NodeProto.attribute"); err != nil {
				return err
			}
			// If, Loop and Scan carry their bodies as graph attributes.
			return fields(f.buf, func(a field) error {
				if a.num != attrGraph && a.num != attrGraphs {
					return nil
				}
				if err := a.want(protowire.BytesType, "AttributeProto.g"); err != nil {
					return err
				}
				return p.graph(a.buf, depth+1, nil)
			})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("node %s: %w", op.Type, err)
	}
	if op.Type == "" {
		return errors.New("node without op_type")
	}
	if op.Domain == "ai.onnx" {
		op.Domain = ""
	}
	p.ops.add(op, 1)
	return nil
}

func (p *onnxParser) initializer(b []byte, main bool) error {
	var name string
	external := false
	err := fields(b, func(f field) error {
		switch f.num {
		case tensorName:
			name = string(f.buf)
			return f.want(protowire.BytesType, "TensorProto.name")
		case tensorDataLocation:
			external = f.val == 1
			return f.want(protowire.VarintType, "TensorProto.data_location")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("initializer %q: %w", name, err)
	}
	if external {
		p.model.ExternalTensors++
	}
	if main {
		p.initializers[name] = true
	}
	return nil
}

// valueInfo reads a ValueInfoProto: the name, element type and shape of a graph input
// or output.
func valueInfo(b []byte) (infer.TensorInfo, error) {
	var t infer.TensorInfo
	err := fields(b, func(f field) error {
		switch f.num {
		case valueName:
			t.Name = string(f.buf)
			return f.want(protowire.BytesType, "ValueInfoProto.name")
		case valueType:
			if err := f.want(protowire.BytesType, "ValueInfoProto.type"); err != nil {
				return err
			}
			return typeProto(f.buf, &t)
		}
		return nil
	})
	return t, err
}

func typeProto(b []byte, t *infer.TensorInfo) error {
	return fields(b, func(f field) error {
		switch f.num {
		case typeTensor, typeSparseTensor:
			if err := f.want(protowire.BytesType, "TypeProto.tensor_type"); err != nil {
				return err
			}
			return tensorType(f.buf, t)
		case typeSequence:
			t.Type = "sequence"
		case typeMap:
			t.Type = "map"
		case typeOptional:
			t.Type = "optional"
		}
		return nil
	})
}

func tensorType(b []byte, t *infer.TensorInfo) error {
	t.Type = onnxType(0)
	return fields(b, func(f field) error {
		switch f.num {
		case tensorTypeElem:
			t.Type = onnxType(f.val)
			return f.want(protowire.VarintType, "TypeProto.Tensor.elem_type")
		case tensorTypeShape:
			if err := f.want(protowire.BytesType, "TypeProto.Tensor.shape"); err != nil {
				return err
			}
			// A present but empty shape is a scalar: rank 0, not unknown.
			t.Shape = []int64{}
			return fields(f.buf, func(d field) error {
				if d.num != shapeDim {
					return nil
				}
				if err := d.want(protowire.BytesType, "TensorShapeProto.dim"); err != nil {
					return err
				}
				dim, err := dimension(d.buf)
				t.Shape = append(t.Shape, dim)
				return err
			})
		}
		return nil
	})
}

// dimension is a dim_value, or -1 for a symbolic (dim_param) or missing one.
func dimension(b []byte) (int64, error) {
	dim := int64(-1)
	err := fields(b, func(f field) error {
		switch f.num {
		case dimValue:
			if err := f.want(protowire.VarintType, "Dimension.dim_value"); err != nil {
				return err
			}
			dim = int64(f.val)
			if dim < 0 {
				dim = -1
			}
		case dimParam:
			dim = -1
			return f.want(protowire.BytesType, "Dimension.dim_param")
		}
		return nil
	})
	return dim, err
}
