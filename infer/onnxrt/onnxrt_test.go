package onnxrt

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/enginetest"
)

var (
	bundle = filepath.Join("..", "..", "assets", "models", "yolox-nano")
	model  = filepath.Join(bundle, "model.onnx")
)

func TestConformance(t *testing.T) {
	b := New("")
	if err := b.Available(); err != nil {
		t.Fatalf("ONNX Runtime is required (scripts/install-deps): %v", err)
	}
	enginetest.Run(t, b, bundle, infer.LoadOptions{Threads: 2})
}

// BenchmarkONNXRuntimeRun is the engine's Run alone, for comparison with
// BenchmarkTFLiteRun (infer/tflite) on the same network.
func BenchmarkONNXRuntimeRun(b *testing.B) {
	enginetest.BenchmarkRun(b, New(""), model, infer.LoadOptions{Threads: 1})
}

func TestLoadAndRun(t *testing.T) {
	b := New("")
	if err := b.Available(); err != nil {
		t.Fatalf("ONNX Runtime is required (scripts/install-deps): %v", err)
	}
	e, err := b.Load(model, infer.LoadOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	in, out := e.Inputs(), e.Outputs()
	if len(in) != 1 || in[0].Name != "images" || in[0].Elements() != 3*416*416 || len(out) != 1 || out[0].Elements() != 3549*85 {
		t.Fatalf("tensors %v -> %v", in, out)
	}
	inBuf, outBuf := e.Input(0), e.Output(0)
	if len(inBuf) != in[0].Elements() || len(outBuf) != out[0].Elements() {
		t.Fatalf("buffers %d and %d elements", len(inBuf), len(outBuf))
	}
	for i := range inBuf {
		inBuf[i] = 114
	}
	if err := e.Run(); err != nil {
		t.Fatal(err)
	}
	// Objectness and class scores are probabilities: a gray image gives values in [0, 1].
	for row := range 3549 {
		if obj := outBuf[row*85+4]; obj < 0 || obj > 1 {
			t.Fatalf("row %d objectness %v", row, obj)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	b := New("")
	for name, path := range map[string]string{"missing": "no/such/model.onnx", "not onnx": "onnxrt_test.go"} {
		if _, err := b.Load(path, infer.LoadOptions{}); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := b.Load(model, infer.LoadOptions{Device: "GPU"}); err == nil || !strings.Contains(err.Error(), `device "GPU"`) {
		t.Errorf("GPU device: %v", err)
	}
}

// A missing runtime library is an error naming it and the fix, never a crash. The
// environment is per process, so this runs in a child that has not loaded it.
func TestMissingLibrary(t *testing.T) {
	if os.Getenv("ONNXRT_TEST_CHILD") == "1" {
		err := New("/no/such/libonnxruntime.so.1").Available()
		if err == nil || !strings.Contains(err.Error(), "/no/such/libonnxruntime.so.1") || !strings.Contains(err.Error(), "scripts/install-deps") {
			t.Fatalf("error %v", err)
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestMissingLibrary$", "-test.v")
	cmd.Env = append(os.Environ(), "ONNXRT_TEST_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestMissingLibrary") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
