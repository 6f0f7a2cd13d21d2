package shadow

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/onnxrt"
)

// Agreement is the F1 of the candidate's detections against the running model's.
func TestShadowAgreementCounts(t *testing.T) {
	det := loadTestDetector(t)
	s := New(det, "", 1, "")
	box := [4]float32{10, 10, 100, 100}
	active := []infer.Detection{{Label: "dog", Score: 0.9, Box: box}, {Label: "car", Score: 0.9, Box: [4]float32{200, 10, 300, 100}}}
	// The candidate finds the dog, calls the car a truck, and adds nothing else.
	cand := []infer.Detection{{Label: "dog", Score: 0.8, Box: box}, {Label: "truck", Score: 0.8, Box: [4]float32{200, 10, 300, 100}}}
	s.record(job{dets: active, active: time.Millisecond}, cand, 2*time.Millisecond, nil)
	st := s.Status("default")
	// dog: 1 agreed; car: 1 missed; truck: 1 extra -> F1 = 2*1 / (2*1 + 1 + 1) = 0.5.
	if st.Agreement != 0.5 || st.PerClass["dog"] != 1 || st.PerClass["car"] != 0 || st.PerClass["truck"] != 0 || st.LatencyRatio != 2 {
		t.Errorf("%+v", st)
	}
}

func loadTestDetector(t *testing.T) *detector.Detector {
	t.Helper()
	d, err := detector.Load(onnxrt.New(""), filepath.Join("..", "..", "assets", "models", "yolox-nano"), infer.LoadOptions{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}
