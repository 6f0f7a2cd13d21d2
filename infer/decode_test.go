package infer_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/internal/tensorfile"
)

// parse reads a model.yaml given as text.
func parse(t *testing.T, yaml string) *infer.Manifest {
	t.Helper()
	m, err := infer.ParseManifest([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// want is an expected detection; score and box within tol.
type want struct {
	label string
	score float32
	box   [4]float32
}

func check(t *testing.T, got []infer.Detection, wants []want, scoreTol, boxTol float32) {
	t.Helper()
	if len(got) != len(wants) {
		t.Fatalf("got %d detections, want %d: %+v", len(got), len(wants), got)
	}
	for i, w := range wants {
		g := got[i]
		ok := g.Label == w.label && abs(g.Score-w.score) <= scoreTol
		for k := range 4 {
			ok = ok && abs(g.Box[k]-w.box[k]) <= boxTol
		}
		if !ok {
			t.Errorf("detection %d = %s %.5f %v, want %s %.5f %v", i, g.Label, g.Score, g.Box, w.label, w.score, w.box)
		}
	}
}

func abs(v float32) float32 { return float32(math.Abs(float64(v))) }

// decodeNoAlloc decodes twice into a reused slice and checks that the second run,
// the steady state, allocates nothing.
func decodeNoAlloc(t *testing.T, dec infer.Decoder, out [][]float32, g infer.Geometry) []infer.Detection {
	t.Helper()
	dets := dec.Decode(out, g, nil)
	if n := testing.AllocsPerRun(3, func() { dets = dec.Decode(out, g, dets[:0]) }); n != 0 {
		t.Errorf("Decode allocates %v times per frame in steady state", n)
	}
	return dets
}

// The bundled model's real output on dog.jpg (made by TestGenerateGolden in
// infer/detector) decodes to the reference detections in shared/models/README.md,
// which came from the upstream demo's decoder on OpenCV DNN. At threshold 0.1 the
// reference also lists the three weak candidates.
func TestYOLOXGolden(t *testing.T) {
	out, meta, err := tensorfile.Read(filepath.Join("testdata", "yolox-nano-dog"))
	if err != nil {
		t.Fatalf("%v (regenerate with go test ./infer/detector -run TestGenerateGolden -update)", err)
	}
	m, err := infer.LoadManifest(filepath.Join("..", "assets", "models", "yolox-nano"))
	if err != nil {
		t.Fatal(err)
	}
	strong := []want{
		{"dog", 0.8551, [4]float32{132.8, 206.6, 325.7, 543.1}},
		{"bicycle", 0.8026, [4]float32{51.7, 137.2, 572.3, 423.6}},
		{"car", 0.7982, [4]float32{466.3, 78.4, 692.5, 171.3}},
	}
	weak := []want{ // printed to 2 digits
		{"bicycle", 0.21, [4]float32{135.6, 141.0, 255.8, 216.9}},
		{"car", 0.16, [4]float32{686.9, 115.7, 719.0, 154.3}},
		{"person", 0.13, [4]float32{59.7, 71.6, 113.6, 123.1}},
	}
	outputs := []infer.TensorInfo{{Name: "output", Type: infer.Float32, Shape: meta.Shape}}
	for _, tc := range []struct {
		name      string
		threshold float32
		max       int
		want      []want
		scoreTol  float32
	}{
		{"manifest threshold 0.3", 0.3, 100, strong, 0.0006},
		{"threshold 0.1", 0.1, 100, append(strong[:3:3], weak...), 0.006},
		{"max_detections 2", 0.1, 2, strong[:2], 0.0006},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := *m
			m.Thresholds.Score, m.Output.MaxDetections = tc.threshold, tc.max
			dec, err := infer.NewDecoder(&m, outputs)
			if err != nil {
				t.Fatal(err)
			}
			// Boxes are printed to 0.1 px.
			check(t, decodeNoAlloc(t, dec, [][]float32{out}, meta.Geometry), tc.want, tc.scoreTol, 0.06)
		})
	}
}

// A row whose objectness is NaN (a broken model or runtime) is no detection.
func TestYOLOXRejectsNaN(t *testing.T) {
	m := parse(t, "name: x\nversion: 1\nfile: m.onnx\ninput: {width: 32, height: 32}\noutput: {decoder: yolox, strides: [32]}\nlabels: [a]\nthresholds: {score: 0.3}\n")
	dec, err := infer.NewDecoder(m, []infer.TensorInfo{{Shape: []int64{1, 1, 6}}})
	if err != nil {
		t.Fatal(err)
	}
	nan := float32(math.NaN())
	if got := dec.Decode([][]float32{{0.5, 0.5, 0, 0, nan, 0.9}}, infer.Geometry{FrameW: 32, FrameH: 32, ScaleX: 1, ScaleY: 1}, nil); len(got) != 0 {
		t.Errorf("NaN objectness decoded to %+v", got)
	}
}

// yolov8Manifest: 3 labels, 64x64 input, score threshold 0.25.
func yolov8Manifest(t *testing.T, extra string) *infer.Manifest {
	return parse(t, "name: x\nversion: 1\nfile: m.onnx\ninput: {width: 64, height: 64, resize: letterbox, align: center}\n"+
		"output: {decoder: yolov8"+extra+"}\nlabels: [a, b, c]\nthresholds: {score: 0.25, nms_iou: 0.45}\n")
}

// Hand-made anchors: cx, cy, w, h in input pixels, then the scores of a, b and c.
var yolov8Anchors = [][7]float32{
	{20, 20, 10, 10, 0.9, 0.1, 0},   // a 0.9
	{21, 20, 10, 10, 0.8, 0, 0},     // a 0.8, IoU 0.82 with the first: suppressed
	{21, 21, 10, 10, 0, 0.7, 0},     // b 0.7, IoU 0.68 with the first: kept unless agnostic
	{50, 40, 20, 10, 0, 0, 0.2},     // c 0.2, below the threshold
	{60, 60, 20, 16, 0, 0, 0.6},     // c 0.6, runs off the frame: clipped
	{32, 2, 8, 4, 0.5, 0, 0},        // a 0.5, wholly in the letterbox padding: dropped
	{10, 50, 4, 4, 0.2, 0.24, 0.25}, // best 0.25 is not above the threshold
	{40, 30, 8, 8, 0, 0, 0},         // nothing (and 8 anchors, so N is not 4+C)
}

// A 128x96 frame letterboxed into the centre of 64x64: scale 0.5, 8 px of padding
// above and below. Frame x = input x / 0.5; frame y = (input y - 8) / 0.5.
var yolov8Geometry = infer.Geometry{FrameW: 128, FrameH: 96, ScaleX: 0.5, ScaleY: 0.5, OffsetY: 8}

var (
	v8a = want{"a", 0.9, [4]float32{30, 14, 50, 34}}   // input 15,15,25,25
	v8b = want{"b", 0.7, [4]float32{32, 16, 52, 36}}   // input 16,16,26,26
	v8c = want{"c", 0.6, [4]float32{100, 88, 128, 96}} // input 50,52,70,68 -> 100,88,140,120, clipped
)

func TestYOLOv8Decoder(t *testing.T) {
	n := len(yolov8Anchors)
	channelMajor := make([]float32, 7*n) // [1, 7, N]
	transposed := make([]float32, 7*n)   // [1, N, 7]
	for i, a := range yolov8Anchors {
		for k, v := range a {
			channelMajor[k*n+i] = v
			transposed[i*7+k] = v
		}
	}
	for _, layout := range []struct {
		name  string
		shape []int64
		data  []float32
	}{
		{"[1 4+C N]", []int64{1, 7, int64(n)}, channelMajor},
		{"[1 N 4+C]", []int64{1, int64(n), 7}, transposed},
	} {
		for _, tc := range []struct {
			name, extra string
			want        []want
		}{
			{"per-class NMS", "", []want{v8a, v8b, v8c}},
			{"agnostic NMS", ", nms: agnostic", []want{v8a, v8c}},
			{"max_detections", ", max_detections: 2", []want{v8a, v8b}},
		} {
			t.Run(layout.name+"/"+tc.name, func(t *testing.T) {
				dec, err := infer.NewDecoder(yolov8Manifest(t, tc.extra), []infer.TensorInfo{{Name: "output0", Shape: layout.shape}})
				if err != nil {
					t.Fatal(err)
				}
				check(t, decodeNoAlloc(t, dec, [][]float32{layout.data}, yolov8Geometry), tc.want, 1e-6, 1e-4)
			})
		}
	}
	// Appending keeps what dst held.
	dec, _ := infer.NewDecoder(yolov8Manifest(t, ""), []infer.TensorInfo{{Shape: []int64{1, 7, int64(n)}}})
	prev := []infer.Detection{{Label: "kept"}}
	if got := dec.Decode([][]float32{channelMajor}, yolov8Geometry, prev); len(got) != 4 || got[0].Label != "kept" || got[1].Label != "a" {
		t.Errorf("Decode did not append after dst's detections: %+v", got)
	}
}

func TestYOLOv8Shapes(t *testing.T) {
	m := yolov8Manifest(t, "")
	for name, tc := range map[string]struct {
		outputs []infer.TensorInfo
		err     string
	}{
		"wrong class count": {[]infer.TensorInfo{{Name: "output0", Shape: []int64{1, 84, 8400}}}, "the yolov8 decoder with 3 labels needs shape [1 7 N] or [1 N 7]"},
		"two outputs":       {[]infer.TensorInfo{{Shape: []int64{1, 7, 10}}, {Shape: []int64{1, 7, 10}}}, "yolov8 needs exactly 1 output, the model has 2"},
		"batch of two":      {[]infer.TensorInfo{{Shape: []int64{2, 7, 10}}}, "needs shape [1 7 N]"},
		"dynamic anchors":   {[]infer.TensorInfo{{Shape: []int64{1, 7, -1}}}, "needs shape [1 7 N]"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := infer.NewDecoder(m, tc.outputs)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("got %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

func ssdManifest(t *testing.T, extra string) *infer.Manifest {
	return parse(t, "name: x\nversion: 1\nfile: m.tflite\ninput: {width: 300, height: 300, resize: stretch}\n"+
		"output: {decoder: ssd, class_offset: 1"+extra+"}\nlabels: [\"???\", person, car]\nthresholds: {score: 0.4, nms_iou: 0.5}\n")
}

// ssdOutputs are hand-made post-processed outputs; the model's class ids skip the
// background label, hence class_offset 1.
func ssdOutputs() (boxes, classes, scores, count []float32) {
	boxes = []float32{ // ymin, xmin, ymax, xmax of the 300x300 input, 0..1
		0.1, 0.2, 0.5, 0.6, // person 0.9
		0.5, 0.5, 1.2, 1.0, // car 0.8, runs off the bottom
		0.1, 0.2, 0.5, 0.6, // person 0.5, same box as the first: NMS drops it
		0.0, 0.0, 0.1, 0.1, // car 0.3: below the threshold
		0.0, 0.0, 0.1, 0.1, // class id 5: no such label
		0.0, 0.0, 0.1, 0.1, // NaN score
		0.0, 0.0, 0.5, 0.5, // beyond the count
	}
	nan := float32(math.NaN())
	classes = []float32{0, 1, 0, 1, 5, 0, 0}
	scores = []float32{0.9, 0.8, 0.5, 0.3, 0.95, nan, 0.99}
	count = []float32{6}
	return
}

// A 600x400 frame stretched to 300x300: frame x = input x / 0.5, y = input y / 0.75.
var ssdGeometry = infer.Geometry{FrameW: 600, FrameH: 400, ScaleX: 0.5, ScaleY: 0.75}

var ssdWant = []want{
	{"person", 0.9, [4]float32{120, 40, 360, 200}}, // input 60,30,180,150
	{"car", 0.8, [4]float32{300, 200, 600, 400}},   // input 150,150,300,360 -> y2 480 clipped
}

func TestSSDDecoder(t *testing.T) {
	boxes, classes, scores, count := ssdOutputs()
	n := int64(len(scores))
	info := func(name string, shape ...int64) infer.TensorInfo {
		return infer.TensorInfo{Name: name, Type: infer.Float32, Shape: shape}
	}
	for _, tc := range []struct {
		name    string
		extra   string
		outputs []infer.TensorInfo
		data    [][]float32
	}{
		{"TF1 order", "", []infer.TensorInfo{
			info("TFLite_Detection_PostProcess", 1, n, 4), info("TFLite_Detection_PostProcess:1", 1, n),
			info("TFLite_Detection_PostProcess:2", 1, n), info("TFLite_Detection_PostProcess:3", 1),
		}, [][]float32{boxes, classes, scores, count}},
		{"shuffled, told apart by :2", "", []infer.TensorInfo{
			info("TFLite_Detection_PostProcess:2", 1, n), info("TFLite_Detection_PostProcess:3", 1),
			info("TFLite_Detection_PostProcess:1", 1, n), info("TFLite_Detection_PostProcess", 1, n, 4),
		}, [][]float32{scores, count, classes, boxes}},
		{"told apart by name", "", []infer.TensorInfo{
			info("detection_scores", 1, n), info("detection_boxes", 1, n, 4), info("num_detections", 1), info("detection_classes", 1, n),
		}, [][]float32{scores, boxes, count, classes}},
		{"scores_output", `, scores_output: "StatefulPartitionedCall:0"`, []infer.TensorInfo{
			info("StatefulPartitionedCall:0", 1, n), info("StatefulPartitionedCall:1", 1, n, 4),
			info("StatefulPartitionedCall:2", 1), info("StatefulPartitionedCall:3", 1, n),
		}, [][]float32{scores, boxes, count, classes}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dec, err := infer.NewDecoder(ssdManifest(t, tc.extra), tc.outputs)
			if err != nil {
				t.Fatal(err)
			}
			check(t, decodeNoAlloc(t, dec, tc.data, ssdGeometry), ssdWant, 1e-6, 1e-3)
		})
	}

	tf1 := []infer.TensorInfo{
		info("TFLite_Detection_PostProcess", 1, n, 4), info("TFLite_Detection_PostProcess:1", 1, n),
		info("TFLite_Detection_PostProcess:2", 1, n), info("TFLite_Detection_PostProcess:3", 1),
	}
	dec, err := infer.NewDecoder(ssdManifest(t, ""), tf1)
	if err != nil {
		t.Fatal(err)
	}
	for c, wantN := range map[float32]int{0: 0, -3: 0, float32(math.NaN()): 0, 1: 1, 6: 2, 100: 3} { // 100: all 7, the last valid
		t.Run(fmt.Sprintf("count %v", c), func(t *testing.T) {
			if got := dec.Decode([][]float32{boxes, classes, scores, {c}}, ssdGeometry, nil); len(got) != wantN {
				t.Errorf("count %v decoded %d detections, want %d: %+v", c, len(got), wantN, got)
			}
		})
	}
	t.Run("agnostic NMS", func(t *testing.T) {
		// A car box on top of the person: kept per class, dropped by agnostic NMS.
		b := append(append([]float32(nil), boxes[:4]...), boxes[:4]...)
		for _, nmsKind := range []string{"per-class", "agnostic"} {
			dec, err := infer.NewDecoder(ssdManifest(t, ", nms: "+nmsKind), []infer.TensorInfo{
				info("TFLite_Detection_PostProcess", 1, 2, 4), info("TFLite_Detection_PostProcess:1", 1, 2),
				info("TFLite_Detection_PostProcess:2", 1, 2), info("TFLite_Detection_PostProcess:3", 1),
			})
			if err != nil {
				t.Fatal(err)
			}
			got := dec.Decode([][]float32{b, {0, 1}, {0.9, 0.8}, {2}}, ssdGeometry, nil)
			if wantN := map[string]int{"per-class": 2, "agnostic": 1}[nmsKind]; len(got) != wantN {
				t.Errorf("%s NMS kept %d, want %d: %+v", nmsKind, len(got), wantN, got)
			}
		}
	})
}

func TestSSDShapes(t *testing.T) {
	info := func(name string, shape ...int64) infer.TensorInfo { return infer.TensorInfo{Name: name, Shape: shape} }
	for name, tc := range map[string]struct {
		extra   string
		outputs []infer.TensorInfo
		err     string
	}{
		"three outputs": {"", []infer.TensorInfo{info("b", 1, 10, 4), info("detection_scores", 1, 10), info("n", 1)},
			"output.decoder: ssd needs 4 outputs"},
		"unknown shape": {"", []infer.TensorInfo{info("b", 1, 10, 4), info("c", 1, 10), info("s", 1, 10), info("x", 1, 10, 2)},
			"output x float32"},
		"N differs": {"", []infer.TensorInfo{info("b", 1, 10, 4), info("detection_classes", 1, 10), info("detection_scores", 1, 12), info("n", 1)},
			"the ssd decoder needs [1 10]"},
		"ambiguous names": {"", []infer.TensorInfo{info("out:0", 1, 10, 4), info("out:1", 1, 10), info("out:3", 1, 10), info("out:4", 1)},
			`output.scores_output: outputs "out:1" and "out:3" are both [1 N]`},
		"scores_output names no output": {`, scores_output: "nope"`, []infer.TensorInfo{info("out:0", 1, 10, 4), info("out:1", 1, 10), info("out:3", 1, 10), info("out:4", 1)},
			`output.scores_output: "nope" is neither`},
	} {
		t.Run(name, func(t *testing.T) {
			for i := range tc.outputs {
				tc.outputs[i].Type = infer.Float32
			}
			_, err := infer.NewDecoder(ssdManifest(t, tc.extra), tc.outputs)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("got %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

func classifyManifest(t *testing.T, output, thresholds string) *infer.Manifest {
	return parse(t, "name: x\nversion: 1\ntask: classify\nfile: m.onnx\ninput: {width: 224, height: 224, resize: stretch}\n"+
		"output: {decoder: classify, "+output+"}\nlabels: [cat, dog, bird, fish]\nthresholds: {"+thresholds+"}\n")
}

func TestClassifyDecoder(t *testing.T) {
	g := infer.Geometry{FrameW: 640, FrameH: 480, ScaleX: 0.35, ScaleY: 224.0 / 480}
	frame := [4]float32{0, 0, 640, 480}
	logits := []float32{1, 2, 3, 0.5}
	// Softmax of the logits, in float64.
	var sum float64
	for _, l := range logits {
		sum += math.Exp(float64(l))
	}
	p := func(i int) float32 { return float32(math.Exp(float64(logits[i])) / sum) }
	for _, tc := range []struct {
		name, output, thresholds string
		out                      []float32
		want                     []want
	}{
		{"softmax top 1", "softmax: true", "", logits, []want{{"bird", p(2), frame}}},
		{"softmax top 2", "softmax: true, top_k: 2", "", logits, []want{{"bird", p(2), frame}, {"dog", p(1), frame}}},
		{"probabilities above a threshold", "softmax: false, top_k: 3", "score: 0.2", []float32{0.1, 0.6, 0.25, 0.05},
			[]want{{"dog", 0.6, frame}, {"bird", 0.25, frame}}},
		{"max_detections caps top_k", "softmax: false, top_k: 3, max_detections: 1", "", []float32{0.1, 0.6, 0.25, 0.05},
			[]want{{"dog", 0.6, frame}}},
		{"ties keep the lower class", "softmax: false, top_k: 2", "", []float32{0.3, 0.1, 0.3, 0.3},
			[]want{{"cat", 0.3, frame}, {"bird", 0.3, frame}}},
		{"nothing above the threshold", "softmax: false, top_k: 2", "score: 0.7", []float32{0.1, 0.6, 0.25, 0.05}, nil},
		{"top_k beyond the labels", "softmax: false, top_k: 9", "", []float32{0.1, 0.6, 0.25, 0.05},
			[]want{{"dog", 0.6, frame}, {"bird", 0.25, frame}, {"cat", 0.1, frame}, {"fish", 0.05, frame}}},
		{"NaN logits", "softmax: true, top_k: 2", "", []float32{1, float32(math.NaN()), 3, 0}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dec, err := infer.NewDecoder(classifyManifest(t, tc.output, tc.thresholds), []infer.TensorInfo{{Name: "logits", Shape: []int64{1, 4}}})
			if err != nil {
				t.Fatal(err)
			}
			check(t, decodeNoAlloc(t, dec, [][]float32{tc.out}, g), tc.want, 1e-6, 0)
		})
	}
	if _, err := infer.NewDecoder(classifyManifest(t, "softmax: true", ""), []infer.TensorInfo{{Name: "logits", Shape: []int64{1, 1000}}}); err == nil ||
		!strings.Contains(err.Error(), "the classify decoder with 4 labels needs shape [1 4]") {
		t.Errorf("a 1000-class output for 4 labels: %v", err)
	}
}

// Each decoder's settings are checked when model.yaml is read; the error names the key.
func TestDecoderManifestErrors(t *testing.T) {
	head := "name: x\nversion: 1\nfile: m.onnx\ninput: {width: 64, height: 64}\nlabels: [a, b]\n"
	for name, tc := range map[string]struct{ yaml, want string }{
		"classify task, detect decoder": {"task: classify\noutput: {decoder: yolov8}\n", `task: classify needs output.decoder: classify, not "yolov8"`},
		"detect task, classify decoder": {"output: {decoder: classify, softmax: true}\n", `output.decoder: the classify decoder goes with task: classify, not "detect"`},
		"softmax missing":               {"task: classify\noutput: {decoder: classify}\n", "output.softmax: missing"},
		"negative top_k":                {"task: classify\noutput: {decoder: classify, softmax: false, top_k: -1}\n", "output.top_k: -1 must be at least 1"},
		"top_k on a detector":           {"output: {decoder: yolov8, top_k: 3}\n", `output.top_k: only the classify decoder uses it, this bundle's decoder is "yolov8"`},
		"softmax on a detector":         {"output: {decoder: ssd, softmax: true}\n", "output.softmax: only the classify decoder uses it"},
		"strides on yolov8":             {"output: {decoder: yolov8, strides: [8, 16, 32]}\n", "output.strides: only the yolox decoder uses it"},
		"class_offset on yolox":         {"output: {decoder: yolox, strides: [8], class_offset: 1}\n", "output.class_offset: only the ssd decoder uses it"},
		"scores_output on yolov8":       {"output: {decoder: yolov8, scores_output: x}\n", "output.scores_output: only the ssd decoder uses it"},
		"negative max_detections":       {"output: {decoder: yolov8, max_detections: -5}\n", "output.max_detections: -5 must be positive"},
		"unknown task":                  {"task: segment\noutput: {decoder: yolov8}\n", `task: "segment" is not one of [detect classify]`},
		"yolox without strides":         {"output: {decoder: yolox}\n", "output.strides: the yolox decoder needs its grid strides"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := infer.ParseManifest([]byte(head + tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	m := parse(t, head+"output: {decoder: yolov8}\n")
	if m.Output.MaxDetections != 100 || m.Output.TopK != 0 {
		t.Errorf("defaults: max_detections %d, top_k %d; want 100 and unset", m.Output.MaxDetections, m.Output.TopK)
	}
	m = parse(t, "task: classify\n"+head+"output: {decoder: classify, softmax: false}\n")
	if m.Output.TopK != 1 {
		t.Errorf("classify's top_k defaults to %d, want 1", m.Output.TopK)
	}
}

// BenchmarkDecodeYOLOv8 decodes a YOLOv8n-sized output (640x640 input, 80 classes,
// 8400 anchors) of low scores with a few clusters of strong boxes, as a real frame
// has; there is no real YOLOv8 model here to take the output from.
func BenchmarkDecodeYOLOv8(b *testing.B) {
	labels := make([]string, 80)
	for i := range labels {
		labels[i] = fmt.Sprint("c", i)
	}
	m, err := infer.ParseManifest([]byte(fmt.Sprintf("name: x\nversion: 1\nfile: m.onnx\ninput: {width: 640, height: 640}\n"+
		"output: {decoder: yolov8}\nlabels: [%s]\nthresholds: {score: 0.25}\n", strings.Join(labels, ", "))))
	if err != nil {
		b.Fatal(err)
	}
	const n = 8400
	out := make([]float32, 84*n)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range n {
		out[i], out[n+i], out[2*n+i], out[3*n+i] = rng.Float32()*640, rng.Float32()*640, 10+rng.Float32()*100, 10+rng.Float32()*100
		for k := range 80 {
			out[(4+k)*n+i] = rng.Float32() * 0.05
		}
		if i%200 == 0 { // 42 strong anchors
			out[(4+i%80)*n+i] = 0.5 + rng.Float32()*0.5
		}
	}
	dec, err := infer.NewDecoder(m, []infer.TensorInfo{{Name: "output0", Shape: []int64{1, 84, n}}})
	if err != nil {
		b.Fatal(err)
	}
	outs := [][]float32{out}
	g := infer.Geometry{FrameW: 1280, FrameH: 720, ScaleX: 0.5, ScaleY: 0.5, OffsetY: 140}
	var dets []infer.Detection
	b.ReportAllocs()
	for b.Loop() {
		dets = dec.Decode(outs, g, dets[:0])
	}
	if len(dets) == 0 {
		b.Fatal("no detections")
	}
}

// Whatever a model outputs (NaN, infinities, class ids off the labels, counts beyond
// N), decoding neither panics nor returns a box outside the frame or a NaN score.
func FuzzDecoders(f *testing.F) {
	f.Add([]byte{0, 0, 0x80, 0x7f, 0, 0, 0xc0, 0x7f, 1, 2, 3, 4}) // +Inf, NaN, ...
	f.Add(make([]byte, 64))
	f.Fuzz(func(t *testing.T, raw []byte) {
		vals := make([]float32, len(raw)/4)
		for i := range vals {
			vals[i] = math.Float32frombits(uint32(raw[4*i]) | uint32(raw[4*i+1])<<8 | uint32(raw[4*i+2])<<16 | uint32(raw[4*i+3])<<24)
		}
		// fill takes n values from vals, cycling, padding with zeros if there are none.
		next := 0
		fill := func(n int) []float32 {
			out := make([]float32, n)
			for i := range out {
				if len(vals) > 0 {
					out[i] = vals[next%len(vals)]
					next++
				}
			}
			return out
		}
		g := infer.Geometry{FrameW: 100, FrameH: 80, ScaleX: 0.64, ScaleY: 0.8}
		checkAll := func(name string, dets []infer.Detection) {
			for _, d := range dets {
				if !(d.Score >= 0 || d.Score < 0) || d.Box[0] < 0 || d.Box[1] < 0 || d.Box[2] > 100 || d.Box[3] > 80 || !(d.Box[2] > d.Box[0]) {
					t.Fatalf("%s decoded %+v", name, d)
				}
			}
		}
		info := func(name string, shape ...int64) infer.TensorInfo { return infer.TensorInfo{Name: name, Shape: shape} }

		dec, err := infer.NewDecoder(ssdManifest(t, ""), []infer.TensorInfo{
			info("TFLite_Detection_PostProcess", 1, 5, 4), info("TFLite_Detection_PostProcess:1", 1, 5),
			info("TFLite_Detection_PostProcess:2", 1, 5), info("TFLite_Detection_PostProcess:3", 1),
		})
		if err != nil {
			t.Fatal(err)
		}
		checkAll("ssd", dec.Decode([][]float32{fill(20), fill(5), fill(5), fill(1)}, g, nil))

		dec, err = infer.NewDecoder(yolov8Manifest(t, ""), []infer.TensorInfo{info("out", 1, 7, 9)})
		if err != nil {
			t.Fatal(err)
		}
		checkAll("yolov8", dec.Decode([][]float32{fill(63)}, g, nil))

		dec, err = infer.NewDecoder(classifyManifest(t, "softmax: true, top_k: 3", ""), []infer.TensorInfo{info("logits", 1, 4)})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range dec.Decode([][]float32{fill(4)}, g, nil) {
			if !(d.Score > 0 && d.Score <= 1) {
				t.Fatalf("classify decoded %+v", d)
			}
		}
	})
}
