package modelfile

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vigil-edge/vigil/infer"
)

// TFLite table field indices (declaration order in tensorflow/lite/schema/schema.fbs;
// a union takes two slots, its type and its value).
const (
	modelVersion       = 0 // uint
	modelOperatorCodes = 1 // [OperatorCode]
	modelSubgraphs     = 2 // [SubGraph]
	modelDescription   = 3 // string

	opcodeDeprecatedBuiltin = 0 // byte
	opcodeCustomCode        = 1 // string
	opcodeVersion           = 2 // int = 1
	opcodeBuiltin           = 3 // BuiltinOperator (int32)

	subgraphTensors   = 0 // [Tensor]
	subgraphInputs    = 1 // [int]
	subgraphOutputs   = 2 // [int]
	subgraphOperators = 3 // [Operator]

	operatorOpcodeIndex = 0 // uint

	tensorShape          = 0 // [int]
	tflTensorType        = 1 // TensorType (byte)
	tensorNameField      = 3 // string
	tensorQuantization   = 4 // QuantizationParameters
	tensorShapeSignature = 7 // [int]

	quantScale     = 2 // [float]
	quantZeroPoint = 3 // [long]

	// builtinCustom is BuiltinOperator CUSTOM.
	builtinCustom = 32
)

// tfliteTypes names TensorType values.
var tfliteTypes = []infer.DataType{
	0: infer.Float32, 1: infer.Float16, 2: "int32", 3: infer.Uint8, 4: "int64", 5: "string",
	6: "bool", 7: "int16", 8: "complex64", 9: infer.Int8, 10: "float64", 11: "complex128",
	12: "uint64", 13: "resource", 14: "variant", 15: "uint32", 16: "uint16", 17: "int4",
	18: "bfloat16",
}

func tfliteType(t uint8) infer.DataType {
	if int(t) < len(tfliteTypes) {
		return tfliteTypes[t]
	}
	return infer.DataType(fmt.Sprintf("tflite_type_%d", t))
}

// BuiltinName is the name of a TFLite BuiltinOperator code (3 is CONV_2D).
func BuiltinName(code int32) string {
	if code >= 0 && int(code) < len(builtinNames) {
		return builtinNames[code]
	}
	return fmt.Sprintf("BUILTIN_%d", code)
}

func parseTFLite(data []byte) (*Model, error) {
	f := newFlatbuf(data)
	root, err := f.deref(0)
	if err != nil {
		return nil, fmt.Errorf("root table: %w", err)
	}
	mt, err := f.table(root)
	if err != nil {
		return nil, fmt.Errorf("root table: %w", err)
	}
	m := &Model{Format: TFLite}
	if m.SchemaVersion, err = mt.uint32(modelVersion, 0); err != nil {
		return nil, fmt.Errorf("version: %w", err)
	}
	if m.Description, err = mt.string(modelDescription); err != nil {
		return nil, fmt.Errorf("description: %w", err)
	}
	codes, err := opcodes(mt)
	if err != nil {
		return nil, err
	}
	subgraphs, err := mt.vector(modelSubgraphs, 4)
	if err != nil {
		return nil, fmt.Errorf("subgraphs: %w", err)
	}
	if subgraphs.len() == 0 {
		return nil, errors.New("no subgraphs")
	}
	m.Subgraphs = subgraphs.len()
	counts := make([]int, len(codes))
	for s := range subgraphs.len() {
		sg, err := subgraphs.table(s)
		if err != nil {
			return nil, fmt.Errorf("subgraph %d: %w", s, err)
		}
		if err := countOperators(sg, counts); err != nil {
			return nil, fmt.Errorf("subgraph %d: %w", s, err)
		}
		if s > 0 {
			continue
		}
		// Subgraph 0 is the main model.
		tensors, err := sg.vector(subgraphTensors, 4)
		if err != nil {
			return nil, fmt.Errorf("subgraph 0 tensors: %w", err)
		}
		if m.Inputs, err = ioTensors(sg, subgraphInputs, tensors); err != nil {
			return nil, fmt.Errorf("subgraph 0 inputs: %w", err)
		}
		if m.Outputs, err = ioTensors(sg, subgraphOutputs, tensors); err != nil {
			return nil, fmt.Errorf("subgraph 0 outputs: %w", err)
		}
	}
	var ops opCounter
	for i, n := range counts {
		if n > 0 {
			ops.add(codes[i], n)
		}
	}
	m.Operators = ops.sorted()
	return m, nil
}

