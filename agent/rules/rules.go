// Package rules decides when detections should move an actuator: per rule a camera,
// labels, a minimum score and box area, a zone, N matching frames of the last M, an
// interlock input, a cooldown, and what the action does over time (a pulse; a state held
// while the rule matches plus a hold time; a state latched until an input or an
// acknowledge). It is pure Go (no gocv, no runtime, no hardware), so it is tested with
// plain values and an injected clock.
package rules

import (
	"reflect"
	"slices"
	"sync"
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

// Kind says what a Firing asks of the actuator.
type Kind string

const (
	// Fire carries out the rule's action (pulse, or drive its state).
	Fire Kind = "fire"
	// Release ends a held or latched state: the actuator returns to its normal level.
	Release Kind = "release"
)

// Firing is a rule that changed what its actuator should do.
type Firing struct {
	Kind   Kind
	Rule   string
	Camera string
	// Matches are the detections that made a Fire.
	Matches []infer.Detection
	Action  config.Action
	// Reason says why a Release happened: "hold expired", "ack", "input ack", ...
	Reason string
}

// Options configure an Engine.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// InputHigh reports an input's debounced level, for rules with an interlock; nil
	// treats every interlock as open (the rule never fires).
	InputHigh func(name string) bool
}

// Engine evaluates rules. It is safe for concurrent use: frames come from the camera's
// pipeline, acknowledgements from the HTTP API and inputs.
type Engine struct {
	opts Options

	mu    sync.Mutex // guards the rules' state
	rules []*rule
}

type rule struct {
	cfg       config.Rule
	window    []bool // the last Of frames, newest last
	lastFired time.Time
	lastMatch time.Time
	// active: the rule holds its actuator at the action's state (held or latched).
	active bool
}

// Status is a rule's state for the status page.
type Status struct {
	Name      string `json:"name"`
	Camera    string `json:"camera"`
	Active    bool   `json:"active"`
	Latched   bool   `json:"latched"`
	Until     string `json:"until,omitempty"`
	LastFired string `json:"last_fired,omitempty"`
}

// New returns an engine for rules.
func New(rs []config.Rule, opts Options) *Engine {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	e := &Engine{opts: opts}
	for _, r := range rs {
		e.rules = append(e.rules, &rule{cfg: r})
	}
	return e
}

// Evaluate feeds one frame to every rule of its camera and returns what changes.
func (e *Engine) Evaluate(f Frame) []Firing {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Firing
	now := e.opts.Now()
	for _, r := range e.rules {
		if r.cfg.Camera != f.Camera {
			continue
		}
		var matches []infer.Detection
		if r.armed(e.opts.InputHigh) {
			matches = r.match(f)
		}
		r.window = append(r.window, len(matches) > 0)
		if len(r.window) > r.cfg.Frames.Of {
			r.window = r.window[1:]
		}
		satisfied := len(matches) > 0 && count(r.window) >= r.cfg.Frames.N
		if satisfied {
			r.lastMatch = now
		}
		a := r.cfg.Action
		switch {
		case r.active && a.Until != "":
			// Latched: only an acknowledge or the input releases it.
		case r.active:
			if !satisfied && now.Sub(r.lastMatch) >= r.cfg.Hold {
				r.active = false
				out = append(out, Firing{Kind: Release, Rule: r.cfg.Name, Camera: f.Camera, Action: a, Reason: "no longer seen"})
			}
		case satisfied && (r.lastFired.IsZero() || now.Sub(r.lastFired) >= r.cfg.Cooldown):
			r.lastFired = now
			r.active = a.State != ""
			out = append(out, Firing{Kind: Fire, Rule: r.cfg.Name, Camera: f.Camera, Matches: matches, Action: a})
		}
	}
	return out
}

// armed reports whether the rule's interlock input (if any) is high.
func (r *rule) armed(inputHigh func(string) bool) bool {
	if r.cfg.Interlock == "" {
		return true
	}
	return inputHigh != nil && inputHigh(r.cfg.Interlock)
}

// Acknowledge releases the latched rule called name when it waits for until ("ack" for
// the API, or an input's name). It reports false when the rule is not latched on that.
func (e *Engine) Acknowledge(name, until string) (Firing, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range e.rules {
		if r.cfg.Name == name && r.active && r.cfg.Action.Until == until {
			r.active = false
			return Firing{Kind: Release, Rule: name, Camera: r.cfg.Camera, Action: r.cfg.Action, Reason: releaseReason(until)}, true
		}
	}
	return Firing{}, false
}

// InputRose releases every rule latched until the input called name.
func (e *Engine) InputRose(name string) []Firing {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Firing
	for _, r := range e.rules {
		if r.active && r.cfg.Action.Until == name {
			r.active = false
			out = append(out, Firing{Kind: Release, Rule: r.cfg.Name, Camera: r.cfg.Camera, Action: r.cfg.Action, Reason: releaseReason(name)})
		}
	}
	return out
}

