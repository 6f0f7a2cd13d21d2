package rules

import (
	"slices"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/internal/testkit"
)

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
		// The box spans x 0.47..0.53, y 0.42..0.58 of the frame.
		"inside mode, box sticks out": {
			mutate: func(r *config.Rule) {
				r.Zone, r.ZoneMode = [][]float64{{0.4, 0.45}, {0.6, 0.45}, {0.6, 0.6}, {0.4, 0.6}}, "inside"
			},
			det: person(0.9, centre),
		},
		"inside mode, box within": {
			mutate: func(r *config.Rule) {
				r.Zone, r.ZoneMode = [][]float64{{0.4, 0.4}, {0.6, 0.4}, {0.6, 0.6}, {0.4, 0.6}}, "inside"
			},
			det: person(0.9, centre), fires: true,
		},
		"overlaps mode, corner inside": {
			mutate: func(r *config.Rule) {
				r.Zone, r.ZoneMode = [][]float64{{0.5, 0.5}, {1, 0.5}, {1, 1}, {0.5, 1}}, "overlaps"
			},
			det: person(0.9, centre), fires: true,
		},
		"overlaps mode, zone crosses the box without a vertex in it": {
			// A thin horizontal band through the box's middle: no corner of either is in the other.
			mutate: func(r *config.Rule) {
				r.Zone, r.ZoneMode = [][]float64{{0.4, 0.49}, {0.6, 0.49}, {0.6, 0.51}, {0.4, 0.51}}, "overlaps"
			},
			det: person(0.9, centre), fires: true,
		},
		"overlaps mode, apart": {
			mutate: func(r *config.Rule) {
				r.Zone, r.ZoneMode = [][]float64{{0, 0}, {0.3, 0}, {0.3, 0.3}, {0, 0.3}}, "overlaps"
			},
			det: person(0.9, centre),
		},
		"center mode, centre outside although overlapping": {
			mutate: func(r *config.Rule) { r.Zone = [][]float64{{0.52, 0.52}, {1, 0.52}, {1, 1}, {0.52, 1}} },
			det:    person(0.9, centre),
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
			got := New([]config.Rule{r}, Options{}).Evaluate(f)
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
	e := New([]config.Rule{r}, Options{})
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
	e := New([]config.Rule{r}, Options{})
	seen, empty := frame(person(0.9, centre)), frame()
	e.Evaluate(seen)
	e.Evaluate(empty)
	e.Evaluate(empty)
	if got := e.Evaluate(seen); len(got) != 0 {
		t.Fatal("a match 3 frames back is outside a window of 3 and must not count")
	}
}

func TestCooldown(t *testing.T) {
	c := testkit.NewClock(time.Unix(1000, 0))
	r := baseRule()
	r.Cooldown = 5 * time.Second
	e := New([]config.Rule{r}, Options{Now: c.Now})
	seen := frame(person(0.9, centre))
	if len(e.Evaluate(seen)) != 1 {
		t.Fatal("first match did not fire")
	}
	c.Advance(4 * time.Second)
	if len(e.Evaluate(seen)) != 0 {
		t.Fatal("fired inside the cooldown")
	}
	c.Advance(time.Second)
	if len(e.Evaluate(seen)) != 1 {
		t.Fatal("did not fire once the cooldown passed")
	}
}

func TestSeveralRules(t *testing.T) {
	a, b := baseRule(), baseRule()
	b.Name, b.Labels = "dogs", []string{"dog"}
	got := New([]config.Rule{a, b}, Options{}).Evaluate(frame(person(0.9, centre), infer.Detection{Label: "dog", Score: 0.8, Box: centre}))
	if len(got) != 2 || got[0].Rule != "r" || got[1].Rule != "dogs" || got[1].Matches[0].Label != "dog" {
		t.Fatalf("%+v", got)
	}
}

func TestEmptyFramesNeverFire(t *testing.T) {
	e := New([]config.Rule{baseRule()}, Options{})
	for range 10 {
		if got := e.Evaluate(frame()); len(got) != 0 {
			t.Fatalf("empty frame fired %+v", got)
		}
	}
}

func stateRule(hold time.Duration, until string) config.Rule {
	r := baseRule()
	r.Hold = hold
	r.Action = config.Action{Actuator: "relay", State: "high", Until: until}
	return r
}

// kinds is what each Evaluate returned, as "fire", "release" or "-".
func kinds(fs []Firing) string {
	if len(fs) == 0 {
		return "-"
	}
	s := ""
	for _, f := range fs {
		s += string(f.Kind)
	}
	return s
}