// opcodes reads the model's operator codes as Operators (without counts).
func opcodes(mt fbTable) ([]Operator, error) {
	vec, err := mt.vector(modelOperatorCodes, 4)
	if err != nil {
		return nil, fmt.Errorf("operator codes: %w", err)
	}
	codes := make([]Operator, vec.len())
	for i := range codes {
		t, err := vec.table(i)
		if err != nil {
			return nil, fmt.Errorf("operator code %d: %w", i, err)
		}
		dep, err1 := t.uint8(opcodeDeprecatedBuiltin, 0)
		builtin, err2 := t.int32(opcodeBuiltin, 0)
		version, err3 := t.int32(opcodeVersion, 1)
		custom, err4 := t.string(opcodeCustomCode)
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			return nil, fmt.Errorf("operator code %d: %w", i, err)
		}
		// Schema 3a: files from before it have only the byte-sized
		// deprecated_builtin_code (builtin_code reads as its default 0); newer files
		// put codes above 127 only in builtin_code. The real code is the larger one.
		code := max(int32(int8(dep)), builtin)
		op := Operator{Type: BuiltinName(code), Version: version}
		if code == builtinCustom {
			op.Type, op.Custom = custom, true
			if op.Type == "" {
				op.Type = "CUSTOM"
			}
		}
		codes[i] = op
	}
	return codes, nil
}

func countOperators(sg fbTable, counts []int) error {
	ops, err := sg.vector(subgraphOperators, 4)
	if err != nil {
		return fmt.Errorf("operators: %w", err)
	}
	for j := range ops.len() {
		op, err := ops.table(j)
		if err != nil {
			return fmt.Errorf("operator %d: %w", j, err)
		}
		idx, err := op.uint32(operatorOpcodeIndex, 0)
		if err != nil {
			return fmt.Errorf("operator %d: %w", j, err)
		}
		if uint64(idx) >= uint64(len(counts)) {
			return fmt.Errorf("operator %d: opcode index %d, the model has %d operator codes", j, idx, len(counts))
		}
		counts[idx]++
	}
	return nil
}

// ioTensors describes the tensors a subgraph's inputs or outputs field lists.
func ioTensors(sg fbTable, field int, tensors fbVector) ([]infer.TensorInfo, error) {
	idx, err := sg.vector(field, 4)
	if err != nil {
		return nil, err
	}
	infos := make([]infer.TensorInfo, 0, idx.len())
	for j := range idx.len() {
		i := idx.int32(j)
		if i < 0 || int(i) >= tensors.len() {
			return nil, fmt.Errorf("tensor index %d, the subgraph has %d tensors", i, tensors.len())
		}
		t, err := tensors.table(int(i))
		if err != nil {
			return nil, fmt.Errorf("tensor %d: %w", i, err)
		}
		info, err := tensorInfo(t)
		if err != nil {
			return nil, fmt.Errorf("tensor %d (%s): %w", i, info.Name, err)
		}
		infos = append(infos, info)
	}
	return infos, nil
}

func tensorInfo(t fbTable) (infer.TensorInfo, error) {
	var info infer.TensorInfo
	var err error
	if info.Name, err = t.string(tensorNameField); err != nil {
		return info, err
	}
	typ, err := t.uint8(tflTensorType, 0)
	if err != nil {
		return info, err
	}
	info.Type = tfliteType(typ)
	shape, err := t.vector(tensorShape, 4)
	if err != nil {
		return info, fmt.Errorf("shape: %w", err)
	}
	// shape_signature, when present, marks dynamic dimensions with -1 (shape holds
	// the size the converter resolved them to).
	sig, err := t.vector(tensorShapeSignature, 4)
	if err != nil {
		return info, fmt.Errorf("shape_signature: %w", err)
	}
	if sig.len() > 0 {
		shape = sig
	}
	info.Shape = make([]int64, shape.len())
	for k := range info.Shape {
		info.Shape[k] = max(int64(shape.int32(k)), -1)
	}
	q, ok, err := t.subTable(tensorQuantization)
	if err != nil {
		return info, fmt.Errorf("quantization: %w", err)
	}
	if ok {
		scale, err1 := q.vector(quantScale, 4)
		zero, err2 := q.vector(quantZeroPoint, 8)
		if err := errors.Join(err1, err2); err != nil {
			return info, fmt.Errorf("quantization: %w", err)
		}
		// One scale for the whole tensor; per-channel parameters (several scales)
		// do not fit TensorInfo.Quant and are left out.
		if scale.len() == 1 && zero.len() <= 1 {
			info.Quant = &infer.Quantization{Scale: scale.float32(0)}
			if zero.len() == 1 {
				info.Quant.ZeroPoint = zero.int64(0)
			}
		}
	}
	return info, nil
}

