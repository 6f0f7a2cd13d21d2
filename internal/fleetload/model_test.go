package fleetload

import (
	"testing"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/modelfile"
	"github.com/vigil-edge/vigil/infer/onnxrt"
)

// The generated bundle passes the checks a pushed bundle goes through (model.yaml
// against the model file), and ONNX Runtime runs it: a frame's dominant colour is its
// label, scored by the channel's mean brightness.
func TestMeanColourBundle(t *testing.T) {
	dir := t.TempDir()
	if err := WriteBundle(dir, "1.0.0"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := modelfile.CheckBundle(dir); err != nil {
		t.Fatalf("the bundle does not pass the install check: %v", err)
	}
	det, err := detector.Load(onnxrt.New(""), dir, infer.LoadOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer det.Close()
	for _, c := range []struct {
		bgr   gocv.Scalar
		label string
		score float32
	}{
		{gocv.NewScalar(0, 0, 255, 0), "red", 1},
		{gocv.NewScalar(0, 128, 0, 0), "green", 128.0 / 255},
		{gocv.NewScalar(204, 0, 0, 0), "blue", 204.0 / 255},
	} {
		frame := gocv.NewMatWithSizeFromScalar(c.bgr, 48, 64, gocv.MatTypeCV8UC3)
		dets, _, err := det.Detect(frame, nil)
		frame.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(dets) != 1 || dets[0].Label != c.label || abs(dets[0].Score-c.score) > 0.01 {
			t.Errorf("a %s frame: got %+v, want %s scored %.3f", c.label, dets, c.label, c.score)
		}
	}
	// Below the score threshold (0.2) nothing is reported.
	dark := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(10, 10, 10, 0), 48, 64, gocv.MatTypeCV8UC3)
	defer dark.Close()
	if dets, _, err := det.Detect(dark, nil); err != nil || len(dets) != 0 {
		t.Errorf("a dark frame: got %+v, %v; want nothing", dets, err)
	}
}

func abs(x float32) float32 {
	if x < 0 {
		return -x
	}
	return x
}
