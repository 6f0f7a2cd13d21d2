package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/agent/rules"
	"github.com/vigil-edge/vigil/agent/web"
	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/capture/stills"
	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/drift"
	"github.com/vigil-edge/vigil/internal/rate"
	"github.com/vigil-edge/vigil/internal/window"
	"github.com/vigil-edge/vigil/sync/outbox"
)

// camera is one camera's pipeline: capture, detection, rules.
type camera struct {
	// conf and mod are the camera's settings and model: a reload that changes only its
	// pacing, model or frame storage swaps them in place (the camera keeps streaming).
	conf   atomic.Pointer[config.Camera]
	mod    atomic.Pointer[model]
	cap    *capture.Camera
	logger *slog.Logger
	snap   *stills.Live
	stats  *detectStats
	// safed: failSafe drove this camera's rule outputs safe and they are not restored.
	safed atomic.Bool
	// flagged: an operator asked for the next frame as a sample; lastSample is when the
	// last one was kept (Unix ns).
	flagged    atomic.Bool
	lastSample atomic.Int64
	// drift watches what the camera sees against a baseline; nil when drift.enabled is off.
	drift *drift.Monitor
	// frameSize is the last frame's width<<32 | height, for warming up a new model.
	frameSize atomic.Uint64
	// busySince is when the frame in process entered it (Unix ns), 0 between frames:
	// the watchdog's view of a hung pipeline.
	busySince atomic.Int64
	// stop ends the camera's goroutines (a reload removing or changing it); done is
	// closed when both have returned.
	stop context.CancelFunc
	done chan struct{}
	// dets is the detect loop's reusable detections slice (Detect appends into it).
	// Nothing keeps it past process: rules copy their matches into each Firing, and
	// stats, metrics and the snapshot read it only during the call.
	dets []infer.Detection
}

// cfg is the camera's current settings; its name never changes.
func (c *camera) cfg() *config.Camera { return c.conf.Load() }

// model is the model the camera's frames go to now.
func (c *camera) model() *model { return c.mod.Load() }

// detectLoop runs the camera's model on its newest frames, at most detect_fps times a
// second. It takes each frame the moment it arrives and decides then whether to run
// on it, so a processed frame never waited for the detector's schedule; frames that
// arrive while the detector is busy are replaced in the slot (counted as dropped),
// so a slow model never makes the pipeline fall behind the camera.
func (a *Agent) detectLoop(ctx context.Context, cam *camera) error {
	pace := newPacer(cam.cfg().DetectFPS)
	for {
		pace.setRate(cam.cfg().DetectFPS) // a reload may retune it
		f, err := cam.cap.Slot().Take(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, capture.ErrClosed) {
				return nil
			}
			return fmt.Errorf("camera %s: take frame: %w", cam.cfg().Name, err)
		}
		if pace.admit(time.Now()) {
			cam.busySince.Store(time.Now().UnixNano())
			a.process(ctx, cam, f)
			cam.busySince.Store(0)
		} else {
			cam.stats.skip()
		}
		f.Close()
	}
}

// pacer admits at most fps events a second. An event up to a quarter interval early
// is admitted, so a camera running at exactly detect_fps is not halved by jitter.
type pacer struct {
	interval time.Duration
	next     time.Time
}

func newPacer(fps float64) *pacer {
	return &pacer{interval: time.Duration(float64(time.Second) / fps)}
}

// setRate changes the pace from the next event on.
func (p *pacer) setRate(fps float64) {
	p.interval = time.Duration(float64(time.Second) / fps)
}

func (p *pacer) admit(now time.Time) bool {
	if now.Before(p.next.Add(-p.interval / 4)) {
		return false
	}
	if now.Sub(p.next) >= p.interval {
		p.next = now // idle for a while: restart the schedule from now
	}
	p.next = p.next.Add(p.interval)
	return true
}

