package rules

import (
	"testing"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/infer"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func person(score float32, box [4]float32) infer.Detection {
	return infer.Detection{Label: "person", Score: score, Box: box}
}

var centre = [4]float32{300, 200, 340, 280} // centre (320, 240) of a 640x480 frame

func frame(dets ...infer.Detection) Frame {
	return Frame{Camera: "door", Width: 640, Height: 480, Detections: dets}
}

func baseRule() config.Rule {
	return config.Rule{
		Name: "r", Camera: "door", Labels: []string{"person"}, MinScore: 0.5,
		Frames: config.Frames{N: 1, Of: 1}, Action: config.Action{Actuator: "relay", Pulse: time.Second},
	}
}

func TestFilters(t *testing.T) {
	for name, tc := range map[string]struct {
		mutate func(*config.Rule)
		det    infer.Detection
		camera string
		fires  bool
	}{
		"match":              {det: person(0.9, centre), fires: true},
		"other camera":       {det: person(0.9, centre), camera: "gate"},
		"low score":          {det: person(0.4, centre)},
		"score at threshold": {det: person(0.5, centre), fires: true},
		"other label":        {det: infer.Detection{Label: "dog", Score: 0.9, Box: centre}},
		"any label":          {mutate: func(r *config.Rule) { r.Labels = nil }, det: infer.Detection{Label: "dog", Score: 0.9, Box: centre}, fires: true},
		"too small":          {mutate: func(r *config.Rule) { r.MinArea = 0.05 }, det: person(0.9, centre)},
		"big enough":         {mutate: func(r *config.Rule) { r.MinArea = 0.01 }, det: person(0.9, centre), fires: true},
		"outside zone": {
			mutate: func(r *config.Rule) { r.Zone = [][]float64{{0, 0}, {0.4, 0}, {0.4, 1}, {0, 1}} },
			det:    person(0.9, centre),
		},
		"inside zone": {
			mutate: func(r *config.Rule) { r.Zone = [][]float64{{0.4, 0.4}, {0.6, 0.4}, {0.6, 0.6}, {0.4, 0.6}} },
			det:    person(0.9, centre), fires: true,
		},
		"inside triangle": {
			mutate: func(r *config.Rule) { r.Zone = [][]float64{{0.5, 0}, {1, 1}, {0, 1}} },
			det:    person(0.9, centre), fires: true,
		},
	} {
		t.Run(name, func(t *testing.T) {
			r := baseRule()
			if tc.mutate != nil {
				tc.mutate(&r)
			}
			f := frame(tc.det)
			if tc.camera != "" {
				f.Camera = tc.camera
			}
			got := New([]config.Rule{r}, nil).Evaluate(f)
			if (len(got) == 1) != tc.fires {
				t.Fatalf("fired %v, want %v", got, tc.fires)
			}
			if tc.fires && (got[0].Rule != "r" || len(got[0].Matches) != 1 || got[0].Action.Actuator != "relay") {
				t.Errorf("firing %+v", got[0])
			}
		})
	}
}

func TestNOfMFrames(t *testing.T) {
	r := baseRule()
	r.Frames = config.Frames{N: 3, Of: 5}
	e := New([]config.Rule{r}, nil)
	seen, empty := frame(person(0.9, centre)), frame()
	// seen, empty, seen: 2 of the last 3 -> no; seen: 3 of 4 -> fire.
	for i, f := range []Frame{seen, empty, seen} {
		if got := e.Evaluate(f); len(got) != 0 {
			t.Fatalf("frame %d fired early", i)
		}
	}
	if got := e.Evaluate(seen); len(got) != 1 {
		t.Fatal("3 of the last 5 did not fire")
	}
	// A frame without a match never fires, whatever the window holds.
	if got := e.Evaluate(empty); len(got) != 0 {
		t.Fatal("fired on a frame without a match")
	}
}

func TestWindowForgetsOldFrames(t *testing.T) {
	r := baseRule()
	r.Frames = config.Frames{N: 2, Of: 3}
	e := New([]config.Rule{r}, nil)
	seen, empty := frame(person(0.9, centre)), frame()
	e.Evaluate(seen)
	e.Evaluate(empty)
	e.Evaluate(empty)
	if got := e.Evaluate(seen); len(got) != 0 {
		t.Fatal("a match 3 frames back is outside a window of 3 and must not count")
	}
}

func TestCooldown(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	r := baseRule()
	r.Cooldown = 5 * time.Second
	e := New([]config.Rule{r}, c.now)
	seen := frame(person(0.9, centre))
	if len(e.Evaluate(seen)) != 1 {
		t.Fatal("first match did not fire")
	}
	c.advance(4 * time.Second)
	if len(e.Evaluate(seen)) != 0 {
		t.Fatal("fired inside the cooldown")
	}
	c.advance(time.Second)
	if len(e.Evaluate(seen)) != 1 {
		t.Fatal("did not fire once the cooldown passed")
	}
}

func TestSeveralRules(t *testing.T) {
	a, b := baseRule(), baseRule()
	b.Name, b.Labels = "dogs", []string{"dog"}
	got := New([]config.Rule{a, b}, nil).Evaluate(frame(person(0.9, centre), infer.Detection{Label: "dog", Score: 0.8, Box: centre}))
	if len(got) != 2 || got[0].Rule != "r" || got[1].Rule != "dogs" || got[1].Matches[0].Label != "dog" {
		t.Fatalf("%+v", got)
	}
}
