package fleetload

import (
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/encoding/protowire"
)

// The bundle a simulated device runs: a classifier whose "scores" are the mean of each
// colour channel of a ModelSize x ModelSize input (ONNX ReduceMean), so a frame's
// dominant colour is its label. It is a real ONNX model that ONNX Runtime loads and
// runs, but costs almost nothing per session and per frame, so a thousand agents fit
// on one small machine, where the bundled YOLOX-Nano (3.7 MB, ~100 ms a frame) would
// not.
const (
	ModelSize  = 16
	BundleName = "fleet-mean-colour"
)

// Labels are the model's classes, one per input channel (RGB order).
var Labels = []string{"red", "green", "blue"}

// pb builds protobuf messages field by field (field numbers from onnx/onnx.proto).
type pb []byte

func (m pb) varint(num protowire.Number, v uint64) pb {
	return protowire.AppendVarint(protowire.AppendTag(m, num, protowire.VarintType), v)
}

func (m pb) bytes(num protowire.Number, b []byte) pb {
	return protowire.AppendBytes(protowire.AppendTag(m, num, protowire.BytesType), b)
}

func (m pb) str(num protowire.Number, s string) pb { return m.bytes(num, []byte(s)) }

// floatTensor is a ValueInfoProto: a float32 tensor of the given shape.
func floatTensor(name string, dims ...uint64) pb {
	var shape pb
	for _, d := range dims {
		shape = shape.bytes(1, pb(nil).varint(1, d)) // TensorShapeProto.dim.dim_value
	}
	tensor := pb(nil).varint(1, 1).bytes(2, shape) // elem_type FLOAT, shape
	return pb(nil).str(1, name).bytes(2, pb(nil).bytes(1, tensor))
}

// MeanColourONNX is the model file: x [1 3 S S] -> ReduceMean(axes [2 3], keepdims 0)
// -> scores [1 3], opset 13.
func MeanColourONNX() []byte {
	const attrINT, attrINTS = 2, 7
	axes := pb(nil).str(1, "axes").varint(8, 2).varint(8, 3).varint(20, attrINTS)
	keep := pb(nil).str(1, "keepdims").varint(3, 0).varint(20, attrINT)
	node := pb(nil).str(1, "x").str(2, "scores").str(3, "mean").str(4, "ReduceMean").bytes(5, axes).bytes(5, keep)
	graph := pb(nil).bytes(1, node).str(2, "mean-colour").
		bytes(11, floatTensor("x", 1, 3, ModelSize, ModelSize)).
		bytes(12, floatTensor("scores", 1, uint64(len(Labels))))
	// ir_version 7, producer, the graph, opset_import ai.onnx 13.
	opset := pb(nil).str(1, "").varint(2, 13)
	return pb(nil).varint(1, 7).str(2, "vigil-fleetload").bytes(7, graph).bytes(8, opset)
}

// manifestYAML is the bundle's model.yaml for version.
func manifestYAML(version string) string {
	return fmt.Sprintf(`name: %s
version: %s
task: classify
file: model.onnx
backend: onnxruntime
input: {width: %d, height: %d, layout: NCHW, color: RGB, resize: stretch, scale: [0.00392157, 0.00392157, 0.00392157]}
output: {decoder: classify, softmax: false, top_k: 1}
labels: [red, green, blue]
thresholds: {score: 0.2}
`, BundleName, version, ModelSize, ModelSize)
}

// WriteBundle writes the mean-colour bundle as version into dir (created), unsigned.
func WriteBundle(dir, version string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("fleet bundle: %w", err)
	}
	files := map[string][]byte{"model.onnx": MeanColourONNX(), "model.yaml": []byte(manifestYAML(version))}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return fmt.Errorf("fleet bundle: %w", err)
		}
	}
	return nil
}
