package infer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var bundledManifest = filepath.Join("..", "assets", "models", "yolox-nano", "model.yaml")

func TestBundledManifest(t *testing.T) {
	m, err := LoadManifest(filepath.Dir(bundledManifest))
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "yolox-nano" || len(m.Labels) != 80 || m.Labels[0] != "person" || m.Labels[16] != "dog" ||
		m.Input.Width != 416 || m.Input.Color != "BGR" || m.Input.PadValue() != 114 || m.Output.NMS != "agnostic" {
		t.Errorf("bundled manifest read wrong: %+v", m)
	}
}

func TestManifestErrors(t *testing.T) {
	base, _ := os.ReadFile(bundledManifest)
	for name, tc := range map[string]struct{ from, to, want string }{
		"unknown key":   {"task: detect", "tsak: detect", "field tsak not found"},
		"bad layout":    {"layout: NCHW", "layout: CHW", `input.layout: "CHW" is not one of [NCHW NHWC]`},
		"bad stride":    {"strides: [8, 16, 32]", "strides: [8, 16, 30]", "output.strides: stride 30 must be positive and divide the input size 416x416"},
		"no decoder":    {"decoder: yolox", "decoder: yolov9", `output.decoder: "yolov9" is not one of [yolox yolov8 ssd classify]`},
		"escaping file": {"file: model.onnx", "file: ../../etc/passwd", "file: \"../../etc/passwd\" must be a path inside the bundle directory"},
		"bad score":     {"score: 0.3", "score: 1.5", "thresholds.score: 1.5 is outside [0, 1)"},
		"zero scale":    {"scale: [1, 1, 1]", "scale: [1, 0, 1]", "input.scale: values must not be 0"},
	} {
		t.Run(name, func(t *testing.T) {
			data := strings.Replace(string(base), tc.from, tc.to, 1)
			if data == string(base) {
				t.Fatalf("%q not in the bundled manifest", tc.from)
			}
			_, err := ParseManifest([]byte(data))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if _, err := ParseManifest(nil); err == nil {
		t.Error("empty manifest accepted")
	}
}

func TestNMS(t *testing.T) {
	dets := []Detection{
		{Label: "a", Class: 0, Score: 0.6, Box: [4]float32{0, 0, 10, 10}},
		{Label: "a", Class: 0, Score: 0.9, Box: [4]float32{1, 1, 11, 11}},
		{Label: "b", Class: 1, Score: 0.8, Box: [4]float32{0, 0, 10, 10}},
		{Label: "a", Class: 0, Score: 0.7, Box: [4]float32{50, 50, 60, 60}},
	}
	perClass := NMS(append([]Detection(nil), dets...), 0.5, false)
	if len(perClass) != 3 || perClass[0].Score != 0.9 || perClass[1].Label != "b" || perClass[2].Score != 0.7 {
		t.Errorf("per-class NMS: %+v", perClass)
	}
	agnostic := NMS(append([]Detection(nil), dets...), 0.5, true)
	if len(agnostic) != 2 || agnostic[0].Score != 0.9 || agnostic[1].Score != 0.7 {
		t.Errorf("class-agnostic NMS: %+v", agnostic)
	}
}

func TestIoU(t *testing.T) {
	a := [4]float32{0, 0, 10, 10}
	for b, want := range map[[4]float32]float32{
		{0, 0, 10, 10}:   1,
		{5, 0, 15, 10}:   50.0 / 150,
		{10, 10, 20, 20}: 0,
		{20, 20, 30, 30}: 0,
	} {
		if got := IoU(a, b); got < want-1e-6 || got > want+1e-6 {
			t.Errorf("IoU(%v, %v) = %v, want %v", a, b, got, want)
		}
	}
}

// The decoder reads the layout the upstream demo documents: a single confident cell at
// stride 16 becomes one box in frame pixels.
func TestYOLOXDecoderGeometry(t *testing.T) {
	m, err := LoadManifest(filepath.Dir(bundledManifest))
	if err != nil {
		t.Fatal(err)
	}
	out := TensorInfo{Name: "output", Type: Float32, Shape: []int64{1, 3549, 85}}
	dec, err := NewDecoder(m, []TensorInfo{out})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]float32, out.Elements())
	row := 52*52 + 3*26 + 4 // stride 16 level, gy=3, gx=4
	r := data[row*85 : (row+1)*85]
	r[0], r[1], r[2], r[3], r[4] = 0.5, 0.5, 0, 0, 0.9 // centre of the cell, w = h = stride
	r[5+16] = 0.8                                      // dog
	// A frame of 832x832 letterboxed at scale 0.5.
	dets := dec.Decode([][]float32{data}, Geometry{FrameW: 832, FrameH: 832, ScaleX: 0.5, ScaleY: 0.5}, nil)
	if len(dets) != 1 || dets[0].Label != "dog" {
		t.Fatalf("decoded %+v", dets)
	}
	cx, cy := (4+0.5)*16/0.5, (3+0.5)*16/0.5
	want := [4]float32{float32(cx - 16), float32(cy - 16), float32(cx + 16), float32(cy + 16)}
	if dets[0].Box != want || dets[0].Score < 0.72-1e-6 || dets[0].Score > 0.72+1e-6 {
		t.Errorf("box %v score %v, want %v and 0.72", dets[0].Box, dets[0].Score, want)
	}
	if _, err := NewDecoder(m, []TensorInfo{{Name: "output", Shape: []int64{1, 3549, 84}}}); err == nil {
		t.Error("decoder accepted an output with the wrong number of classes")
	}
}

type namedBackend string

func (b namedBackend) Name() string                             { return string(b) }
func (b namedBackend) Available() error                         { return nil }
func (b namedBackend) Load(string, LoadOptions) (Engine, error) { return nil, nil }

func TestRegistry(t *testing.T) {
	r := NewRegistry(namedBackend("onnxruntime"), namedBackend("tflite"))
	if b, err := r.Get("tflite"); err != nil || b.Name() != "tflite" {
		t.Fatalf("Get(tflite) = %v, %v", b, err)
	}
	if _, err := r.Get("openvino"); err == nil || !strings.Contains(err.Error(), `"openvino" is not built into this program (it has onnxruntime, tflite)`) {
		t.Fatalf("Get(openvino): %v", err)
	}
}