func TestHoldKeepsTheStateAfterTheLastMatch(t *testing.T) {
	c := testkit.NewClock(time.Unix(1000, 0))
	e := New([]config.Rule{stateRule(2*time.Second, "")}, Options{Now: c.Now})
	seen, empty := frame(person(0.9, centre)), frame()
	step := func(f Frame, d time.Duration) string { c.Advance(d); return kinds(e.Evaluate(f)) }
	got := []string{
		step(seen, 0),                   // fire
		step(seen, time.Second),         // still seen: nothing new
		step(empty, time.Second),        // 1 s since the last match: held
		step(seen, time.Second),         // seen again: the hold restarts
		step(empty, time.Second),        // 1 s
		step(empty, time.Second),        // 2 s: released
		step(empty, time.Second),        // nothing more
		step(seen, 10*time.Millisecond), // fires again (no cooldown)
	}
	want := []string{"fire", "-", "-", "-", "-", "release", "-", "fire"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if h := e.Holding("relay"); len(h) != 1 || h[0].Name != "r" {
		t.Fatalf("holding %v", h)
	}
}

func TestHoldZeroReleasesOnTheFirstFrameWithoutMatch(t *testing.T) {
	e := New([]config.Rule{stateRule(0, "")}, Options{})
	seen, empty := frame(person(0.9, centre)), frame()
	got := []string{kinds(e.Evaluate(seen)), kinds(e.Evaluate(seen)), kinds(e.Evaluate(empty))}
	if want := []string{"fire", "-", "release"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestLatchUntilAcknowledge(t *testing.T) {
	e := New([]config.Rule{stateRule(0, "ack")}, Options{})
	seen, empty := frame(person(0.9, centre)), frame()
	if _, ok := e.Acknowledge("r", "ack"); ok {
		t.Fatal("acknowledged a rule that had not fired")
	}
	if got := kinds(e.Evaluate(seen)); got != "fire" {
		t.Fatalf("first match: %s", got)
	}
	// Latched: neither more matches nor their absence changes anything.
	for i, f := range []Frame{seen, empty, empty, seen} {
		if got := kinds(e.Evaluate(f)); got != "-" {
			t.Fatalf("frame %d while latched: %s", i, got)
		}
	}
	if st := e.Status(); !st[0].Latched || st[0].Until != "ack" {
		t.Fatalf("status %+v", st)
	}
	if _, ok := e.Acknowledge("r", "button"); ok {
		t.Fatal("released by the wrong input")
	}
	if got := e.InputRose("button"); len(got) != 0 {
		t.Fatal("released by an input it does not wait for")
	}
	rel, ok := e.Acknowledge("r", "ack")
	if !ok || rel.Kind != Release || rel.Reason != "acknowledged" || rel.Action.Actuator != "relay" {
		t.Fatalf("acknowledge: %+v %v", rel, ok)
	}
	if e.Status()[0].Latched || len(e.Holding("relay")) != 0 {
		t.Fatal("still latched after the acknowledge")
	}
	if got := kinds(e.Evaluate(seen)); got != "fire" {
		t.Fatalf("a match after the acknowledge: %s", got)
	}
}

func TestLatchUntilInput(t *testing.T) {
	e := New([]config.Rule{stateRule(0, "reset")}, Options{})
	e.Evaluate(frame(person(0.9, centre)))
	got := e.InputRose("reset")
	if len(got) != 1 || got[0].Kind != Release || got[0].Reason != "input reset" {
		t.Fatalf("input release: %+v", got)
	}
	if got := e.InputRose("reset"); len(got) != 0 {
		t.Fatal("released twice")
	}
}

func TestInterlock(t *testing.T) {
	running := false
	r := baseRule()
	r.Interlock = "robot-running"
	e := New([]config.Rule{r}, Options{InputHigh: func(name string) bool { return name == "robot-running" && running }})
	seen := frame(person(0.9, centre))
	if got := kinds(e.Evaluate(seen)); got != "-" {
		t.Fatalf("fired with the interlock open: %s", got)
	}
	running = true
	if got := kinds(e.Evaluate(seen)); got != "fire" {
		t.Fatalf("did not fire with the interlock closed: %s", got)
	}
	if got := kinds(New([]config.Rule{r}, Options{}).Evaluate(seen)); got != "-" {
		t.Fatal("an interlock with no input levels must keep the rule disarmed")
	}
}

func TestEventOnlyRuleFiresWithCooldown(t *testing.T) {
	c := testkit.NewClock(time.Unix(1000, 0))
	r := baseRule()
	r.Action = config.Action{}
	r.Cooldown = time.Second
	e := New([]config.Rule{r}, Options{Now: c.Now})
	seen := frame(person(0.9, centre))
	got := []string{kinds(e.Evaluate(seen)), kinds(e.Evaluate(seen))}
	c.Advance(time.Second)
	got = append(got, kinds(e.Evaluate(seen)))
	if want := []string{"fire", "-", "fire"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestLatchesSurviveARestart(t *testing.T) {
	e := New([]config.Rule{stateRule(0, "ack")}, Options{})
	e.Evaluate(frame(person(0.9, centre)))
	saved := e.Latched()
	if !slices.Equal(saved, []string{"r"}) {
		t.Fatalf("latched %v", saved)
	}
	// A new engine (the restarted agent) with the same rules, and one that no longer latches.
	again := New([]config.Rule{stateRule(0, "ack")}, Options{})
	if got := again.RestoreLatched(saved); len(got) != 1 || len(again.Holding("relay")) != 1 {
		t.Fatalf("restored %v, holding %v", got, again.Holding("relay"))
	}
	if _, ok := again.Acknowledge("r", "ack"); !ok {
		t.Fatal("a restored latch cannot be acknowledged")
	}
	changed := New([]config.Rule{stateRule(0, "")}, Options{})
	if got := changed.RestoreLatched(saved); len(got) != 0 {
		t.Fatalf("restored a latch on a rule that no longer latches: %v", got)
	}
}
