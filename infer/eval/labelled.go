package eval

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vigil-edge/vigil/infer"
)

// A labelled image set is a directory of images, NAME.jpg or NAME.png, each with
// NAME.json: {"detections": [{"label": "dog", "box": [x1, y1, x2, y2], "min_score": 0.5}]},
// the objects in it (box in image pixels). A bundle's own set is its golden/ folder:
// checked at every push's warm-up, and what `vigil model eval` measures by default.

// GoldenDir is the folder of a bundle's labelled images.
const GoldenDir = "golden"

// Object is one labelled object. MinScore is for golden checks; 0 means the bundle's
// threshold.
type Object struct {
	Label    string     `json:"label"`
	Box      [4]float32 `json:"box"`
	MinScore float32    `json:"min_score"`
}

// DetectFunc runs the model on the image file at path (the caller owns the runtime,
// which keeps this package pure Go). The detections need be valid only until the next
// call.
type DetectFunc func(path string) ([]infer.Detection, error)

// Labelled lists the labelled images of dir: the paths of their NAME.json files.
func Labelled(dir string) []string {
	specs, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	return specs
}

// Measure runs detect on the labelled images whose NAME.json files are specs and scores
// it (Evaluate) at threshold.
func Measure(detect DetectFunc, specs []string, threshold float32) (Result, error) {
	var images []Image
	err := eachLabelled(detect, specs, func(name string, objects []Object, dets []infer.Detection) error {
		truth := make([]Truth, len(objects))
		for i, o := range objects {
			truth[i] = Truth{Label: o.Label, Box: o.Box}
		}
		images = append(images, Image{Name: name, Truth: truth, Detections: slices.Clone(dets)})
		return nil
	})
	if err != nil {
		return Result{}, err
	}
	return Evaluate(images, threshold), nil
}

// CheckBundle runs a bundle's own check on its golden images (in dir/golden): with eval
// minimums in its model.yaml, the model is measured against them; otherwise each
// expected object must be found. A bundle without golden images and minimums passes.
func CheckBundle(detect DetectFunc, dir string, m *infer.Manifest) error {
	specs := Labelled(filepath.Join(dir, GoldenDir))
	if m.Eval != (infer.EvalSpec{}) {
		return checkMinimums(detect, specs, m)
	}
	return checkGolden(detect, specs, m.Thresholds.Score)
}

// checkGolden: each expected object must be found with its label, at least its score,
// and a box overlapping the expected one by IoU >= MatchIoU.
func checkGolden(detect DetectFunc, specs []string, threshold float32) error {
	return eachLabelled(detect, specs, func(name string, want []Object, dets []infer.Detection) error {
		for _, w := range want {
			min := w.MinScore
			if min == 0 {
				min = threshold
			}
			found := slices.ContainsFunc(dets, func(d infer.Detection) bool {
				return d.Label == w.Label && d.Score >= min && infer.IoU(d.Box, w.Box) >= MatchIoU
			})
			if !found {
				return fmt.Errorf("golden image %s: no %s with score >= %.2f near %v (found %s)", name, w.Label, min, w.Box, describe(dets))
			}
		}
		return nil
	})
}

// checkMinimums measures the model on the labelled images against the minimums its
// model.yaml asks for (eval.min_precision, min_recall, min_map50).
func checkMinimums(detect DetectFunc, specs []string, m *infer.Manifest) error {
	want := m.Eval
	if len(specs) == 0 {
		return fmt.Errorf("model.yaml asks for eval minimums, but the bundle has no labelled images in %s/", GoldenDir)
	}
	got, err := Measure(detect, specs, m.Thresholds.Score)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"precision", got.Precision, want.MinPrecision}, {"recall", got.Recall, want.MinRecall}, {"mAP@0.5", got.MAP50, want.MinMAP50}} {
		if c.got < c.want {
			return fmt.Errorf("eval on %d labelled images: %s %.3f is under the bundle's minimum %.3f", got.Images, c.name, c.got, c.want)
		}
	}
	return nil
}

// eachLabelled runs detect on each labelled image (NAME.json with NAME.jpg or NAME.png
// beside it) and hands visit the image's name, its objects and the detections.
func eachLabelled(detect DetectFunc, specs []string, visit func(name string, objects []Object, dets []infer.Detection) error) error {
	for _, spec := range specs {
		var g struct {
			Detections []Object `json:"detections"`
		}
		b, err := os.ReadFile(spec)
		if err == nil {
			err = json.Unmarshal(b, &g)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", spec, err)
		}
		base := strings.TrimSuffix(spec, ".json")
		img := base + ".jpg"
		if _, err := os.Stat(img); err != nil {
			img = base + ".png"
		}
		if _, err := os.Stat(img); err != nil {
			return fmt.Errorf("%s: no %s.jpg or .png beside it", spec, filepath.Base(base))
		}
		dets, err := detect(img)
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(base), err)
		}
		if err := visit(filepath.Base(base), g.Detections, dets); err != nil {
			return err
		}
	}
	return nil
}

// describe lists detections briefly, for an error message.
func describe(dets []infer.Detection) string {
	if len(dets) == 0 {
		return "nothing"
	}
	parts := make([]string, 0, len(dets))
	for _, d := range dets[:min(len(dets), 5)] {
		parts = append(parts, fmt.Sprintf("%s %.2f", d.Label, d.Score))
	}
	return strings.Join(parts, ", ")
}