// process runs one frame through detection, rules and actions.
//
// It takes one snapshot of the parts for the whole frame: a reload meanwhile applies
// from the next frame on.
func (a *Agent) process(ctx context.Context, cam *camera, f capture.Frame) {
	p := a.parts()
	mod := cam.model()
	var dets []infer.Detection
	if run := mod.acquire(); run != nil {
		defer run.release()
		cam.frameSize.Store(uint64(f.Mat.Cols())<<32 | uint64(f.Mat.Rows()))
		var timing detector.Timing
		var err error
		cam.dets, timing, err = run.detector.Detect(f.Mat, cam.dets[:0])
		dets = cam.dets
		// The running bundle's own figures, to judge a swapped-in model against.
		run.stats.record(timing.Infer, err)
		if err != nil {
			if cam.stats.fail(err) {
				cam.logger.Error("detection failed", "frame", f.Seq, "err", err)
				a.failSafe(p, cam, "detection failed: "+err.Error())
			}
			return
		}
		detected := time.Now()
		cam.stats.record(timing.Infer, detected.Sub(f.Time), detected, dets)
		a.metrics.observeDetection(cam.cfg().Name, mod.name, timing.Infer, detected.Sub(f.Time), dets)
		if cam.safed.Load() && cam.cap.Status().State == capture.StateStreaming {
			a.restore(p, cam, "detection works again on camera "+cam.cfg().Name)
		}

		if a.beforeRules != nil {
			a.beforeRules(cam.cfg().Name)
		}
		if cam.drift != nil {
			a.observeDrift(cam, f, dets)
		}
		for _, fire := range p.rules.Evaluate(rules.Frame{
			Camera: cam.cfg().Name, Width: f.Mat.Cols(), Height: f.Mat.Rows(), Detections: dets, At: f.Time,
		}) {
			a.act(ctx, p, cam, f, fire, detected.Sub(f.Time))
		}
		a.maybeSample(cam, f, run, dets)
		// After the actions: the candidate must never delay an actuator.
		if sh := mod.shadow.Load(); sh != nil {
			sh.Offer(f.Mat, dets, timing.Infer)
		}
	}
	cam.snap.Update(f, dets)
}

// act carries out what a rule decided and records it as an event. The actuator moves
// first: neither the snapshot nor the event's durability may delay the output.
func (a *Agent) act(ctx context.Context, p *parts, cam *camera, f capture.Frame, fire rules.Firing, detectLatency time.Duration) {
	name := fire.Action.Actuator
	reason := "rule " + fire.Rule
	var err error
	var level hal.Level
	switch {
	case name == "":
		// An event-only rule.
	case fire.Kind == rules.Release:
		level, err = a.settle(p, name, reason+" released: "+fire.Reason)
	default:
		act := p.actuators[name]
		act.cmd.Lock()
		if fire.Action.Pulse > 0 {
			err = act.Pulse(fire.Action.Pulse, reason)
		} else {
			level, _ = hal.ParseLevel(fire.Action.State)
			err = act.Set(level, reason)
		}
		act.cmd.Unlock()
		if fire.Action.Until != "" {
			a.saveLatches(p)
		}
	}
	actuated := time.Since(f.Time)
	if name != "" && fire.Kind == rules.Fire {
		a.metrics.observeFiring(fire.Rule, actuated)
		p.ruleStats[fire.Rule].record(actuated, detectLatency)
	}
	if err != nil {
		cam.logger.Error("actuator command failed", "rule", fire.Rule, "actuator", name, "err", err)
	}

	var action map[string]any
	if name != "" {
		action = map[string]any{"actuator": name}
		switch {
		case fire.Kind == rules.Release:
			action["state"] = level.String()
			action["released"] = fire.Reason
		case fire.Action.Pulse > 0:
			action["pulse_ms"] = fire.Action.Pulse.Milliseconds()
		default:
			action["state"] = fire.Action.State
			if fire.Action.Until != "" {
				action["until"] = fire.Action.Until
			}
		}
		if err != nil {
			action["error"] = err.Error()
		}
	}
	if fire.Kind == rules.Release {
		a.recordRelease(ctx, fire, action)
		return
	}
	body := detectionEvent{
		Rule: fire.Rule, Camera: cam.cfg().Name, Frame: f.Seq, Detections: fire.Matches, Action: action,
		LatencyMS: latencyMS{Detect: ms(detectLatency)},
	}
	if name != "" {
		body.LatencyMS.Actuate = ms(actuated)
	}
	body.Snapshot, body.SnapshotError = a.snapshots.Save(cam.cfg().Name, f, fire.Matches)
	env := a.recordEvent(ctx, "detection", body)
	cam.logger.Info("rule fired", "rule", fire.Rule, "actuator", name, "seq", env.Seq,
		"detect_ms", body.LatencyMS.Detect, "actuate_ms", body.LatencyMS.Actuate)
}

// release carries out a Release that did not come from a frame (an acknowledge, an
// input): the actuator settles and the release is an event.
func (a *Agent) release(ctx context.Context, p *parts, fire rules.Firing) {
	var action map[string]any
	if name := fire.Action.Actuator; name != "" {
		level, err := a.settle(p, name, "rule "+fire.Rule+" released: "+fire.Reason)
		action = map[string]any{"actuator": name, "state": level.String(), "released": fire.Reason}
		if err != nil {
			action["error"] = err.Error()
			a.logger.Error("actuator command failed", "rule", fire.Rule, "actuator", name, "err", err)
		}
	}
	a.recordRelease(ctx, fire, action)
}

