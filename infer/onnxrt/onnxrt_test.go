package onnxrt

import (
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	if _, err := b.Load(model, infer.LoadOptions{Optimization: "fastest"}); err == nil || !strings.Contains(err.Error(), `optimization "fastest"`) {
		t.Errorf("bad optimization: %v", err)
	}
}

// The library installed here is ONNX Runtime's CPU-only build: listing its providers
// reads OrtApi::GetAvailableProviders by its position in the API table, so this also
// checks that position.
func TestAvailableProviders(t *testing.T) {
	b := New("")
	if err := b.Available(); err != nil {
		t.Fatalf("ONNX Runtime is required (scripts/install-deps): %v", err)
	}
	lib, got, err := b.providers()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, "CPUExecutionProvider") || lib == "" {
		t.Fatalf("library %q providers %q", lib, got)
	}
	t.Logf("%s has %v", lib, got)
	if _, err := availableProviders("/no/such/libonnxruntime.so"); err == nil || !strings.Contains(err.Error(), "not loaded") {
		t.Errorf("library not loaded: %v", err)
	}
}

// The library installed here is ONNX Runtime's CPU-only build. It lists CUDA and
// TensorRT (their bridges are built in) but has not their provider libraries, and it
// has no OpenVINO at all: either way asking for one is an error naming the device, the
// provider and what the library lists. (ONNX Runtime also logs the failed load.)
func TestDevices(t *testing.T) {
	b := New("")
	if err := b.Available(); err != nil {
		t.Fatalf("ONNX Runtime is required (scripts/install-deps): %v", err)
	}
	for device, want := range map[string][]string{
		"CUDA":         {`device "CUDA"`, "CUDAExecutionProvider", "CPUExecutionProvider", "could not add it", "libonnxruntime_providers_cuda.so"},
		"gpu":          {`device "gpu"`, "CUDAExecutionProvider", "CPUExecutionProvider", "libonnxruntime_providers_cuda.so"},
		"TensorRT":     {`device "TensorRT"`, "TensorrtExecutionProvider", "CPUExecutionProvider", "libonnxruntime_providers_tensorrt.so"},
		"OpenVINO":     {`device "OpenVINO"`, "OpenVINOExecutionProvider", "not built with", "CPUExecutionProvider", "runtimes.onnxruntime"},
		"OpenVINO:GPU": {`device "OpenVINO:GPU"`, "OpenVINOExecutionProvider", "not built with", "CPUExecutionProvider"},
		"OpenVINO:":    {`device "OpenVINO:"`, "after the colon"},
		"CUDA:1":       {`device "CUDA:1"`, "OpenVINO:<device>"},
		"FPGA":         {`device "FPGA"`, "CUDA (or GPU), TensorRT, OpenVINO"},
	} {
		_, err := b.Load(model, infer.LoadOptions{Device: device})
		for _, w := range want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("device %q: error %v, want it to contain %q", device, err, w)
			}
		}
	}
	for _, device := range []string{"", "CPU", "cpu"} {
		e, err := b.Load(model, infer.LoadOptions{Device: device, Threads: 1})
		if err != nil {
			t.Fatalf("device %q: %v", device, err)
		}
		e.Close()
	}
	// The provider options are built as ONNX Runtime expects them.
	p, err := parseDevice("OpenVINO:gpu.1")
	if err != nil || p.options["device_type"] != "GPU.1" {
		t.Errorf("OpenVINO:gpu.1 -> %+v, %v", p, err)
	}
}

// Every optimisation level gives the same model: the same outputs within float noise.
func TestOptimizationLevels(t *testing.T) {
	b := New("")
	if err := b.Available(); err != nil {
		t.Fatalf("ONNX Runtime is required (scripts/install-deps): %v", err)
	}
	var ref []float32
	for _, level := range []string{"all", "", "extended", "basic", "disabled", "Basic"} {
		e, err := b.Load(model, infer.LoadOptions{Threads: 1, Optimization: level})
		if err != nil {
			t.Fatalf("optimization %q: %v", level, err)
		}
		fillGradient(e.Input(0))
		if err := e.Run(); err != nil {
			t.Fatalf("optimization %q: %v", level, err)
		}
		out := slices.Clone(e.Output(0))
		e.Close()
		if ref == nil {
			ref = out
			continue
		}
		for i := range out {
			if d := math.Abs(float64(out[i] - ref[i])); d > 1e-2*(1+math.Abs(float64(ref[i]))) {
				t.Fatalf("optimization %q: output %d is %v, %v with all", level, i, out[i], ref[i])
			}
		}
	}
}

// fillGradient fills an input with a repeatable pattern that is not flat, so the
// outputs depend on every layer.
func fillGradient(buf []float32) {
	for i := range buf {
		buf[i] = float32((i * 7) % 255)
	}
}

func TestClose(t *testing.T) {
	b := New("")
	if err := b.Available(); err != nil {
		t.Fatalf("ONNX Runtime is required (scripts/install-deps): %v", err)
	}
	e, err := b.Load(model, infer.LoadOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err == nil {
		t.Error("second Close returned nil")
	}
	if err := e.Run(); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Errorf("Run after Close: %v", err)
	}
}

// Run on the engine's own buffers allocates nothing once warm.
func TestRunAllocs(t *testing.T) {
	b := New("")
	if err := b.Available(); err != nil {
		t.Fatalf("ONNX Runtime is required (scripts/install-deps): %v", err)
	}
	e, err := b.Load(model, infer.LoadOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	fillGradient(e.Input(0))
	if err := e.Run(); err != nil {
		t.Fatal(err)
	}
	var runErr error
	allocs := testing.AllocsPerRun(5, func() {
		if err := e.Run(); err != nil {
			runErr = err
		}
	})
	if runErr != nil {
		t.Fatal(runErr)
	}
	if allocs != 0 {
		t.Errorf("Run allocates %v times", allocs)
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
