// Package enginetest is the conformance suite every infer.Backend runs from its own
// tests: the same detections as the reference on real images, Close twice, corrupt and
// truncated models, a bundle that does not fit its model, and concurrent use. It
// imports testing and gocv, so only _test.go files import it.
package enginetest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"gocv.io/x/gocv"
	"gopkg.in/yaml.v3"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/detector"
)

// Reference detections of YOLOX-Nano (COCO-80) at score >= 0.5, measured with OpenCV 4.6
// decode and DNN on yolox_nano.onnx (shared/models/README.md). Boxes are x1, y1, x2, y2
// in image pixels.
var reference = map[string][]infer.Detection{
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

// Tolerances against the reference, as shared/models/README.md suggests for a pipeline
// that follows the model's pre-processing (bilinear, BGR, pad 114, top-left).
const (
	minScore     = 0.5
	scoreTol     = 0.03
	minIoU       = 0.8
	goroutines   = 4
	detectsPerGo = 2
)

// Run runs the suite on backend with the YOLOX-Nano bundle in bundleDir (any of its
// exports: the suite checks the ONNX reference detections). The backend must be
// available: a caller that cannot run it on this machine skips before calling Run, and
// says why.
func Run(t *testing.T, backend infer.Backend, bundleDir string, opts infer.LoadOptions) {
	t.Helper()
	if err := backend.Available(); err != nil {
		t.Fatalf("backend %s is not available: %v", backend.Name(), err)
	}
	m, err := infer.LoadManifest(bundleDir)
	if err != nil {
		t.Fatal(err)
	}
	modelPath := m.Path(bundleDir)

	t.Run("Detections", func(t *testing.T) {
		d := load(t, backend, bundleDir, opts)
		for _, name := range []string{"dog.jpg", "person.jpg"} {
			t.Run(name, func(t *testing.T) {
				dets, _, err := d.Detect(readImage(t, name), nil)
				if err != nil {
					t.Fatal(err)
				}
				checkReference(t, dets, reference[name])
			})
		}
	})

	t.Run("CloseTwice", func(t *testing.T) {
		e, err := backend.Load(modelPath, opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Close(); err != nil {
			t.Fatalf("first Close: %v", err)
		}
		if err := e.Close(); err == nil {
			t.Error("second Close returned nil, want an error")
		}
		if err := e.Run(); err == nil {
			t.Error("Run after Close returned nil, want an error")
		}
	})

	t.Run("CorruptModel", func(t *testing.T) {
		data, err := os.ReadFile(modelPath)
		if err != nil {
			t.Fatal(err)
		}
		garbage := make([]byte, len(data))
		rng := rand.New(rand.NewPCG(1, 2))
		for i := range garbage {
			garbage[i] = byte(rng.UintN(256))
		}
		// Garbage that starts like the real file, so it passes a magic-number check.
		lookalike := append(slices.Clone(data[:64]), garbage[64:]...)
		// Cuts remove content, not just trailing padding: TFLite 2.2 rightly loads a
		// copy short of its last byte, which holds only a field it does not read.
		cases := map[string][]byte{
			"empty":          {},
			"truncated-16":   data[:16],
			"truncated-4KiB": data[:4096],
			"truncated-half": data[:len(data)/2],
			"truncated-tail": data[:len(data)-4096],
			"garbage":        garbage,
			"garbage-header": lookalike,
		}
		dir := t.TempDir()
		for name, content := range cases {
			t.Run(name, func(t *testing.T) {
				path := filepath.Join(dir, name+filepath.Ext(modelPath))
				if err := os.WriteFile(path, content, 0o644); err != nil {
					t.Fatal(err)
				}
				e, err := backend.Load(path, opts)
				if err == nil {
					e.Close()
					t.Fatalf("%s model (%d bytes) loaded without error", name, len(content))
				}
				if !strings.Contains(err.Error(), path) {
					t.Errorf("error does not name the file %s: %v", path, err)
				}
			})
		}
		if _, err := backend.Load(filepath.Join(dir, "missing"+filepath.Ext(modelPath)), opts); err == nil {
			t.Error("missing model file loaded without error")
		}
	})

	t.Run("WrongInputSize", func(t *testing.T) {
		dir := t.TempDir()
		w := m.Input.Width + 64 // still a multiple of the strides
		writeBundle(t, bundleDir, dir, func(input map[string]any) {
			input["width"], input["height"] = w, w
		})
		d, err := detector.Load(backend, dir, opts)
		if err == nil {
			d.Close()
			t.Fatalf("a bundle declaring a %dx%d input loaded for a %dx%d model", w, w, m.Input.Width, m.Input.Height)
		}
		if !strings.Contains(err.Error(), "input") {
			t.Errorf("error does not say the input does not match: %v", err)
		}
	})

	t.Run("ConcurrentDetect", func(t *testing.T) {
		// The detector serialises calls on its engine (engines are for one caller at a
		// time), so concurrent callers get exactly the results of serial calls.
		d := load(t, backend, bundleDir, opts)
		img := readImage(t, "dog.jpg")
		want, _, err := d.Detect(img, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(want) == 0 {
			t.Fatal("no detections to compare")
		}
		frames := make([]gocv.Mat, goroutines)
		for i := range frames {
			frames[i] = img.Clone()
			defer frames[i].Close()
		}
		errs := make(chan error, goroutines*detectsPerGo)
		var wg sync.WaitGroup
		for i := range goroutines {
			wg.Go(func() {
				for range detectsPerGo {
					got, _, err := d.Detect(frames[i], nil)
					if err != nil {
						errs <- err
						return
					}
					if !reflect.DeepEqual(got, want) {
						errs <- fmt.Errorf("goroutine %d got %v, want %v", i, got, want)
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

// BenchmarkRun measures the engine's Run alone (no pre-processing or decoding) on
// the model at path, with every input element 114 (a letterbox's grey).
func BenchmarkRun(b *testing.B, backend infer.Backend, path string, opts infer.LoadOptions) {
	if err := backend.Available(); err != nil {
		b.Fatalf("backend %s is not available: %v", backend.Name(), err)
	}
	e, err := backend.Load(path, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	for i := range e.Inputs() {
		in := e.Input(i)
		for k := range in {
			in[k] = 114
		}
	}
	if err := e.Run(); err != nil { // warm-up
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := e.Run(); err != nil {
			b.Fatal(err)
		}
	}
}

func load(t *testing.T, backend infer.Backend, dir string, opts infer.LoadOptions) *detector.Detector {
	t.Helper()
	d, err := detector.Load(backend, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// testdata is infer/detector/testdata, found from this file's path so the suite works
// from any package's test directory.
func testdata() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "detector", "testdata")
}

func readImage(t *testing.T, name string) gocv.Mat {
	t.Helper()
	path := filepath.Join(testdata(), name)
	img := gocv.IMRead(path, gocv.IMReadColor)
	if img.Empty() {
		t.Fatalf("cannot read %s", path)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

// checkReference wants the same labels at score >= minScore as the reference, each
// score within scoreTol and each box with IoU >= minIoU.
func checkReference(t *testing.T, dets []infer.Detection, want []infer.Detection) {
	t.Helper()
	var got []infer.Detection
	for _, d := range dets {
		if d.Score >= minScore {
			got = append(got, d)
		}
	}
	labels := func(ds []infer.Detection) []string {
		var l []string
		for _, d := range ds {
			l = append(l, d.Label)
		}
		slices.Sort(l)
		return l
	}
	if !slices.Equal(labels(got), labels(want)) {
		t.Fatalf("labels at score >= %v: got %v, want %v (detections %v)", minScore, labels(got), labels(want), got)
	}
	// dog and horse in person.jpg differ by 1e-4: match by label, not by order.
	for _, w := range want {
		g := got[slices.IndexFunc(got, func(g infer.Detection) bool { return g.Label == w.Label })]
		if diff := g.Score - w.Score; diff > scoreTol || diff < -scoreTol {
			t.Errorf("%s score %.4f, want %.4f ± %v", w.Label, g.Score, w.Score, scoreTol)
		}
		if iou := infer.IoU(g.Box, w.Box); iou < minIoU {
			t.Errorf("%s box %v, want %v (IoU %.3f < %v)", w.Label, g.Box, w.Box, iou, minIoU)
		}
	}
}

// writeBundle copies the bundle in src to dst with its input section changed by
// edit; the model file is a symlink to the original.
func writeBundle(t *testing.T, src, dst string, edit func(input map[string]any)) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(src, infer.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	input, ok := doc["input"].(map[string]any)
	if !ok {
		t.Fatalf("%s has no input section", src)
	}
	edit(input)
	out, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, infer.ManifestFile), out, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := infer.ParseManifest(out)
	if err != nil {
		t.Fatalf("edited manifest: %v", err)
	}
	model, err := filepath.Abs(m.Path(src))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(m.Path(dst)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(model, m.Path(dst)); err != nil {
		t.Fatal(err)
	}
}
