package agent

import (
	"fmt"
	"path/filepath"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/infer/eval"
)

// EvalBundle runs a bundle's model on a labelled image set and measures it (`vigil
// model eval`): by default the bundle's own golden/ images (infer/eval has the format).
func EvalBundle(bundleDir, imagesDir string, mc config.Model, rt config.Runtimes) (eval.Result, error) {
	if imagesDir == "" {
		imagesDir = filepath.Join(bundleDir, eval.GoldenDir)
	}
	specs := eval.Labelled(imagesDir)
	if len(specs) == 0 {
		return eval.Result{}, fmt.Errorf("no labelled images (NAME.json beside NAME.jpg) in %s", imagesDir)
	}
	det, _, err := loadModel(newBackends(rt), bundleDir, mc)
	if err != nil {
		return eval.Result{}, err
	}
	defer det.Close()
	return eval.Measure(detectFiles(det), specs, det.Manifest().Thresholds.Score)
}
