package eval

import (
	"math"
	"testing"

	"github.com/vigil-edge/vigil/infer"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestEvaluate(t *testing.T) {
	dog := [4]float32{100, 100, 200, 300}
	car := [4]float32{300, 50, 500, 150}
	images := []Image{
		{Name: "a", Truth: []Truth{{"dog", dog}, {"car", car}}, Detections: []infer.Detection{
			{Label: "dog", Score: 0.9, Box: [4]float32{102, 98, 200, 300}},
			{Label: "car", Score: 0.8, Box: car},
			{Label: "cat", Score: 0.7, Box: dog},                           // wrong label: a false positive
			{Label: "car", Score: 0.3, Box: [4]float32{300, 50, 490, 150}}, // below the threshold, and a duplicate
		}},
		{Name: "b", Truth: []Truth{{"person", [4]float32{0, 0, 50, 100}}}}, // missed
	}
	r := Evaluate(images, 0.5)
	if r.TP != 2 || r.FP != 1 || r.FN != 1 || r.Objects != 3 || r.Images != 2 {
		t.Fatalf("counts %+v", r)
	}
	if !near(r.Precision, 2.0/3) || !near(r.Recall, 2.0/3) {
		t.Errorf("precision %v recall %v", r.Precision, r.Recall)
	}
	// dog and car are found first and exactly once: AP 1 each; person never: 0.
	if !near(r.AP50["dog"], 1) || !near(r.AP50["car"], 1) || !near(r.AP50["person"], 0) || !near(r.MAP50, 2.0/3) {
		t.Errorf("AP %v mAP %v", r.AP50, r.MAP50)
	}
	if r.MeanIoU <= 0.9 || r.MeanIoU > 1 {
		t.Errorf("mean IoU %v", r.MeanIoU)
	}
}

// A false positive ranked above the true one halves that class's precision at full
// recall: AP = 0.5.
func TestAveragePrecisionRanking(t *testing.T) {
	box := [4]float32{0, 0, 10, 10}
	r := Evaluate([]Image{{Truth: []Truth{{"dog", box}}, Detections: []infer.Detection{
		{Label: "dog", Score: 0.9, Box: [4]float32{50, 50, 60, 60}},
		{Label: "dog", Score: 0.8, Box: box},
	}}}, 0.5)
	if !near(r.AP50["dog"], 0.5) {
		t.Errorf("AP %v, want 0.5", r.AP50["dog"])
	}
}
