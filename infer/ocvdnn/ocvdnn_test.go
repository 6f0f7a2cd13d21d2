package ocvdnn

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/enginetest"
	"github.com/vigil-edge/vigil/infer/modelfile"
)

var (
	bundleDir = filepath.Join("..", "..", "assets", "models", "yolox-nano")
	model     = filepath.Join(bundleDir, "model.onnx")
	tflite    = filepath.Join("..", "testdata", "models", "yolox_nano_float16_quantize.tflite")
)

func TestLoadAndRun(t *testing.T) {
	b := New()
	if b.Name() != "opencv" || b.Available() != nil {
		t.Fatalf("backend %s: %v", b.Name(), b.Available())
	}
	e, err := b.Load(model, infer.LoadOptions{Device: "cpu"})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	in, out := e.Inputs(), e.Outputs()
	if len(in) != 1 || in[0].String() != "images float32 [1 3 416 416]" || len(out) != 1 || out[0].String() != "output float32 [1 3549 85]" {
		t.Fatalf("tensors %v -> %v", in, out)
	}
	inBuf, outBuf := e.Input(0), e.Output(0)
	if len(inBuf) != 3*416*416 || len(outBuf) != 3549*85 {
		t.Fatalf("buffers %d and %d elements", len(inBuf), len(outBuf))
	}
	for i := range inBuf {
		inBuf[i] = 114
	}
	for i := range outBuf {
		outBuf[i] = -1
	}
	if err := e.Run(); err != nil {
		t.Fatal(err)
	}
	// Objectness and class scores are probabilities: a gray image gives values in [0, 1]
	// (and the -1 sentinels are gone).
	for row := range 3549 {
		if obj := outBuf[row*85+4]; obj < 0 || obj > 1 {
			t.Fatalf("row %d objectness %v", row, obj)
		}
	}
	// The buffers stay the same slices across runs.
	if err := e.Run(); err != nil || &e.Input(0)[0] != &inBuf[0] || &e.Output(0)[0] != &outBuf[0] {
		t.Fatalf("second run: %v, or buffers moved", err)
	}
}

// The conformance suite every backend runs: the reference detections, Close twice,
// corrupt and truncated files, a bundle that does not fit, concurrent use.
func TestConformance(t *testing.T) {
	enginetest.Run(t, New(), bundleDir, infer.LoadOptions{})
}

// Files OpenCV would abort on are errors, and this process is still here to check them.
func TestLoadRejectsBadFiles(t *testing.T) {
	data, err := os.ReadFile(model)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	garbage := make([]byte, 4096)
	for i := range garbage {
		garbage[i] = byte(i*7 + i/13)
	}
	for name, tc := range map[string]struct{ path, want string }{
		"missing":   {filepath.Join(dir, "none.onnx"), "opencv: read model: open "},
		"truncated": {write("half.onnx", data[:len(data)/2]), "half.onnx: not a TFLite model (no TFL3 identifier) and not an ONNX model"},
		"cut short": {write("short.onnx", data[:len(data)-1]), "short.onnx: not a TFLite model"},
		"garbage":   {write("garbage.onnx", garbage), "garbage.onnx: not a TFLite model"},
		"empty":     {write("empty.onnx", nil), "empty.onnx: not a TFLite model"},
		"tflite":    {tflite, "a tflite model; the opencv backend reads ONNX models only"},
	} {
		t.Run(name, func(t *testing.T) {
			e, err := New().Load(tc.path, infer.LoadOptions{})
			if err == nil {
				e.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestLoadRejectsOtherDevices(t *testing.T) {
	for _, dev := range []string{"GPU", "OpenVINO", "NPU", "cuda"} {
		_, err := New().Load(model, infer.LoadOptions{Device: dev})
		if err == nil || !strings.Contains(err.Error(), `opencv: device "`+dev+`": this OpenCV build runs DNN models on the CPU only`) {
			t.Errorf("device %s: %v", dev, err)
		}
	}
}

func TestCheck(t *testing.T) {
	base, err := modelfile.Inspect(model)
	if err != nil {
		t.Fatal(err)
	}
	if err := Check(base); err != nil {
		t.Fatalf("yolox-nano: %v", err)
	}
	for name, tc := range map[string]struct {
		edit func(m *modelfile.Model)
		want string
	}{
		"unknown op": {func(m *modelfile.Model) {
			m.Operators = append(m.Operators, modelfile.Operator{Type: "Einsum", Count: 2}, modelfile.Operator{Domain: "com.example", Type: "Magic", Count: 1})
		}, "operator(s) that OpenCV 4.6's ONNX importer does not support: Einsum (2 nodes), com.example.Magic (1 nodes)"},
		"microsoft op": {func(m *modelfile.Model) {
			m.Operators = append(m.Operators, modelfile.Operator{Domain: "com.microsoft", Type: "QLinearAdd", Count: 1})
		}, ""},
		"uint8 input":    {func(m *modelfile.Model) { m.Inputs[0].Type = infer.Uint8 }, `input "images": has element type uint8`},
		"dynamic size":   {func(m *modelfile.Model) { m.Inputs[0].Shape = []int64{1, 3, -1, -1} }, `input "images": dimension 2 of shape [1 3 -1 -1] is dynamic`},
		"dynamic batch":  {func(m *modelfile.Model) { m.Inputs[0].Shape = []int64{-1, 3, 416, 416} }, ""},
		"unknown shape":  {func(m *modelfile.Model) { m.Outputs[0].Shape = nil }, `output "output": has no shape`},
		"external data":  {func(m *modelfile.Model) { m.ExternalTensors = 3 }, "3 tensors keep their data in external files"},
		"no outputs":     {func(m *modelfile.Model) { m.Outputs = nil }, "the model has 1 inputs and 0 outputs"},
		"unnamed output": {func(m *modelfile.Model) { m.Outputs[0].Name = "" }, `output "": has no name`},
		"zero dimension": {func(m *modelfile.Model) { m.Outputs[0].Shape = []int64{1, 0, 85} }, "dimension 1 of shape [1 0 85] is 0"},
	} {
		t.Run(name, func(t *testing.T) {
			m := *base
			m.Inputs = slices.Clone(base.Inputs)
			m.Outputs = slices.Clone(base.Outputs)
			m.Operators = slices.Clone(base.Operators)
			tc.edit(&m)
			err := Check(&m)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("rejected: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestCloseTwice(t *testing.T) {
	e, err := New().Load(model, infer.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("first close: %v", err)
	}
	if err := e.Close(); err == nil || !strings.Contains(err.Error(), "already closed") {
		t.Errorf("second close: %v", err)
	}
	if err := e.Run(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("run after close: %v", err)
	}
}

func BenchmarkOpenCVRun(b *testing.B) {
	enginetest.BenchmarkRun(b, New(), model, infer.LoadOptions{})
}
