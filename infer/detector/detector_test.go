package detector_test

import (
	"flag"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/internal/tensorfile"
	"github.com/vigil-edge/vigil/infer/onnxrt"
)

var bundleDir = filepath.Join("..", "..", "assets", "models", "yolox-nano")

func loadDetector(t testing.TB) *detector.Detector {
	t.Helper()
	b := onnxrt.New("")
	if err := b.Available(); err != nil {
		t.Fatalf("ONNX Runtime is required for this test (run scripts/install-deps): %v", err)
	}
	d, err := detector.Load(b, bundleDir, infer.LoadOptions{Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func readImage(t testing.TB, name string) gocv.Mat {
	t.Helper()
	img := gocv.IMRead(filepath.Join("testdata", name), gocv.IMReadColor)
	if img.Empty() {
		t.Fatalf("cannot read testdata/%s", name)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

// Reference detections (score >= 0.3) from OpenCV 4.6 decode + DNN on yolox_nano.onnx.
var golden = map[string][]infer.Detection{
	"dog.jpg": {
		{Label: "dog", Score: 0.8551, Box: [4]float32{132.8, 206.6, 325.7, 543.1}},
		{Label: "bicycle", Score: 0.8026, Box: [4]float32{51.7, 137.2, 572.3, 423.6}},
		{Label: "car", Score: 0.7982, Box: [4]float32{466.3, 78.4, 692.5, 171.3}},
	},
	"person.jpg": {
		{Label: "person", Score: 0.8805, Box: [4]float32{188.4, 97.0, 276.5, 371.1}},
		{Label: "dog", Score: 0.8716, Box: [4]float32{62.3, 262.9, 200.5, 348.3}},
		{Label: "horse", Score: 0.8715, Box: [4]float32{404.0, 138.1, 602.4, 342.8}},
	},
}

func TestDetectorMatchesReference(t *testing.T) {
	d := loadDetector(t)
	for name, want := range golden {
		t.Run(name, func(t *testing.T) {
			dets, timing, err := d.Detect(readImage(t, name), nil)
			if err != nil {
				t.Fatal(err)
			}
			if timing.Infer <= 0 {
				t.Errorf("inference time not measured: %+v", timing)
			}
			var got []infer.Detection
			for _, det := range dets {
				if det.Score >= 0.3 {
					got = append(got, det)
					// Logged so that runs on other CPUs (scripts/test-arm64) can be compared.
					t.Logf("%s %.4f [%.1f %.1f %.1f %.1f]", det.Label, det.Score, det.Box[0], det.Box[1], det.Box[2], det.Box[3])
				}
			}
			if len(got) != len(want) {
				t.Fatalf("got %d detections >= 0.3, want %d: %v", len(got), len(want), got)
			}
			// dog and horse in person.jpg differ by 1e-4: match by label, not order.
			for _, w := range want {
				i := slices.IndexFunc(got, func(g infer.Detection) bool { return g.Label == w.Label })
				if i < 0 {
					t.Errorf("no %s detected; got %v", w.Label, got)
					continue
				}
				g := got[i]
				if diff := g.Score - w.Score; diff > 0.02 || diff < -0.02 {
					t.Errorf("%s score %.4f, want %.4f ± 0.02", w.Label, g.Score, w.Score)
				}
				for k := range 4 {
					if diff := g.Box[k] - w.Box[k]; diff > 3 || diff < -3 {
						t.Errorf("%s box %v, want %v within 3 px", w.Label, g.Box, w.Box)
						break
					}
				}
			}
		})
	}
}

func TestDetectorRejectsMismatchedManifest(t *testing.T) {
	b := onnxrt.New("")
	m, err := infer.LoadManifest(bundleDir)
	if err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*infer.Manifest){
		"input size": func(m *infer.Manifest) { m.Input.Width, m.Input.Height = 320, 320 },
		"labels":     func(m *infer.Manifest) { m.Labels = m.Labels[:10] },
		"layout":     func(m *infer.Manifest) { m.Input.Layout = "NHWC" },
	} {
		t.Run(name, func(t *testing.T) {
			bad := *m
			mutate(&bad)
			engine, err := b.Load(bad.Path(bundleDir), infer.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer engine.Close()
			if _, err := detector.New(engine, &bad); err == nil {
				t.Fatalf("manifest with wrong %s was accepted", name)
			}
		})
	}
}

func TestDetectOnGrayFrame(t *testing.T) {
	d := loadDetector(t)
	img := readImage(t, "person.jpg")
	gray := gocv.NewMat()
	defer gray.Close()
	gocv.CvtColor(img, &gray, gocv.ColorBGRToGray)
	dets, _, err := d.Detect(gray, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(dets, func(d infer.Detection) bool { return d.Label == "person" && d.Score > 0.5 }) {
		t.Errorf("no person found in the gray frame: %v", dets)
	}
}

var update = flag.Bool("update", false, "rewrite infer/testdata's golden output tensor from the bundled model")

// goldenBase is the bundled model's raw output on testdata/dog.jpg, the input of the
// decoder tests and benchmarks in package infer.
var goldenBase = filepath.Join("..", "testdata", "yolox-nano-dog")

// recorder is a real engine that keeps a copy of its output after each Run.
type recorder struct {
	infer.Engine
	out []float32
}

func (r *recorder) Run() error {
	err := r.Engine.Run()
	r.out = slices.Clone(r.Engine.Output(0))
	return err
}

// TestGenerateGolden runs the bundled model through the detector on dog.jpg and checks
// that its raw output still matches the stored golden tensor (same model, same
// pre-processing). With -update it rewrites the tensor:
//
//	go test ./infer/detector -run TestGenerateGolden -update
func TestGenerateGolden(t *testing.T) {
	m, err := infer.LoadManifest(bundleDir)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := onnxrt.New("").Load(m.Path(bundleDir), infer.LoadOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{Engine: engine}
	d, err := detector.New(rec, m)
	if err != nil {
		engine.Close()
		t.Fatal(err)
	}
	defer d.Close()
	img := readImage(t, "dog.jpg")
	if _, _, err := d.Detect(img, nil); err != nil {
		t.Fatal(err)
	}
	// Top-left letterbox, as the detector does it for this manifest.
	r := float32(min(float64(m.Input.Width)/float64(img.Cols()), float64(m.Input.Height)/float64(img.Rows())))
	meta := tensorfile.Meta{
		Source: fmt.Sprintf("assets/models/yolox-nano (%s %s) on infer/detector/testdata/dog.jpg, through infer/detector and ONNX Runtime (go test ./infer/detector -run TestGenerateGolden -update)",
			m.Name, m.Version),
		Shape:    engine.Outputs()[0].Shape,
		Geometry: infer.Geometry{FrameW: img.Cols(), FrameH: img.Rows(), ScaleX: r, ScaleY: r},
	}
	if *update {
		if err := tensorfile.Write(goldenBase, rec.out, meta); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s.f32.gz", goldenBase)
		return
	}
	want, wantMeta, err := tensorfile.Read(goldenBase)
	if err != nil {
		t.Fatalf("%v (regenerate with -update)", err)
	}
	if !slices.Equal(wantMeta.Shape, meta.Shape) || wantMeta.Geometry != meta.Geometry {
		t.Fatalf("golden tensor is %v %+v, the model now gives %v %+v", wantMeta.Shape, wantMeta.Geometry, meta.Shape, meta.Geometry)
	}
	// Runtimes and CPUs differ in the last bits; a changed model or pre-processing
	// moves values far more.
	var worst float64
	for i := range want {
		worst = max(worst, math.Abs(float64(rec.out[i]-want[i])))
	}
	if worst > 1e-3 {
		t.Errorf("model output differs from the golden tensor by up to %g (regenerate with -update if the change is intended)", worst)
	}
}

// Detect allocates nothing per frame in steady state beyond what the engine's Run
// does: pre-processing and decoding reuse their buffers, and the detections go into
// the caller's slice.
func TestDetectDoesNotAllocate(t *testing.T) {
	m, err := infer.LoadManifest(bundleDir)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := onnxrt.New("").Load(m.Path(bundleDir), infer.LoadOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	d, err := detector.New(engine, m)
	if err != nil {
		engine.Close()
		t.Fatal(err)
	}
	defer d.Close()
	img := readImage(t, "dog.jpg")
	var dets []infer.Detection
	for range 2 { // warm up: dets grows to the candidate count
		if dets, _, err = d.Detect(img, dets[:0]); err != nil {
			t.Fatal(err)
		}
	}
	if len(dets) == 0 {
		t.Fatal("no detections on dog.jpg")
	}
	allocs := testing.AllocsPerRun(5, func() {
		dets, _, err = d.Detect(img, dets[:0])
	})
	if err != nil {
		t.Fatal(err)
	}
	runAllocs := testing.AllocsPerRun(5, func() { err = engine.Run() })
	if err != nil {
		t.Fatal(err)
	}
	// The onnxruntime engine runs a session bound to its own tensors, so neither it nor
	// the detector around it allocates per frame.
	if allocs != 0 || runAllocs != 0 {
		t.Errorf("Detect makes %v allocations per frame (the engine's Run %v); want 0", allocs, runAllocs)
	}
}

func BenchmarkDetect(b *testing.B) {
	d := loadDetector(b)
	img := readImage(b, "dog.jpg")
	var dets []infer.Detection
	var pre, inf, post float64
	b.ReportAllocs()
	for b.Loop() {
		var t detector.Timing
		var err error
		dets, t, err = d.Detect(img, dets[:0])
		if err != nil {
			b.Fatal(err)
		}
		pre += t.Pre.Seconds()
		inf += t.Infer.Seconds()
		post += t.Post.Seconds()
	}
	n := float64(b.N)
	b.ReportMetric(pre/n*1e3, "pre-ms/op")
	b.ReportMetric(inf/n*1e3, "infer-ms/op")
	b.ReportMetric(post/n*1e3, "post-ms/op")
	b.ReportMetric((pre+post)/inf*100, "pre+post-%-of-infer")
}

// BenchmarkDecode decodes the golden output (the bundled model on dog.jpg) as Detect
// does, into a reused slice.
func BenchmarkDecode(b *testing.B) {
	m, err := infer.LoadManifest(bundleDir)
	if err != nil {
		b.Fatal(err)
	}
	out, meta, err := tensorfile.Read(goldenBase)
	if err != nil {
		b.Fatal(err)
	}
	dec, err := infer.NewDecoder(m, []infer.TensorInfo{{Name: "output", Type: infer.Float32, Shape: meta.Shape}})
	if err != nil {
		b.Fatal(err)
	}
	outs := [][]float32{out}
	var dets []infer.Detection
	b.ReportAllocs()
	for b.Loop() {
		dets = dec.Decode(outs, meta.Geometry, dets[:0])
	}
	if len(dets) != 3 {
		b.Fatalf("decoded %d detections, want the 3 of the reference: %v", len(dets), dets)
	}
}

func ExampleDetector_Detect() {
	b := onnxrt.New("")
	d, err := detector.Load(b, bundleDir, infer.LoadOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer d.Close()
	img := gocv.IMRead("testdata/person.jpg", gocv.IMReadColor)
	defer img.Close()
	dets, _, _ := d.Detect(img, nil)
	fmt.Println(dets[0].Label)
	// Output: person
}