// builtinNames is the BuiltinOperator enum of tensorflow/lite/schema/schema.fbs
// (tensorflow/compiler/mlir/lite/schema/schema.fbs since TF 2.17), index = code.
var builtinNames = strings.Fields(`
ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE
EMBEDDING_LOOKUP FLOOR FULLY_CONNECTED HASHTABLE_LOOKUP L2_NORMALIZATION L2_POOL_2D
LOCAL_RESPONSE_NORMALIZATION LOGISTIC LSH_PROJECTION LSTM MAX_POOL_2D MUL RELU
RELU_N1_TO_1 RELU6 RESHAPE RESIZE_BILINEAR RNN SOFTMAX SPACE_TO_DEPTH SVDF TANH
CONCAT_EMBEDDINGS SKIP_GRAM CALL CUSTOM EMBEDDING_LOOKUP_SPARSE PAD
UNIDIRECTIONAL_SEQUENCE_RNN GATHER BATCH_TO_SPACE_ND SPACE_TO_BATCH_ND TRANSPOSE MEAN
SUB DIV SQUEEZE UNIDIRECTIONAL_SEQUENCE_LSTM STRIDED_SLICE BIDIRECTIONAL_SEQUENCE_RNN
EXP TOPK_V2 SPLIT LOG_SOFTMAX DELEGATE BIDIRECTIONAL_SEQUENCE_LSTM CAST PRELU MAXIMUM
ARG_MAX MINIMUM LESS NEG PADV2 GREATER GREATER_EQUAL LESS_EQUAL SELECT SLICE SIN
TRANSPOSE_CONV SPARSE_TO_DENSE TILE EXPAND_DIMS EQUAL NOT_EQUAL LOG SUM SQRT RSQRT
SHAPE POW ARG_MIN FAKE_QUANT REDUCE_PROD REDUCE_MAX PACK LOGICAL_OR ONE_HOT LOGICAL_AND
LOGICAL_NOT UNPACK REDUCE_MIN FLOOR_DIV REDUCE_ANY SQUARE ZEROS_LIKE FILL FLOOR_MOD
RANGE RESIZE_NEAREST_NEIGHBOR LEAKY_RELU SQUARED_DIFFERENCE MIRROR_PAD ABS SPLIT_V
UNIQUE CEIL REVERSE_V2 ADD_N GATHER_ND COS WHERE RANK ELU REVERSE_SEQUENCE MATRIX_DIAG
QUANTIZE MATRIX_SET_DIAG ROUND HARD_SWISH IF WHILE NON_MAX_SUPPRESSION_V4
NON_MAX_SUPPRESSION_V5 SCATTER_ND SELECT_V2 DENSIFY SEGMENT_SUM BATCH_MATMUL
PLACEHOLDER_FOR_GREATER_OP_CODES CUMSUM CALL_ONCE BROADCAST_TO RFFT2D CONV_3D IMAG REAL
COMPLEX_ABS HASHTABLE HASHTABLE_FIND HASHTABLE_IMPORT HASHTABLE_SIZE REDUCE_ALL
CONV_3D_TRANSPOSE VAR_HANDLE READ_VARIABLE ASSIGN_VARIABLE BROADCAST_ARGS
RANDOM_STANDARD_NORMAL BUCKETIZE RANDOM_UNIFORM MULTINOMIAL GELU DYNAMIC_UPDATE_SLICE
RELU_0_TO_1 UNSORTED_SEGMENT_PROD UNSORTED_SEGMENT_MAX UNSORTED_SEGMENT_SUM ATAN2
UNSORTED_SEGMENT_MIN SIGN BITCAST BITWISE_XOR RIGHT_SHIFT STABLEHLO_LOGISTIC
STABLEHLO_ADD STABLEHLO_DIVIDE STABLEHLO_MULTIPLY STABLEHLO_MAXIMUM STABLEHLO_RESHAPE
STABLEHLO_CLAMP STABLEHLO_CONCATENATE STABLEHLO_BROADCAST_IN_DIM STABLEHLO_CONVOLUTION
STABLEHLO_SLICE STABLEHLO_CUSTOM_CALL STABLEHLO_REDUCE STABLEHLO_ABS STABLEHLO_AND
STABLEHLO_COSINE STABLEHLO_EXPONENTIAL STABLEHLO_FLOOR STABLEHLO_LOG STABLEHLO_MINIMUM
STABLEHLO_NEGATE STABLEHLO_OR STABLEHLO_POWER STABLEHLO_REMAINDER STABLEHLO_RSQRT
STABLEHLO_SELECT STABLEHLO_SUBTRACT STABLEHLO_TANH STABLEHLO_SCATTER STABLEHLO_COMPARE
STABLEHLO_CONVERT STABLEHLO_DYNAMIC_SLICE STABLEHLO_DYNAMIC_UPDATE_SLICE STABLEHLO_PAD
STABLEHLO_IOTA STABLEHLO_DOT_GENERAL STABLEHLO_REDUCE_WINDOW STABLEHLO_SORT
STABLEHLO_WHILE STABLEHLO_GATHER STABLEHLO_TRANSPOSE DILATE STABLEHLO_RNG_BIT_GENERATOR
REDUCE_WINDOW STABLEHLO_COMPOSITE STABLEHLO_SHIFT_LEFT STABLEHLO_CBRT STABLEHLO_CASE
`)
