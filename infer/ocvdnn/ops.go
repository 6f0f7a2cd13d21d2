package ocvdnn

// OpenCV 4.6's ONNX importer (modules/dnn/src/onnx/onnx_importer.cpp, 4.6.0) maps node
// types to its layers through two dispatch tables, buildDispatchMap_ONNX_AI and
// buildDispatchMap_COM_MICROSOFT. A node type missing from them is handed to
// parseCustomLayer, which throws unless a layer of that exact name is registered
// (through gocv, that exception aborts the process). Check lets only the types below
// through, so an unsupported model gets an error naming its operators before OpenCV
// sees it.
//
// The lists are the 4.6.0 source's dispatch keys; every one of them was checked to be a
// string in the onnx_importer.cpp.o that Debian 12's libopencv-dev 4.6.0 ships (in
// libopencv_dnn.a), with its parse function among that object's symbols, while the
// types later releases added (Einsum, LayerNormalization, Tile, Where, TopK, Range,
// GatherElements, ScatterND, If, Loop, ...) are not in it.

// onnxOps is the default (ai.onnx) domain's table, by the importer's parse function.
var onnxOps = setOf(
	// parseArg, parseMaxUnpool, parseMaxPool, parseAveragePool, parseGlobalPool
	"ArgMax", "ArgMin", "MaxUnpool", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
	// parseReduce
	"ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceProd",
	"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
	// parseSlice, parseSplit, parseBias, parsePow, parseMinMax, parseNeg, parseConstant
	"Slice", "Split", "Add", "Sum", "Sub", "Pow", "Min", "Max", "Neg", "Constant",
	// parseLSTM, parseGRU, parseImageScaler, parseClip, activations
	"LSTM", "GRU", "ImageScaler", "Clip", "LeakyRelu", "Relu", "Elu", "Tanh", "Abs", "PRelu",
	// parseCompare
	"Equal", "Greater", "Less",
	// normalisation, dense, convolution
	"LRN", "InstanceNormalization", "BatchNormalization", "Gemm", "MatMul", "Mul", "Div",
	"Conv", "ConvTranspose",
	// shape manipulation
	"Transpose", "Squeeze", "Flatten", "Unsqueeze", "Expand", "Reshape", "Pad", "Shape", "Cast",
	"ConstantFill", "ConstantOfShape", "Gather", "Concat", "Resize", "Upsample",
	"SpaceToDepth", "DepthToSpace",
	// parseSoftMax (both spellings), parseDetectionOutput, parseCumSum
	"SoftMax", "LogSoftmax", "DetectionOutput", "CumSum",
	// parseSimpleLayers
	"Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Ceil", "Celu", "Cos", "Cosh", "Dropout",
	"Erf", "Exp", "Floor", "HardSigmoid", "HardSwish", "Identity", "Log", "Round", "Reciprocal",
	"Selu", "Sign", "Sigmoid", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Shrink", "Sqrt",
	"Tan", "ThresholdedRelu",
	// opset 10+ quantisation: parseQuantDequant, parseQConv, parseQMatMul
	"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
)

// microsoftOps is the com.microsoft domain's table (onnxruntime's quantised ops).
var microsoftOps = setOf(
	"QLinearAdd", "QLinearMul", "QLinearAveragePool", "QLinearGlobalAveragePool",
	"QLinearLeakyRelu", "QLinearSigmoid", "QLinearConcat",
)

func setOf(names ...string) map[string]bool {
	s := make(map[string]bool, len(names))
	for _, n := range names {
		s[n] = true
	}
	return s
}

// supported reports whether OpenCV 4.6's ONNX importer has a parser for the node type.
func supported(domain, op string) bool {
	switch domain {
	case "", "ai.onnx":
		return onnxOps[op]
	case "com.microsoft":
		return microsoftOps[op]
	}
	return false
}
