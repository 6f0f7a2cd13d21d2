package agent

import (
	"sync"
	"time"

	"github.com/vigil-edge/vigil/agent/rules"
	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/infer/drift"
	"github.com/vigil-edge/vigil/internal/redact"
	"github.com/vigil-edge/vigil/internal/window"
	"github.com/vigil-edge/vigil/sync/mqttlink"
)

// Status assembles the agent's status. withHistory adds the sim actuators' transitions.
func (a *Agent) Status(withHistory bool) Status {
	p := a.parts()
	st := Status{
		Device: p.cfg.Device.ID, Version: a.version, UptimeS: int64(time.Since(a.started).Seconds()),
		Cameras: []CameraStatus{}, Models: []ModelStatus{}, Actuators: []ActuatorStatus{}, Rules: []RuleStatus{}, Inputs: []hal.InputState{},
		MQTT: mqttlink.State{State: "disabled"}, Events: a.events.Recent(20), Samples: a.samplesStatus(),
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
	st.ActuateP50, st.ActuateP99 = window.MillisP50P99(s.latency.Values())
	st.AddedP50, st.AddedP99 = window.MillisP50P99(s.added.Values())
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
