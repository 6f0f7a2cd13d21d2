package agent

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/onnxrt"
)

// The ONNX model's TFLite twin, in shadow on the bundled clip: it runs on a sample of
// the frames and agrees with the running model on what it finds.
func TestShadowModelAgreement(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	twin, _ := filepath.Abs(filepath.Join("..", "infer", "testdata", "models", "yolox-nano-float16"))
	cfg.Models[0].Shadow = config.Shadow{Bundle: twin, Every: 2}
	r := start(t, cfg)
	var sh *ShadowStatus
	waitFor(t, 60*time.Second, "the shadow to run on 8 frames", func() bool {
		sh = r.status(t).Models[0].Shadow
		return sh != nil && sh.Frames >= 8
	})
	if sh.Agreement < 0.8 || sh.Bundle != "yolox-nano-float16" || sh.Errors != 0 || sh.LatencyP50 <= 0 || sh.ActiveP50 <= 0 {
		t.Errorf("shadow %+v", sh)
	}
	if len(sh.PerClass) == 0 {
		t.Errorf("no class compared: %v", sh.PerClass)
	}
	t.Logf("shadow: agreement %.3f over %d frames, latency %.1f ms vs %.1f ms", sh.Agreement, sh.Frames, sh.LatencyP50, sh.ActiveP50)
}

// Agreement is the F1 of the candidate's detections against the running model's.
func TestShadowAgreementCounts(t *testing.T) {
	det := loadTestDetector(t)
	s := newShadow(det, "", 1)
	box := [4]float32{10, 10, 100, 100}
	active := []infer.Detection{{Label: "dog", Score: 0.9, Box: box}, {Label: "car", Score: 0.9, Box: [4]float32{200, 10, 300, 100}}}
	// The candidate finds the dog, calls the car a truck, and adds nothing else.
	cand := []infer.Detection{{Label: "dog", Score: 0.8, Box: box}, {Label: "truck", Score: 0.8, Box: [4]float32{200, 10, 300, 100}}}
	s.record(shadowJob{dets: active, active: time.Millisecond}, cand, 2*time.Millisecond, nil)
	st := s.status("default")
	// dog: 1 agreed; car: 1 missed; truck: 1 extra -> F1 = 2*1 / (2*1 + 1 + 1) = 0.5.
	if st.Agreement != 0.5 || st.PerClass["dog"] != 1 || st.PerClass["car"] != 0 || st.PerClass["truck"] != 0 || st.LatencyRatio != 2 {
		t.Errorf("%+v", st)
	}
}

func loadTestDetector(t *testing.T) *detector.Detector {
	t.Helper()
	d, err := detector.Load(onnxrt.New(""), filepath.Join("..", "assets", "models", "yolox-nano"), infer.LoadOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}
