package fleetload

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/vigil-edge/vigil/internal/onnxbuild"
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

// MeanColourONNX is the model file: x [1 3 S S] -> ReduceMean(axes [2 3], keepdims 0)
// -> scores [1 3], opset 13.
func MeanColourONNX() []byte {
	const attrINT, attrINTS = 2, 7
	axes := onnxbuild.Message(nil).String(1, "axes").Varint(8, 2).Varint(8, 3).Varint(20, attrINTS)
	keep := onnxbuild.Message(nil).String(1, "keepdims").Varint(3, 0).Varint(20, attrINT)
	node := onnxbuild.Message(nil).String(1, "x").String(2, "scores").String(3, "mean").String(4, "ReduceMean").Bytes(5, axes).Bytes(5, keep)
	graph := onnxbuild.Message(nil).Bytes(1, node).String(2, "mean-colour").
		Bytes(11, onnxbuild.FloatTensor("x", 1, 3, ModelSize, ModelSize)).
		Bytes(12, onnxbuild.FloatTensor("scores", 1, uint64(len(Labels))))
	// ir_version 7, producer, the graph, opset_import ai.onnx 13.
	opset := onnxbuild.Message(nil).String(1, "").Varint(2, 13)
	return onnxbuild.Message(nil).Varint(1, 7).String(2, "vigil-fleetload").Bytes(7, graph).Bytes(8, opset)
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