func releaseReason(until string) string {
	if until == "ack" {
		return "acknowledged"
	}
	return "input " + until
}

// Carry takes over the state (window, hold, latch, cooldown) of every rule of old whose
// config is the same in e: a reload that changes one rule leaves the others as they were.
func (e *Engine) Carry(old *Engine) {
	old.mu.Lock()
	defer old.mu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, r := range e.rules {
		for _, o := range old.rules {
			if o.cfg.Name == r.cfg.Name && reflect.DeepEqual(o.cfg, r.cfg) {
				r.window = slices.Clone(o.window)
				r.lastFired, r.lastMatch, r.active = o.lastFired, o.lastMatch, o.active
			}
		}
	}
}

// Latched lists the rules latched now (waiting for an acknowledge or an input), for the
// agent to keep on disk: a latch must survive a restart.
func (e *Engine) Latched() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, r := range e.rules {
		if r.active && r.cfg.Action.Until != "" {
			out = append(out, r.cfg.Name)
		}
	}
	return out
}

// RestoreLatched latches again the rules named (from Latched before a restart) that
// still latch; it returns those it latched.
func (e *Engine) RestoreLatched(names []string) []config.Rule {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []config.Rule
	for _, r := range e.rules {
		if r.cfg.Action.Until != "" && r.cfg.Action.State != "" && slices.Contains(names, r.cfg.Name) {
			r.active = true
			r.lastFired = e.opts.Now()
			out = append(out, r.cfg)
		}
	}
	return out
}

// Holding lists the active rules that hold the actuator called name, in rule order.
func (e *Engine) Holding(actuator string) []config.Rule {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []config.Rule
	for _, r := range e.rules {
		if r.active && r.cfg.Action.Actuator == actuator {
			out = append(out, r.cfg)
		}
	}
	return out
}

// Status reports every rule's state.
func (e *Engine) Status() []Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Status, len(e.rules))
	for i, r := range e.rules {
		out[i] = Status{Name: r.cfg.Name, Camera: r.cfg.Camera, Active: r.active, Latched: r.active && r.cfg.Action.Until != "", Until: r.cfg.Action.Until}
		if !r.lastFired.IsZero() {
			out[i].LastFired = r.lastFired.UTC().Format(time.RFC3339Nano)
		}
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
		if len(r.cfg.Zone) >= 3 && f.Width > 0 && f.Height > 0 && !inZone(d.Box, f.Width, f.Height, r.cfg.Zone, r.cfg.ZoneMode) {
			continue
		}
		out = append(out, d)
	}
	return out
}

// inZone tests a box (frame pixels) against a polygon in normalised coordinates:
// "center" (the default) asks for the box's centre inside, "inside" for the whole box
// (its four corners; zones are usually convex), "overlaps" for any overlap.
func inZone(box [4]float32, w, h int, zone [][]float64, mode string) bool {
	x1, y1 := float64(box[0])/float64(w), float64(box[1])/float64(h)
	x2, y2 := float64(box[2])/float64(w), float64(box[3])/float64(h)
	corners := [4][2]float64{{x1, y1}, {x2, y1}, {x2, y2}, {x1, y2}}
	switch mode {
	case "inside":
		for _, c := range corners {
			if !inPolygon(c[0], c[1], zone) {
				return false
			}
		}
		return true
	case "overlaps":
		for _, c := range corners {
			if inPolygon(c[0], c[1], zone) {
				return true
			}
		}
		for _, p := range zone {
			if p[0] >= x1 && p[0] <= x2 && p[1] >= y1 && p[1] <= y2 {
				return true
			}
		}
		// Neither contains a vertex of the other: they overlap only if edges cross.
		for i, j := 0, len(zone)-1; i < len(zone); j, i = i, i+1 {
			for k := range 4 {
				c, d := corners[k], corners[(k+1)%4]
				if segmentsCross(zone[j][0], zone[j][1], zone[i][0], zone[i][1], c[0], c[1], d[0], d[1]) {
					return true
				}
			}
		}
		return false
	default:
		return inPolygon((x1+x2)/2, (y1+y2)/2, zone)
	}
}

// segmentsCross reports whether segment a-b properly crosses segment c-d.
func segmentsCross(ax, ay, bx, by, cx, cy, dx, dy float64) bool {
	side := func(px, py, qx, qy, rx, ry float64) float64 { return (qx-px)*(ry-py) - (qy-py)*(rx-px) }
	d1, d2 := side(cx, cy, dx, dy, ax, ay), side(cx, cy, dx, dy, bx, by)
	d3, d4 := side(ax, ay, bx, by, cx, cy), side(ax, ay, bx, by, dx, dy)
	return ((d1 > 0) != (d2 > 0)) && ((d3 > 0) != (d4 > 0))
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
