package modelfile

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vigil-edge/vigil/infer"
)

var (
	onnxModel     = filepath.Join("..", "..", "assets", "models", "yolox-nano", "model.onnx")
	bundleDir     = filepath.Join("..", "..", "assets", "models", "yolox-nano")
	float16Model  = filepath.Join("..", "testdata", "models", "yolox_nano_float16_quantize.tflite")
	dynRangeModel = filepath.Join("..", "testdata", "models", "yolox_nano_dynamic_range_quantize.tflite")
)

func inspect(t *testing.T, path string) *Model {
	t.Helper()
	m, err := Inspect(path)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func checkIO(t *testing.T, got []infer.TensorInfo, want ...string) {
	t.Helper()
	var s []string
	for _, ti := range got {
		s = append(s, ti.String())
		if ti.Quant != nil {
			t.Errorf("%s: unexpected quantisation %+v", ti, *ti.Quant)
		}
	}
	if !slices.Equal(s, want) {
		t.Errorf("tensors %q, want %q", s, want)
	}
}

func count(ops []Operator, typ string) (n int, version int32) {
	for _, op := range ops {
		if op.Type == typ {
			return op.Count, op.Version
		}
	}
	return 0, 0
}

func total(ops []Operator) int {
	n := 0
	for _, op := range ops {
		n += op.Count
	}
	return n
}

// Facts from shared/models/README.md.
func TestONNXYOLOX(t *testing.T) {
	m := inspect(t, onnxModel)
	if m.Format != ONNX || m.IRVersion != 7 || m.Opset("") != 11 || m.Opset("ai.onnx") != 11 || len(m.Opsets) != 1 ||
		m.Producer != "pytorch" || m.ProducerVersion != "1.10" || m.ExternalTensors != 0 {
		t.Errorf("header: %+v", m)
	}
	checkIO(t, m.Inputs, "images float32 [1 3 416 416]")
	checkIO(t, m.Outputs, "output float32 [1 3549 85]")
	if n, _ := count(m.Operators, "Conv"); n != 113 {
		t.Errorf("Conv x%d, want 113: %+v", n, m.Operators)
	}
	if n, _ := count(m.Operators, "Sigmoid"); n != 110 {
		t.Errorf("Sigmoid x%d, want 110", n)
	}
	for i, op := range m.Operators {
		if op.Domain != "" || op.Version != 0 || op.Custom {
			t.Errorf("operator %+v: want default domain, no version", op)
		}
		if i > 0 && op.Count > m.Operators[i-1].Count {
			t.Errorf("operators not sorted by count: %+v", m.Operators)
		}
	}
}

func TestTFLiteFloat16(t *testing.T) {
	m := inspect(t, float16Model)
	if m.Format != TFLite || m.SchemaVersion != 3 || m.Subgraphs != 1 || m.IRVersion != 0 || m.Opsets != nil {
		t.Errorf("header: %+v", m)
	}
	checkIO(t, m.Inputs, "serving_default_images:0 float32 [1 3 416 416]")
	checkIO(t, m.Outputs, "PartitionedCall:0 float32 [1 3549 85]")
	if n := total(m.Operators); n != 841 {
		t.Errorf("%d operators, want 841", n)
	}
	for typ, want := range map[string]int{"DEQUANTIZE": 226, "TRANSPOSE": 218, "LOGISTIC": 110, "CONV_2D": 83, "RESIZE_NEAREST_NEIGHBOR": 2} {
		if n, _ := count(m.Operators, typ); n != want {
			t.Errorf("%s x%d, want %d", typ, n, want)
		}
	}
}

func TestTFLiteDynamicRange(t *testing.T) {
	m := inspect(t, dynRangeModel)
	checkIO(t, m.Inputs, "serving_default_images:0 float32 [1 3 416 416]")
	checkIO(t, m.Outputs, "PartitionedCall:0 float32 [1 3549 85]")
	if n := total(m.Operators); n != 615 {
		t.Errorf("%d operators, want 615", n)
	}
	if n, _ := count(m.Operators, "DEQUANTIZE"); n != 0 {
		t.Errorf("DEQUANTIZE x%d, want none", n)
	}
	// The operator version the old TFLite 2.2 library lacks (PLATFORM.md).
	if n, v := count(m.Operators, "CONV_2D"); n != 83 || v != 5 {
		t.Errorf("CONV_2D x%d version %d, want x83 version 5", n, v)
	}
}

func TestParseErrors(t *testing.T) {
	onnx, err := os.ReadFile(onnxModel)
	if err != nil {
		t.Fatal(err)
	}
	tfl, err := os.ReadFile(float16Model)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		data []byte
		want string
	}{
		"empty":            {nil, "no IR version"},
		"text":             {[]byte("name: yolox\nversion: 1\n"), "not an ONNX model"},
		"zeros":            {make([]byte, 4096), "not an ONNX model"},
		"onnx truncated":   {onnx[:len(onnx)/2], "not an ONNX model"},
		"onnx header only": {onnx[:40], "not an ONNX model"},
		"tflite header":    {tfl[:8], "tflite: root table"},
		"tflite truncated": {tfl[:4096], "tflite:"},
		"tflite bad root":  {append([]byte{0xff, 0xff, 0xff, 0x7f}, tfl[4:64]...), "tflite: root table"},
	} {
		t.Run(name, func(t *testing.T) {
			m, err := Parse(tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %+v, %v; want an error containing %q", m, err, tc.want)
			}
		})
	}
	if _, err := Inspect("no/such/model.onnx"); err == nil || !strings.Contains(err.Error(), "no/such/model.onnx") {
		t.Errorf("missing file: %v", err)
	}
}

