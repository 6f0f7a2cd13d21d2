package tflite

import (
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/enginetest"
)

var (
	models       = filepath.Join("..", "testdata", "models")
	bundle       = filepath.Join(models, "yolox-nano-float16")
	float16Model = filepath.Join(models, "yolox_nano_float16_quantize.tflite")
	dynamicModel = filepath.Join(models, "yolox_nano_dynamic_range_quantize.tflite")
)

// backend returns the installed TFLite backend. scripts/install-deps installs the
// library on x86_64 only; elsewhere these tests cannot run.
func backend(t testing.TB) *Backend {
	t.Helper()
	b := New("")
	if err := b.Available(); err != nil {
		if runtime.GOARCH != "amd64" {
			t.Skipf("no TFLite C library for %s (scripts/install-deps installs TFLite 2.2.0 on amd64 only): %v", runtime.GOARCH, err)
		}
		t.Fatalf("the TFLite C library is required (run scripts/install-deps): %v", err)
	}
	return b
}

func TestConformance(t *testing.T) {
	enginetest.Run(t, backend(t), bundle, infer.LoadOptions{Threads: 2})
}

// The dynamic-range model needs CONV_2D version 5, which TFLite 2.2 lacks: loading it
// must fail with TFLite's own words naming the operator and version.
func TestUnsupportedOperatorVersion(t *testing.T) {
	b := backend(t)
	e, err := b.Load(dynamicModel, infer.LoadOptions{})
	if err == nil {
		e.Close()
		t.Fatal("the dynamic-range model loaded on TFLite 2.2")
	}
	for _, want := range []string{"'CONV_2D' version '5'", dynamicModel, "TFLite 2.2.0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q: %v", want, err)
		}
	}
}

func BenchmarkTFLiteRun(b *testing.B) {
	enginetest.BenchmarkRun(b, backend(b), float16Model, infer.LoadOptions{Threads: 1})
}

