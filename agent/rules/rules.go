// Package rules decides when detections should move an actuator: per rule a camera,
// labels, a minimum score and box area, a zone, N matching frames of the last M, and a
// cooldown. It is pure Go (no gocv, no runtime, no hardware), so it is tested with
// plain values and an injected clock.
package rules

import (
	"slices"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/infer"
)

// Frame is one detector result for one camera.
type Frame struct {
	Camera     string
	Width      int
	Height     int
	Detections []infer.Detection
	// At is when the frame was captured.
	At time.Time
}

// Firing is a rule that matched: the detections that made it, and the action to take.
type Firing struct {
	Rule    string
	Camera  string
	Matches []infer.Detection
	Action  config.Action
	OnStall string
}

// Engine evaluates the rules of all cameras. It is not safe for concurrent use; the
// agent gives each camera its own Engine over that camera's rules.
type Engine struct {
	rules []*rule
	now   func() time.Time
}

type rule struct {
	cfg       config.Rule
	window    []bool // the last Of frames, newest last
	lastFired time.Time
}

// New returns an engine for rules; now may be nil for time.Now.
func New(rs []config.Rule, now func() time.Time) *Engine {
	if now == nil {
		now = time.Now
	}
	e := &Engine{now: now}
	for _, r := range rs {
		e.rules = append(e.rules, &rule{cfg: r})
	}
	return e
}

// Evaluate feeds one frame to every rule of its camera and returns those that fire.
func (e *Engine) Evaluate(f Frame) []Firing {
	var out []Firing
	for _, r := range e.rules {
		if r.cfg.Camera != f.Camera {
			continue
		}
		matches := r.match(f)
		r.window = append(r.window, len(matches) > 0)
		if len(r.window) > r.cfg.Frames.Of {
			r.window = r.window[1:]
		}
		if len(matches) == 0 || count(r.window) < r.cfg.Frames.N {
			continue
		}
		now := e.now()
		if !r.lastFired.IsZero() && now.Sub(r.lastFired) < r.cfg.Cooldown {
			continue
		}
		r.lastFired = now
		out = append(out, Firing{Rule: r.cfg.Name, Camera: f.Camera, Matches: matches, Action: r.cfg.Action, OnStall: r.cfg.OnStall})
	}
	return out
}

func count(w []bool) int {
	n := 0
	for _, b := range w {
		if b {
			n++
		}
	}
	return n
}

// match returns the detections of f that satisfy the rule's filters.
func (r *rule) match(f Frame) []infer.Detection {
	var out []infer.Detection
	area := float32(f.Width * f.Height)
	for _, d := range f.Detections {
		if len(r.cfg.Labels) > 0 && !slices.Contains(r.cfg.Labels, d.Label) {
			continue
		}
		if float64(d.Score) < r.cfg.MinScore {
			continue
		}
		if area > 0 && float64(d.Area()/area) < r.cfg.MinArea {
			continue
		}
		if len(r.cfg.Zone) >= 3 && f.Width > 0 && f.Height > 0 {
			// The box's centre, in the zone's normalised coordinates.
			cx := float64(d.Box[0]+d.Box[2]) / 2 / float64(f.Width)
			cy := float64(d.Box[1]+d.Box[3]) / 2 / float64(f.Height)
			if !inPolygon(cx, cy, r.cfg.Zone) {
				continue
			}
		}
		out = append(out, d)
	}
	return out
}

// inPolygon is the even-odd ray casting test.
func inPolygon(x, y float64, poly [][]float64) bool {
	in := false
	for i, j := 0, len(poly)-1; i < len(poly); j, i = i, i+1 {
		xi, yi, xj, yj := poly[i][0], poly[i][1], poly[j][0], poly[j][1]
		if (yi > y) != (yj > y) && x < (xj-xi)*(y-yi)/(yj-yi)+xi {
			in = !in
		}
	}
	return in
}
