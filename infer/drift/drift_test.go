package drift

import (
	"context"
	"image"
	"math"
	"path/filepath"
	"testing"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/infer"
)

var clip = filepath.Join("..", "..", "assets", "footage", "people.mp4")

// frames reads n frames of the bundled clip (looping), each passed through f.
func feed(t *testing.T, m *Monitor, src capture.Source, n int, f func(in gocv.Mat) gocv.Mat) (events []int) {
	t.Helper()
	for range n {
		mat, err := src.Read(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out := f(mat)
		if e := m.Observe(out, nil); e != 0 {
			events = append(events, e)
		}
		if out.Ptr() != mat.Ptr() {
			out.Close()
		}
		mat.Close()
	}
	return events
}

func same(in gocv.Mat) gocv.Mat { return in }

func darker(in gocv.Mat) gocv.Mat {
	out := gocv.NewMat()
	in.ConvertToWithParams(&out, gocv.MatTypeCV8UC3, 0.35, 0)
	return out
}

// recoloured swaps the red and blue channels: as bright, as sharp, other colours.
func recoloured(in gocv.Mat) gocv.Mat {
	out := gocv.NewMat()
	gocv.CvtColor(in, &out, gocv.ColorBGRToRGB)
	return out
}

func blurred(in gocv.Mat) gocv.Mat {
	out := gocv.NewMat()
	gocv.GaussianBlur(in, &out, image.Pt(31, 31), 0, 0, gocv.BorderDefault)
	return out
}

func newMonitor(t *testing.T) (*Monitor, capture.Source) {
	// Baseline and window of 450 frames each (18 s of the 26 s clip, people coming and
	// going): the scene varies within the clip, so the window must see enough of it.
	m := New(Options{Every: 3, Baseline: 150, Window: 150, Threshold: 0.25, Clear: 0.1})
	t.Cleanup(m.Close)
	src, err := capture.OpenFile(clip, true, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	if ev := feed(t, m, src, 450, same); len(ev) != 0 || !m.Status().Baseline {
		t.Fatalf("baseline: %v %+v", ev, m.Status())
	}
	return m, src
}

func TestDriftStaysLowOnTheSameScene(t *testing.T) {
	m, src := newMonitor(t)
	peak := 0.0
	for range 15 {
		if ev := feed(t, m, src, 100, same); len(ev) != 0 {
			t.Errorf("events on the clip itself: %v (%+v)", ev, m.Status())
		}
		peak = max(peak, m.Status().Score)
	}
	t.Logf("highest drift score on the clip itself: %.3f (threshold 0.25)", peak)
	if ev := feed(t, m, src, 0, same); len(ev) != 0 {
		t.Errorf("events on the clip itself: %v (%+v)", ev, m.Status())
	}
	if st := m.Status(); st.Score >= 0.25 || st.Drifting {
		t.Errorf("drift on the clip itself: %+v", st)
	}
}

func TestDriftRises(t *testing.T) {
	for _, tc := range []struct {
		name    string
		f       func(gocv.Mat) gocv.Mat
		feature string
	}{
		{"darkened", darker, "brightness"},
		{"blurred", blurred, "sharpness"},
		{"recoloured", recoloured, "colour"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, src := newMonitor(t)
			ev := feed(t, m, src, 600, tc.f)
			st := m.Status()
			t.Logf("%s: %+v", tc.name, st)
			if len(ev) != 1 || ev[0] != 1 || !st.Drifting || st.Score <= 0.25 || st.Features[tc.feature] <= 0.25 {
				t.Fatalf("events %v, status %+v", ev, st)
			}
			// Back to the normal scene: it clears once, with hysteresis.
			ev = feed(t, m, src, 900, same)
			if len(ev) != 1 || ev[0] != -1 || m.Status().Drifting {
				t.Errorf("after recovery: events %v, status %+v", ev, m.Status())
			}
		})
	}
	t.Run("another scene", func(t *testing.T) {
		m, _ := newMonitor(t)
		ev := feed(t, m, capture.NewPattern(768, 432, 1000), 600, same)
		if len(ev) != 1 || !m.Status().Drifting {
			t.Fatalf("events %v, status %+v", ev, m.Status())
		}
	})
}

// The class mix: the same number of objects with the same scores, but a label the
// baseline never saw (or in other shares) is drift; frames without detections are no
// evidence either way.
func TestDriftClassMix(t *testing.T) {
	frame := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(90, 120, 150, 0), 54, 96, gocv.MatTypeCV8UC3)
	defer frame.Close()
	m := New(Options{Every: 1, Baseline: 100, Window: 100, Threshold: 0.25, Clear: 0.1})
	defer m.Close()
	det := func(label string) []infer.Detection {
		return []infer.Detection{{Label: label, Score: 0.8, Box: [4]float32{0, 0, 10, 10}}}
	}
	for i := range 100 {
		label := "person"
		if i%4 == 0 {
			label = "car"
		}
		m.Observe(frame, det(label))
	}
	var events []int
	observe := func(n int, dets []infer.Detection) {
		for range n {
			if e := m.Observe(frame, dets); e != 0 {
				events = append(events, e)
			}
		}
	}
	// The same mix, and then empty frames mixed in: no drift.
	for i := range 100 {
		label := "person"
		if i%4 == 0 {
			label = "car"
		}
		observe(1, det(label))
	}
	if st := m.Status(); st.Drifting || st.Score > 0.1 || len(events) != 0 {
		t.Fatalf("the baseline's own mix: %+v %v", st, events)
	}
	// A new class takes over.
	observe(100, det("forklift"))
	if st := m.Status(); !st.Drifting || st.Feature != "classes" || len(events) != 1 {
		t.Fatalf("a new class: %+v %v", st, events)
	}
}