func TestCheckBundle(t *testing.T) {
	m, model, err := CheckBundle(bundleDir)
	if err != nil {
		t.Fatalf("bundled model: %v", err)
	}
	if m.Name != "yolox-nano" || model.Format != ONNX {
		t.Errorf("manifest %s, model %s", m.Name, model.Format)
	}

	yaml, err := os.ReadFile(filepath.Join(bundleDir, infer.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	labels := strings.Index(string(yaml), "  - bicycle")
	for name, tc := range map[string]struct {
		edit  func(string) string
		model string // linked into the bundle as model.onnx; "" = none
		want  string // "" = fits
	}{
		"tflite model": {func(s string) string { return strings.Replace(s, "file: model.onnx", "file: model.tflite", 1) }, float16Model, ""},
		"width":        {func(s string) string { return strings.Replace(s, "width: 416", "width: 320", 1) }, onnxModel, "input.width: 320, but model input images float32 [1 3 416 416] has width 416"},
		"layout":       {func(s string) string { return strings.Replace(s, "layout: NCHW", "layout: NHWC", 1) }, onnxModel, "input.layout: model input images float32 [1 3 416 416] is NCHW, model.yaml says NHWC"},
		"labels":       {func(s string) string { return s[:labels] }, onnxModel, "model.yaml: labels: 1 labels, but the model's outputs fit the yolox decoder with 80 classes (output output float32 [1 3549 85]: the yolox decoder with output.strides [8 16 32], input 416x416 and 1 labels needs shape [1 3549 6])"},
		"strides":      {func(s string) string { return strings.Replace(s, "strides: [8, 16, 32]", "strides: [16, 32]", 1) }, onnxModel, "model.yaml: output.decoder: output output float32 [1 3549 85]: the yolox decoder with output.strides [16 32]"},
		"missing file": {func(s string) string { return s }, "", "model.yaml: file: read model:"},
		"not a model":  {func(s string) string { return s }, "modelfile_test.go", "model.yaml: file: model "},
		"bad yaml":     {func(s string) string { return strings.Replace(s, "decoder: yolox", "decoder: yolo", 1) }, onnxModel, `output.decoder: "yolo" is not one of`},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			text := tc.edit(string(yaml))
			if err := os.WriteFile(filepath.Join(dir, infer.ManifestFile), []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			if tc.model != "" {
				file := "model.onnx"
				if strings.Contains(text, "file: model.tflite") {
					file = "model.tflite"
				}
				if err := os.Symlink(abs(tc.model), filepath.Join(dir, file)); err != nil {
					t.Fatal(err)
				}
			}
			_, _, err := CheckBundle(dir)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("rejected: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v\nwant an error containing %q", err, tc.want)
			}
		})
	}
}
