package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/eval"
)

// EvalBundle runs a bundle's model on a labelled image set and measures it (`vigil
// model eval`). The set is a directory of images (NAME.jpg or NAME.png), each with
// NAME.json: {"detections": [{"label": "dog", "box": [x1, y1, x2, y2]}]} in image pixels,
// the same format as a bundle's golden images; by default the bundle's golden/ folder.
func EvalBundle(bundleDir, imagesDir string, mc config.Model, rt config.Runtimes) (eval.Result, error) {
	if imagesDir == "" {
		imagesDir = filepath.Join(bundleDir, goldenDir)
	}
	specs, err := filepath.Glob(filepath.Join(imagesDir, "*.json"))
	if err != nil || len(specs) == 0 {
		return eval.Result{}, fmt.Errorf("no labelled images (NAME.json beside NAME.jpg) in %s", imagesDir)
	}
	det, _, err := loadModel(newBackends(rt), bundleDir, mc)
	if err != nil {
		return eval.Result{}, err
	}
	defer det.Close()
	return evalImages(det, specs)
}

// evalImages runs det on the labelled images whose NAME.json files are specs.
func evalImages(det *detector.Detector, specs []string) (eval.Result, error) {
	var images []eval.Image
	err := detectLabelled(det, specs, func(name string, objects []labelledObject, dets []infer.Detection) error {
		truth := make([]eval.Truth, len(objects))
		for i, o := range objects {
			truth[i] = eval.Truth{Label: o.Label, Box: o.Box}
		}
		images = append(images, eval.Image{Name: name, Truth: truth, Detections: slices.Clone(dets)})
		return nil
	})
	if err != nil {
		return eval.Result{}, err
	}
	return eval.Evaluate(images, det.Manifest().Thresholds.Score), nil
}

// labelledObject is one object of a labelled image's NAME.json (a bundle's golden
// images, or an eval set). MinScore is for golden checks; 0 means the bundle's threshold.
type labelledObject struct {
	Label    string     `json:"label"`
	Box      [4]float32 `json:"box"`
	MinScore float32    `json:"min_score"`
}

// detectLabelled runs det on each labelled image (NAME.json with NAME.jpg or NAME.png
// beside it) and hands visit the image's name, its objects and the detections; the
// detections are valid only during the call.
func detectLabelled(det *detector.Detector, specs []string, visit func(name string, objects []labelledObject, dets []infer.Detection) error) error {
	var dets []infer.Detection
	for _, spec := range specs {
		var g struct {
			Detections []labelledObject `json:"detections"`
		}
		b, err := os.ReadFile(spec)
		if err == nil {
			err = json.Unmarshal(b, &g)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", spec, err)
		}
		base := strings.TrimSuffix(spec, ".json")
		img := gocv.IMRead(base+".jpg", gocv.IMReadColor)
		if img.Empty() {
			img = gocv.IMRead(base+".png", gocv.IMReadColor)
		}
		if img.Empty() {
			return fmt.Errorf("%s: no %s.jpg or .png beside it", spec, filepath.Base(base))
		}
		dets, _, err = det.Detect(img, dets[:0])
		img.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(base), err)
		}
		if err := visit(filepath.Base(base), g.Detections, dets); err != nil {
			return err
		}
	}
	return nil
}