func TestTensors(t *testing.T) {
	e, err := backend(t).Load(float16Model, infer.LoadOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	in, out := e.Inputs(), e.Outputs()
	want := func(got []infer.TensorInfo, name string, shape ...int64) {
		t.Helper()
		if len(got) != 1 || got[0].Name != name || got[0].Type != infer.Float32 || !slices.Equal(got[0].Shape, shape) || got[0].Quant != nil {
			t.Errorf("tensors %v, want %s float32 %v", got, name, shape)
		}
	}
	want(in, "serving_default_images:0", 1, 3, 416, 416)
	want(out, "PartitionedCall:0", 1, 3549, 85)
	if len(e.Input(0)) != 3*416*416 || len(e.Output(0)) != 3549*85 {
		t.Fatalf("buffers of %d and %d elements", len(e.Input(0)), len(e.Output(0)))
	}
	inBuf := e.Input(0)
	for i := range inBuf {
		inBuf[i] = 114
	}
	if err := e.Run(); err != nil {
		t.Fatal(err)
	}
	// Objectness and class scores are probabilities: a grey image gives values in [0, 1].
	outBuf := e.Output(0)
	for row := range 3549 {
		for _, v := range outBuf[row*85+4 : row*85+85] {
			if v < 0 || v > 1 || v != v {
				t.Fatalf("row %d has score %v", row, v)
			}
		}
	}
	if &e.Input(0)[0] != &inBuf[0] || &e.Output(0)[0] != &outBuf[0] {
		t.Error("Input or Output returned a different buffer after Run")
	}
}

// quantised computes what TFLite's QUANTIZE writes for x, as a real value: the
// nearest step of scale from zero, clamped to the integer type's range.
func quantised(x, scale float32, zero, lo, hi int64) float32 {
	q := int64(math.Round(float64(x/scale))) + zero
	return scale * float32(min(max(q, lo), hi)-zero)
}

// Quantised inputs and outputs, checked against TFLite's own kernels: QUANTIZE reads
// the float32 input and writes the quantised output the engine dequantises;
// DEQUANTIZE reads the input the engine quantised and writes float32.
func TestQuantizedTensors(t *testing.T) {
	b := backend(t)
	xs := []float32{-70, -1, -0.26, 0, 0.24, 0.76, 10, 70}
	shape := []int32{1, int32(len(xs))}
	for _, c := range []struct {
		name   string
		typ    uint8
		scale  float32
		zero   int64
		lo, hi int64
		want   infer.DataType
		deqVer int32
	}{
		{"uint8", tflUint8, 0.5, 128, 0, 255, infer.Uint8, 1},
		{"int8", tflInt8, 0.25, -3, -128, 127, infer.Int8, 2},
	} {
		q := tensorSpec{name: "q", typ: c.typ, shape: shape, scale: c.scale, zero: c.zero}
		f := tensorSpec{name: "f", typ: tflFloat32, shape: shape}
		wantQuant := &infer.Quantization{Scale: c.scale, ZeroPoint: c.zero}
		t.Run(c.name+"-output", func(t *testing.T) {
			path := writeModel(t, "quantize", tinyModel([]tensorSpec{f, q}, []opSpec{{opQuantize, 1, []int32{0}, []int32{1}}}, []int32{0}, []int32{1}))
			e := load(t, b, path)
			if out := e.Outputs()[0]; out.Type != c.want || !reflect.DeepEqual(out.Quant, wantQuant) {
				t.Fatalf("output %v quant %+v, want %s %+v", out, out.Quant, c.want, wantQuant)
			}
			copy(e.Input(0), xs)
			if err := e.Run(); err != nil {
				t.Fatal(err)
			}
			for i, x := range xs {
				if got, want := e.Output(0)[i], quantised(x, c.scale, c.zero, c.lo, c.hi); got != want {
					t.Errorf("QUANTIZE(%v) read back as %v, want %v", x, got, want)
				}
			}
		})
		t.Run(c.name+"-input", func(t *testing.T) {
			path := writeModel(t, "dequantize", tinyModel([]tensorSpec{q, f}, []opSpec{{opDequantize, c.deqVer, []int32{0}, []int32{1}}}, []int32{0}, []int32{1}))
			e := load(t, b, path)
			if in := e.Inputs()[0]; in.Type != c.want || !reflect.DeepEqual(in.Quant, wantQuant) {
				t.Fatalf("input %v quant %+v, want %s %+v", in, in.Quant, c.want, wantQuant)
			}
			copy(e.Input(0), xs)
			if err := e.Run(); err != nil {
				t.Fatal(err)
			}
			for i, x := range xs {
				if got, want := e.Output(0)[i], quantised(x, c.scale, c.zero, c.lo, c.hi); got != want {
					t.Errorf("DEQUANTIZE(quantised %v) = %v, want %v", x, got, want)
				}
			}
		})
	}
}

// float16 values and what they are as float16: exact ones, 1/3 rounded to nearest,
// and one beyond float16's range.
var (
	halfIn   = []float32{1.5, -2.25, 65504, 1.0 / 3, 0x1p-14, 0, 1e6, -1e6}
	halfWant = []float32{1.5, -2.25, 65504, 0.333251953125, 0x1p-14, 0, float32(math.Inf(1)), float32(math.Inf(-1))}
)

func TestFloat16Tensors(t *testing.T) {
	b := backend(t)
	shape := []int32{1, int32(len(halfIn))}
	h := tensorSpec{name: "h", typ: tflFloat16, shape: shape}
	f := tensorSpec{name: "f", typ: tflFloat32, shape: shape}
	check := func(t *testing.T, e infer.Engine) {
		t.Helper()
		copy(e.Input(0), halfIn)
		if err := e.Run(); err != nil {
			t.Fatal(err)
		}
		if got := e.Output(0); !slices.Equal(got, halfWant) {
			t.Errorf("got %v, want %v", got, halfWant)
		}
	}
	t.Run("input", func(t *testing.T) {
		// TFLite's DEQUANTIZE decodes the float16 the engine wrote.
		e := load(t, b, writeModel(t, "f16in", tinyModel([]tensorSpec{h, f}, []opSpec{{opDequantize, 2, []int32{0}, []int32{1}}}, []int32{0}, []int32{1})))
		if e.Inputs()[0].Type != infer.Float16 || e.Outputs()[0].Type != infer.Float32 {
			t.Fatalf("tensors %v -> %v", e.Inputs(), e.Outputs())
		}
		check(t, e)
	})
	t.Run("input-output", func(t *testing.T) {
		// No operator: the input tensor is the output, written and read as float16.
		e := load(t, b, writeModel(t, "f16id", tinyModel([]tensorSpec{h}, nil, []int32{0}, []int32{0})))
		if e.Outputs()[0].Type != infer.Float16 {
			t.Fatalf("output %v", e.Outputs())
		}
		check(t, e)
	})
}

// A uint8 tensor without quantisation parameters holds the values themselves.
func TestUnquantizedUint8(t *testing.T) {
	u := tensorSpec{name: "u", typ: tflUint8, shape: []int32{6}}
	e := load(t, backend(t), writeModel(t, "u8", tinyModel([]tensorSpec{u}, nil, []int32{0}, []int32{0})))
	if q := e.Inputs()[0].Quant; q != nil {
		t.Fatalf("quantisation %+v for a tensor without any", q)
	}
	copy(e.Input(0), []float32{-5, 0, 1.4, 1.6, 254.6, 300})
	if err := e.Run(); err != nil {
		t.Fatal(err)
	}
	if got, want := e.Output(0), []float32{0, 0, 1, 2, 255, 255}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestLoadErrors(t *testing.T) {
	b := backend(t)
	int32Model := writeModel(t, "int32", tinyModel([]tensorSpec{{name: "ids", typ: tflInt32, shape: []int32{4}}}, nil, []int32{0}, []int32{0}))
	addV99 := writeModel(t, "add99", tinyModel([]tensorSpec{{name: "a", typ: tflFloat32, shape: []int32{2}}, {name: "b", typ: tflFloat32, shape: []int32{2}}},
		[]opSpec{{opAdd, 99, []int32{0, 0}, []int32{1}}}, []int32{0}, []int32{1}))
	notTFLite := filepath.Join(t.TempDir(), "model.tflite")
	if err := os.WriteFile(notTFLite, []byte("name: not a model\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, path string
		opts       infer.LoadOptions
		want       []string
	}{
		{"int32 tensor", int32Model, infer.LoadOptions{}, []string{int32Model, `input "ids" has element type INT32`}},
		{"unknown operator version", addV99, infer.LoadOptions{}, []string{"'ADD' version '99'", "TFLite 2.2.0"}},
		{"not tflite", notTFLite, infer.LoadOptions{}, []string{notTFLite, "not a TFLite model"}},
		{"missing", "no/such/model.tflite", infer.LoadOptions{}, []string{"no/such/model.tflite"}},
		{"negative threads", float16Model, infer.LoadOptions{Threads: -1}, []string{"threads -1"}},
		{"unknown device", float16Model, infer.LoadOptions{Device: "GPU"}, []string{`device "GPU"`, "CPU, XNNPACK, EdgeTPU"}},
		// TFLite 2.2's C library has no XNNPACK delegate.
		{"XNNPACK", float16Model, infer.LoadOptions{Device: "xnnpack"}, []string{"XNNPACK", "version 2.2.0", "use device CPU"}},
		{"EdgeTPU", float16Model, infer.LoadOptions{Device: "EdgeTPU"}, []string{"libedgetpu.so.1", "libedgetpu1-std"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, err := b.Load(c.path, c.opts)
			if err == nil {
				e.Close()
				t.Fatal("loaded without error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q: %v", w, err)
				}
			}
		})
	}
}

func TestDevices(t *testing.T) {
	b := backend(t)
	for _, d := range []string{"", "CPU", "cpu"} {
		e, err := b.Load(float16Model, infer.LoadOptions{Device: d, Threads: 1})
		if err != nil {
			t.Errorf("device %q: %v", d, err)
			continue
		}
		e.Close()
	}
}

// A missing library is an error naming it and the fix, and nothing else breaks.
func TestMissingLibrary(t *testing.T) {
	b := New("/no/such/libtensorflowlite_c.so")
	err := b.Available()
	for _, want := range []string{"/no/such/libtensorflowlite_c.so", "libtensorflowlite_c.so", "scripts/install-deps"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Available: %v, want an error containing %q", err, want)
		}
	}
	if _, lerr := b.Load(float16Model, infer.LoadOptions{}); lerr == nil || lerr.Error() != err.Error() {
		t.Errorf("Load: %v, want %v", lerr, err)
	}
	if b.Library() != "" {
		t.Errorf("Library() = %q for a backend that did not load", b.Library())
	}
	// A file that is not a TFLite library: a clear error, not a crash.
	if err := New("tflite_test.go").Available(); err == nil || !strings.Contains(err.Error(), "tflite_test.go") {
		t.Errorf("non-library: %v", err)
	}
	// A real library without the TFLite API (libm) names the first missing function.
	if err := New("libm.so.6").Available(); err == nil || !strings.Contains(err.Error(), "has no function TfLiteVersion") {
		t.Errorf("libm: %v", err)
	}
}

func TestLibrary(t *testing.T) {
	if got := backend(t).Library(); !strings.Contains(got, "libtensorflowlite_c.so") || !strings.Contains(got, "TFLite 2.2.0") {
		t.Errorf("Library() = %q", got)
	}
}

func load(t *testing.T, b *Backend, path string) infer.Engine {
	t.Helper()
	e, err := b.Load(path, infer.LoadOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// The EdgeTPU device with a stand-in libedgetpu (testdata/fake_edgetpu.c), built here
// with the C compiler cgo uses: the backend finds the device, hands its delegate to
// the interpreter, runs, and frees the delegate on Close. No Edge TPU is attached to
// a test machine; the real library's absence is TestLoadErrors/EdgeTPU.
func TestEdgeTPUDelegate(t *testing.T) {
	b := backend(t)
	dir := t.TempDir()
	lib := filepath.Join(dir, "libedgetpu.so.1")
	cc := strings.Fields(goEnv(t, "CC"))
	if len(cc) == 0 {
		cc = []string{"gcc"}
	}
	cmd := exec.Command(cc[0], append(cc[1:], "-shared", "-fPIC", "-o", lib, filepath.Join("testdata", "fake_edgetpu.c"))...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the fake libedgetpu: %v\n%s", err, out)
	}
	b.edgetpu = []string{lib}
	logPath := filepath.Join(dir, "calls.log")
	t.Setenv("FAKE_EDGETPU_LOG", logPath)
	model := writeModel(t, "dequantize", tinyModel(
		[]tensorSpec{{name: "q", typ: tflUint8, shape: []int32{4}, scale: 0.5, zero: 10}, {name: "f", typ: tflFloat32, shape: []int32{4}}},
		[]opSpec{{opDequantize, 1, []int32{0}, []int32{1}}}, []int32{0}, []int32{1}))
	opts := infer.LoadOptions{Device: "EdgeTPU"}

	t.Setenv("FAKE_EDGETPU_DEVICES", "0")
	if _, err := b.Load(model, opts); err == nil || !strings.Contains(err.Error(), "found no Edge TPU") {
		t.Errorf("no device: %v", err)
	}

	t.Setenv("FAKE_EDGETPU_DEVICES", "1")
	e, err := b.Load(model, opts)
	if err != nil {
		t.Fatal(err)
	}
	copy(e.Input(0), []float32{-5, 0, 1, 2.5})
	if err := e.Run(); err != nil {
		t.Fatal(err)
	}
	if got, want := e.Output(0), []float32{-5, 0, 1, 2.5}; !slices.Equal(got, want) {
		t.Errorf("output %v, want %v", got, want)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	calls, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(calls), "list 0\nlist 1\ncreate /sys/bus/usb/devices/fake\nfree \n"; got != want {
		t.Errorf("libedgetpu calls:\n%s\nwant:\n%s", got, want)
	}
}

func goEnv(t *testing.T, key string) string {
	t.Helper()
	out, err := exec.Command("go", "env", key).Output()
	if err != nil {
		t.Fatalf("go env %s: %v", key, err)
	}
	return strings.TrimSpace(string(out))
}

// BenchmarkTFLiteCopy is what Run adds to Invoke for the YOLOX model: copying the
// float32 input (2 MB) into the interpreter and the output (1.2 MB) back.
func BenchmarkTFLiteCopy(b *testing.B) {
	e, err := backend(b).Load(float16Model, infer.LoadOptions{Threads: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	eng := e.(*engine)
	for b.Loop() {
		if err := eng.writeInputs(); err != nil {
			b.Fatal(err)
		}
		if err := eng.readOutputs(); err != nil {
			b.Fatal(err)
		}
	}
}