// BenchmarkObserve is the cost of one sampled frame (one in drift.every is sampled);
// compare with the inference time of the model (BenchmarkDetect in infer/detector).
func BenchmarkObserve(b *testing.B) {
	m := New(Options{Every: 1, Baseline: 100, Window: 100, Threshold: 0.25, Clear: 0.1})
	defer m.Close()
	src, err := capture.OpenFile(clip, true, false)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	frame, err := src.Read(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	defer frame.Close()
	for b.Loop() {
		m.Observe(frame, nil)
	}
}

// Frames of any size and layout are read: odd sizes, grey, BGRA, too small for the
// grid, a view into a larger frame (not continuous). A uniform grey frame of level 100
// has brightness 100, no contrast, no sharpness and no hue.
func TestGridReadsAnyFrame(t *testing.T) {
	m := New(Options{Every: 1, Baseline: 10, Window: 10, Threshold: 0.25, Clear: 0.1})
	defer m.Close()
	big := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(100, 100, 100, 0), 480, 640, gocv.MatTypeCV8UC3)
	defer big.Close()
	view := big.Region(image.Rect(3, 5, 503, 405))
	defer view.Close()
	for name, frame := range map[string]gocv.Mat{
		"odd size":  gocv.NewMatWithSizeFromScalar(gocv.NewScalar(100, 100, 100, 0), 1081, 1921, gocv.MatTypeCV8UC3),
		"grey":      gocv.NewMatWithSizeFromScalar(gocv.NewScalar(100, 0, 0, 0), 240, 320, gocv.MatTypeCV8UC1),
		"bgra":      gocv.NewMatWithSizeFromScalar(gocv.NewScalar(100, 100, 100, 255), 240, 320, gocv.MatTypeCV8UC4),
		"too small": gocv.NewMatWithSizeFromScalar(gocv.NewScalar(100, 100, 100, 0), 40, 60, gocv.MatTypeCV8UC3),
		"view":      view,
	} {
		b, c, s := m.grid(frame)
		if math.Abs(b-100) > 0.5 || c > 0.5 || s > 0.5 || m.hue[hueBins] != gridW*gridH {
			t.Errorf("%s: brightness %.2f, contrast %.2f, sharpness %.2f, grey cells %d of %d", name, b, c, s, m.hue[hueBins], gridW*gridH)
		}
		if name != "view" {
			frame.Close()
		}
	}
}
