package agent

import (
	"encoding/json"
	"sync"
	"time"

	"github.com/vigil-edge/vigil/agent/rules"
	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/hal/sim"
	"github.com/vigil-edge/vigil/infer/drift"
	"github.com/vigil-edge/vigil/infer/shadow"
	"github.com/vigil-edge/vigil/internal/redact"
	"github.com/vigil-edge/vigil/internal/window"
	"github.com/vigil-edge/vigil/sync/deploy"
	"github.com/vigil-edge/vigil/sync/mqttlink"
	"github.com/vigil-edge/vigil/sync/outbox"
)

// Status is /api/status. Its shape is a contract (DESIGN.md, HTTP): tools read it.
// Fields are added, never renamed.
type Status struct {
	Device    string           `json:"device"`
	Version   string           `json:"version"`
	UptimeS   int64            `json:"uptime_s"`
	Ready     bool             `json:"ready"`
	Cameras   []CameraStatus   `json:"cameras"`
	Models    []ModelStatus    `json:"models"`
	Actuators []ActuatorStatus `json:"actuators"`
	Rules     []RuleStatus     `json:"rules"`
	Inputs    []hal.InputState `json:"inputs"`
	// Reload is the last config reload's result (nil until one happens).
	Reload *ReloadResult `json:"reload,omitempty"`
	// Deployment is the last model deployment's state (nil until one arrives).
	Deployment *deploy.State     `json:"deployment,omitempty"`
	Outbox     OutboxStatus      `json:"outbox"`
	Samples    SamplesStatus     `json:"samples"`
	MQTT       mqttlink.State    `json:"mqtt"`
	Events     []outbox.Envelope `json:"events"`
}

// CameraStatus is one camera: capture state and counters, and its detection figures.
type CameraStatus struct {
	capture.Status
	URL    string       `json:"url"` // password redacted
	Model  string       `json:"model"`
	Detect detectStatus `json:"detect"`
	// Drift is how far what the camera sees is from its model's baseline (nil when off).
	Drift *drift.Status `json:"drift,omitempty"`
}

// ModelStatus is one configured model.
type ModelStatus struct {
	Name    string `json:"name"`
	Model   string `json:"model"`
	Version string `json:"version"`
	Backend string `json:"backend"`
	Input   string `json:"input,omitempty"`
	State   string `json:"state"` // loaded | failed
	// Shadow is the candidate model run beside it (models[].shadow), and how they agree.
	Shadow *ShadowStatus `json:"shadow,omitempty"`
	// Deployment is the push that installed the running bundle ("" for the configured one).
	Deployment string `json:"deployment,omitempty"`
	Error      string `json:"error,omitempty"`
}

// ActuatorStatus is one actuator, with its recent transitions when simulated.
type ActuatorStatus struct {
	hal.State
	History []sim.Transition `json:"history,omitempty"`
}

// RuleStatus is one rule: whether it holds or latches its actuator, how often it fired
// and how long from the frame's capture to its actuator command.
type RuleStatus struct {
	rules.Status
	Firings    uint64  `json:"firings"`
	ActuateP50 float64 `json:"actuate_ms_p50"`
	ActuateP99 float64 `json:"actuate_ms_p99"`
	LastMS     float64 `json:"actuate_ms_last"`
	// AddedP50/P99: what the rule and the actuator command add after the frame's
	// detections are ready (the actuate latency minus the same frame's detect latency).
	AddedP50 float64 `json:"added_ms_p50"`
	AddedP99 float64 `json:"added_ms_p99"`
}

// OutboxStatus is the durable queue.
type OutboxStatus struct {
	Depth   int    `json:"depth"`
	Bytes   int64  `json:"bytes"`
	Dropped uint64 `json:"dropped"`
	Pending int    `json:"pending"`
	NextSeq uint64 `json:"next_seq"`
	// Evicted counts telemetry removed to stay within outbox.max_bytes; Dropped the
	// events (only when events alone fill the budget).
	Evicted   uint64 `json:"evicted_telemetry"`
	DiskBytes int64  `json:"disk_bytes"`
	LastError string `json:"last_error,omitempty"`
}

// ShadowStatus is what the status shows of a model's shadow (infer/shadow).
type ShadowStatus = shadow.Status

