package agent

import (
	"context"
	"path/filepath"
	"sync"
	"time"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/infer/eval"
	"github.com/vigil-edge/vigil/infer/shadow"
	"github.com/vigil-edge/vigil/internal/window"
	"github.com/vigil-edge/vigil/sync/deploy/deployer"
)

// The agent's models as the deployer sees them (deployer.Models, Model, Candidate): the
// deployer decides what a push does; these carry it out on the running pipelines.

// newDeployer builds the deployer for cfg on link; it runs with the link (startLink).
func (a *Agent) newDeployer(cfg *config.Config, link deployer.Link) *deployer.Deployer {
	d := cfg.Deploy
	return deployer.New(deployer.Settings{
		MaxBytes: int64(d.MaxBytes), WarmupRuns: d.WarmupRuns, WarmupBudget: d.WarmupBudget, Watch: d.Watch,
		MaxSlowdown: d.MaxSlowdown, StallTimeout: d.StallTimeout, TopicPrefix: cfg.MQTT.TopicPrefix,
		Device: cfg.Device.ID, Group: cfg.Device.Group, Trusted: cfg.Trust.Keys, Dir: filepath.Join(cfg.Device.StateDir, "deploy"),
	}, deployer.Options{
		Link: link, Models: agentModels{a}, Store: a.store, Logger: a.logBase,
		Record:  func(kind string, body any) { a.recordEvent(context.Background(), kind, body) },
		Recover: a.recoverPanic,
	})
}

// agentModels is deployer.Models over the agent's current parts.
type agentModels struct{ a *Agent }

func (ms agentModels) Lookup(name string) deployer.Model {
	m := ms.a.parts().models[name]
	if m == nil {
		return nil
	}
	return modelHandle{ms.a, m}
}

// Commit holds modelsMu, which a reload holds while it replaces models (replace), so a
// deployment never lands on a model a reload has retired.
func (ms agentModels) Commit(m deployer.Model, change func() error) error {
	ms.a.modelsMu.Lock()
	defer ms.a.modelsMu.Unlock()
	h := m.(modelHandle)
	if ms.a.parts().models[h.m.name] != h.m {
		return deployer.ErrReloaded
	}
	return change()
}

// modelHandle is one model, as deployer.Model.
type modelHandle struct {
	a *Agent
	m *model
}

func (h modelHandle) Name() string             { return h.m.name }
func (h modelHandle) ConfiguredBundle() string { return h.m.configured }

func (h modelHandle) Load(dir, deployment string) (deployer.Candidate, error) {
	det, backend, err := loadModel(h.a.backends, dir, h.m.cfg)
	if err != nil {
		return nil, err
	}
	return &loaded{detector: det, dir: dir, backend: backend, deployment: deployment, frameSize: h.frameSize}, nil
}

func (h modelHandle) Running() deployer.Candidate {
	if l := h.m.running.Load(); l != nil {
		return l
	}
	return nil
}

// Swap makes next the running bundle; the model's cameras start a new drift baseline.
func (h modelHandle) Swap(next deployer.Candidate) deployer.Candidate {
	prev := h.m.running.Swap(next.(*loaded))
	for _, cam := range h.a.parts().cameras {
		if cam.model() == h.m && cam.drift != nil {
			cam.drift.Reset()
		}
	}
	if prev == nil {
		return nil
	}
	return prev
}

func (h modelHandle) SetShadow(c deployer.Candidate, deployment string) {
	if c == nil {
		h.a.setShadow(h.m, h.a.configShadow(h.m.cfg))
		return
	}
	l := c.(*loaded)
	h.a.setShadow(h.m, shadow.New(l.detector, l.dir, h.m.cfg.Shadow.Every, deployment))
}

// frameSize is the size of the frames the model's first streaming camera delivers, or
// 640x480.
func (h modelHandle) frameSize() (w, h2 int) {
	for _, cam := range h.a.parts().cameras {
		if size := cam.frameSize.Load(); cam.model() == h.m && size != 0 {
			return int(size >> 32), int(size & 0xffffffff)
		}
	}
	return 640, 480
}

func (l *loaded) Version() string { return l.detector.Manifest().Version }

// WarmUp runs the model once on a grey frame of its cameras' size.
func (l *loaded) WarmUp(context.Context) error {
	w, h := 640, 480
	if l.frameSize != nil {
		w, h = l.frameSize()
	}
	frame := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(114, 114, 114, 0), h, w, gocv.MatTypeCV8UC3)
	defer frame.Close()
	_, _, err := l.detector.Detect(frame, nil)
	return err
}

// Check runs the bundle's golden images or eval minimums (infer/eval).
func (l *loaded) Check() error {
	return eval.CheckBundle(l.detector.FileDetector(), l.dir, l.detector.Manifest())
}

func (l *loaded) Stats() deployer.Stats {
	median, runs := l.stats.p50()
	errs, last := l.stats.errors()
	return deployer.Stats{Median: median, Runs: runs, Errors: errs, LastError: last}
}

// Close frees a bundle that never ran.
func (l *loaded) Close() { l.detector.Close() }

// Retire closes a swapped-out bundle's detector as soon as no frame is on it: a
// pipeline that took it just before the swap finishes its frame first.
func (l *loaded) Retire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.retired = true
	if l.users == 0 {
		l.detector.Close()
	}
}

// retire is Retire for a bundle that may be nil (a model that did not load).
func retire(l *loaded) {
	if l != nil {
		l.Retire()
	}
}

// acquire takes the bundle for one frame; false means it was retired (load the
// running one again).
func (l *loaded) acquire() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.retired {
		return false
	}
	l.users++
	return true
}

// release ends acquire's frame, closing a retired bundle's detector after its last one.
func (l *loaded) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.users--
	if l.retired && l.users == 0 {
		l.detector.Close()
	}
}

// runStats are a loaded bundle's own inference times and failures, so that a swapped-in
// model is judged against the one it replaced.
type runStats struct {
	mu      sync.Mutex   // guards the fields below
	times   *window.Ring // nil until the first inference
	errs    int
	lastErr string
}

func (s *runStats) record(d time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.errs++
		s.lastErr = err.Error()
		return
	}
	if s.times == nil {
		s.times = window.NewRing(statsWindow)
	}
	s.times.Add(d)
}

func (s *runStats) p50() (time.Duration, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.times == nil {
		return 0, 0
	}
	return s.times.Quantiles(0.5)[0], s.times.Len()
}

func (s *runStats) errors() (int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errs, s.lastErr
}
