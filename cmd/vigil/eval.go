package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/backends"
	"github.com/vigil-edge/vigil/infer/eval"
)

const evalUsage = `Usage: vigil model eval BUNDLE_DIR [--images DIR] [--backend NAME] [--json]

Runs the bundle's model on a labelled image set and prints precision and recall at the
bundle's score threshold, the mean IoU of the boxes it found, and mAP at IoU 0.5. The set
is a directory of NAME.jpg (or .png) with NAME.json beside each:
  {"detections": [{"label": "dog", "box": [x1, y1, x2, y2]}]}
(image pixels); by default the bundle's golden/ directory. Exit status 0, 1 when the model
cannot run on the set, 2 on usage errors.

`

func evalModel(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("model eval", flag.ContinueOnError)
	fs.SetOutput(stderr)
	images := fs.String("images", "", "labelled image directory (default BUNDLE_DIR/golden)")
	backend := fs.String("backend", "", "backend to run it on (default: the bundle's)")
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprint(stderr, evalUsage)
		fs.PrintDefaults()
	}
	var dirs []string
	for {
		if err := fs.Parse(args); err != nil {
			return parseExit(err)
		}
		if fs.NArg() == 0 {
			break
		}
		dirs = append(dirs, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(dirs) != 1 {
		fs.Usage()
		return exitUsage
	}
	res, err := evalBundle(dirs[0], *images, *backend)
	if err != nil {
		fmt.Fprintf(stderr, "vigil model eval: %v\n", err)
		return exitFailed
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
		return exitOK
	}
	fmt.Fprintf(stdout, "%d images, %d labelled objects\n", res.Images, res.Objects)
	fmt.Fprintf(stdout, "precision %.3f  recall %.3f  (%d found, %d false, %d missed)\n", res.Precision, res.Recall, res.TP, res.FP, res.FN)
	fmt.Fprintf(stdout, "mean IoU  %.3f\nmAP@0.5   %.3f\n", res.MeanIoU, res.MAP50)
	labels := slices.Sorted(maps.Keys(res.AP50))
	var parts []string
	for _, l := range labels {
		parts = append(parts, fmt.Sprintf("%s %.3f", l, res.AP50[l]))
	}
	fmt.Fprintf(stdout, "AP@0.5    %s\n", strings.Join(parts, ", "))
	return exitOK
}

// evalBundle runs a bundle's model, on backend ("" for the bundle's choice), on a
// labelled image set (default the bundle's own golden/ images; infer/eval has the
// format) and measures it.
func evalBundle(bundleDir, imagesDir, backend string) (eval.Result, error) {
	if imagesDir == "" {
		imagesDir = filepath.Join(bundleDir, eval.GoldenDir)
	}
	specs := eval.Labelled(imagesDir)
	if len(specs) == 0 {
		return eval.Result{}, fmt.Errorf("no labelled images (NAME.json beside NAME.jpg) in %s", imagesDir)
	}
	det, _, err := backends.Load(backends.New(backends.Libraries{}), bundleDir, backend, infer.LoadOptions{})
	if err != nil {
		return eval.Result{}, err
	}
	defer det.Close()
	return eval.Measure(det.FileDetector(), specs, det.Manifest().Thresholds.Score)
}