// Status assembles the agent's status. withHistory adds the sim actuators' transitions.
func (a *Agent) Status(withHistory bool) Status {
	p := a.parts()
	st := Status{
		Device: p.cfg.Device.ID, Version: a.version, UptimeS: int64(time.Since(a.started).Seconds()),
		Cameras: []CameraStatus{}, Models: []ModelStatus{}, Actuators: []ActuatorStatus{}, Rules: []RuleStatus{}, Inputs: []hal.InputState{},
		MQTT: mqttlink.State{State: "disabled"}, Events: a.events.recent(20), Samples: a.samplesStatus(),
	}
	if p.link != nil {
		st.MQTT = p.link.State()
	}
	st.Ready, _ = p.readiness()
	for _, cam := range p.cameras {
		st.Cameras = append(st.Cameras, CameraStatus{
			Status: cam.cap.Status(), URL: redact.URL(cam.cfg().URL), Model: cam.cfg().Model, Detect: cam.stats.status(),
			Drift: driftStatus(cam),
		})
	}
	for _, name := range p.modOrder {
		m := p.models[name]
		ms := ModelStatus{Name: name, Backend: m.cfg.Backend, State: "loaded"}
		if run := m.running.Load(); run != nil {
			ms.Backend, ms.Deployment = run.backend, run.deployment
			man := run.detector.Manifest()
			ms.Model, ms.Version = man.Name, man.Version
			if ins := run.detector.Inputs(); len(ins) > 0 {
				ms.Input = ins[0].String()
			}
		} else {
			ms.State = "failed"
			if m.err != nil {
				ms.Error = m.err.Error()
			}
		}
		if sh := m.shadow.Load(); sh != nil {
			ms.Shadow = sh.Status(name)
		}
		st.Models = append(st.Models, ms)
	}
	for _, name := range p.actOrder {
		act := p.actuators[name]
		as := ActuatorStatus{State: act.State()}
		if withHistory && act.sim != nil {
			as.History = act.sim.History()
		}
		st.Actuators = append(st.Actuators, as)
	}
	if p.deployer != nil {
		st.Deployment = p.deployer.LastState()
	}
	st.Reload = a.lastReload.Load()
	for _, name := range p.inOrder {
		st.Inputs = append(st.Inputs, p.inputs[name].State())
	}
	for _, rs := range p.rules.Status() {
		st.Rules = append(st.Rules, p.ruleStats[rs.Name].status(rs))
	}
	if a.outbox != nil {
		o := a.outbox.Stats()
		st.Outbox = OutboxStatus{
			Depth: o.Depth, Bytes: o.Bytes, Dropped: o.Dropped, Pending: o.Pending, NextSeq: o.NextSeq,
			Evicted: o.EvictedTelemetry, DiskBytes: o.DiskBytes, LastError: o.LastError,
		}
	}
	return st
}

// readiness is true once every model loaded and every camera with a model has run a
// detection; otherwise it says what is missing.
func (p *parts) readiness() (bool, []string) {
	var missing []string
	for _, name := range p.modOrder {
		if m := p.models[name]; m.detector() == nil {
			missing = append(missing, "model "+name+" not loaded")
		}
	}
	for _, cam := range p.cameras {
		if cam.model().detector() != nil && cam.stats.status().Frames == 0 {
			missing = append(missing, "camera "+cam.cfg().Name+" has no detection yet")
		}
	}
	return len(missing) == 0, missing
}

// eventLog keeps the newest events for the status page and fans them out to
// server-sent-event subscribers.
type eventLog struct {
	mu     sync.Mutex // guards the fields below
	limit  int
	events []outbox.Envelope
	subs   map[chan outbox.Envelope]struct{}
}

func newEventLog(limit int) *eventLog {
	return &eventLog{limit: limit, subs: map[chan outbox.Envelope]struct{}{}}
}

func (l *eventLog) add(e outbox.Envelope) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) == l.limit {
		l.events = append(l.events[:0], l.events[1:]...)
	}
	l.events = append(l.events, e)
	for ch := range l.subs {
		select {
		case ch <- e:
		default: // a slow browser misses live events; /api/events still has them
		}
	}
}

// recent returns up to n events, newest first.
func (l *eventLog) recent(n int) []outbox.Envelope {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]outbox.Envelope, 0, min(n, len(l.events)))
	for i := len(l.events) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, l.events[i])
	}
	return out
}

func (l *eventLog) subscribe() (chan outbox.Envelope, func()) {
	ch := make(chan outbox.Envelope, 16)
	l.mu.Lock()
	l.subs[ch] = struct{}{}
	l.mu.Unlock()
	return ch, func() {
		l.mu.Lock()
		delete(l.subs, ch)
		l.mu.Unlock()
	}
}

// mustJSON is for values that always encode.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// ruleStats counts a rule's firings and keeps its recent capture-to-actuator latencies.
type ruleStats struct {
	mu      sync.Mutex // guards the fields below
	firings uint64
	latency *window.Ring // the last statsWindow capture-to-actuator times
	added   *window.Ring // the same firings' time after detection
	last    time.Duration
}

func newRuleStats() *ruleStats {
	return &ruleStats{latency: window.NewRing(statsWindow), added: window.NewRing(statsWindow)}
}

func (s *ruleStats) record(actuate, detect time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.firings++
	s.last = actuate
	s.latency.Add(actuate)
	s.added.Add(actuate - detect)
}

func (s *ruleStats) status(rs rules.Status) RuleStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := RuleStatus{Status: rs, Firings: s.firings, LastMS: ms(s.last)}
	st.ActuateP50, st.ActuateP99 = percentiles(s.latency.Values())
	st.AddedP50, st.AddedP99 = percentiles(s.added.Values())
	return st
}

func driftStatus(cam *camera) *drift.Status {
	if cam.drift == nil {
		return nil
	}
	st := cam.drift.Status()
	st.Score = round(st.Score, 3)
	return &st
}