// recordRelease records a rule letting go of its actuator as an event.
func (a *Agent) recordRelease(ctx context.Context, fire rules.Firing, action map[string]any) {
	body := map[string]any{"rule": fire.Rule, "camera": fire.Camera, "released": fire.Reason, "action": action}
	env := a.recordEvent(ctx, "release", body)
	a.logger.Info("rule released", "rule", fire.Rule, "reason", fire.Reason, "seq", env.Seq)
}

// eventCommitWait bounds how long a pipeline waits for an event to reach the disk: a
// failing disk must not stop detection and actuation. The event stays queued in the
// outbox, which keeps retrying and reports the disk's error.
const eventCommitWait = time.Second

// enqueueEvent puts an event into the outbox. It is queued even if shutdown has begun
// (the outbox closes only after every pipeline has returned).
func (a *Agent) enqueueEvent(ctx context.Context, kind string, body any) (outbox.Envelope, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), eventCommitWait)
	defer cancel()
	return a.outbox.Enqueue(ctx, kind, outbox.ClassEvent, body)
}

type detectionEvent struct {
	Rule       string            `json:"rule"`
	Camera     string            `json:"camera"`
	Frame      uint64            `json:"frame"`
	Detections []infer.Detection `json:"detections"`
	Action     map[string]any    `json:"action,omitempty"` // none for an event-only rule
	LatencyMS  latencyMS         `json:"latency_ms"`
	// Snapshot is the frame with the matches drawn, under GET /api/snapshots/.
	Snapshot      string `json:"snapshot,omitempty"`
	SnapshotError string `json:"snapshot_error,omitempty"`
}

type latencyMS struct {
	Detect  float64 `json:"detect"`
	Actuate float64 `json:"actuate,omitempty"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// detectStats are a camera's detection figures for the status page.
type detectStats struct {
	mu      sync.Mutex // guards the fields below
	frames  uint64
	rate    rate.Meter        // detections
	infer   *window.Ring      // recent inference times
	latency *window.Ring      // recent capture-to-detection times
	skipped uint64            // frames left out to keep to detect_fps
	byLabel map[string]uint64 // detections since start
	lastErr string
}

// statsWindow is how many recent frames (or firings) the figures are taken over.
const statsWindow = 256

func newDetectStats() *detectStats {
	return &detectStats{infer: window.NewRing(statsWindow), latency: window.NewRing(statsWindow), byLabel: map[string]uint64{}}
}

func (s *detectStats) record(inferTime, latency time.Duration, at time.Time, dets []infer.Detection) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.frames++
	for _, d := range dets {
		s.byLabel[d.Label]++
	}
	s.rate.Tick(at)
	s.infer.Add(inferTime)
	s.latency.Add(latency)
	s.lastErr = ""
}

// labels returns the detections by label since start.
func (s *detectStats) labels() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.byLabel)
}

func (s *detectStats) skip() {
	s.mu.Lock()
	s.skipped++
	s.mu.Unlock()
}

// fail records a failed detection and reports whether it is a new error, so that a
// model failing on every frame is logged once, not per frame.
func (s *detectStats) fail(err error) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	isNew := s.lastErr != err.Error()
	s.lastErr = err.Error()
	return isNew
}

func (s *detectStats) status() web.DetectStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := web.DetectStatus{Frames: s.frames, Skipped: s.skipped, LastError: s.lastErr}
	if time.Since(s.rate.Last()) < 5*time.Second {
		st.FPS = round(s.rate.PerSecond(), 2)
	}
	st.InferenceP50, st.InferenceP99 = window.MillisP50P99(s.infer.Values())
	st.LatencyP50, st.LatencyP99 = window.MillisP50P99(s.latency.Values())
	return st
}

func round(v float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	return float64(int64(v*p+0.5)) / p
}

// observeDrift feeds the drift monitor and records a change of drift as an event, once
// per crossing (the monitor has hysteresis).
func (a *Agent) observeDrift(cam *camera, f capture.Frame, dets []infer.Detection) {
	change := cam.drift.Observe(f.Mat, dets)
	if change == 0 {
		return
	}
	st := cam.drift.Status()
	body := map[string]any{"camera": cam.cfg().Name, "drifting": st.Drifting, "score": round(st.Score, 3), "feature": st.Feature}
	a.recordEvent(context.Background(), "drift", body)
	if st.Drifting {
		cam.logger.Warn("what the camera sees drifted from the model's baseline", "score", round(st.Score, 3), "feature", st.Feature)
	} else {
		cam.logger.Info("drift cleared", "score", round(st.Score, 3))
	}
}
