package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/agent/rules"
	"github.com/vigil-edge/vigil/assets"
	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/capture/camurl"
	"github.com/vigil-edge/vigil/capture/stills"
	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/hal/drivers"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/backends"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/drift"
	"github.com/vigil-edge/vigil/infer/shadow"
)

// provision builds the parts cfg describes, reusing from old (nil at start) every part
// whose settings did not change. New models are loaded here, while the old ones keep
// running. Nothing is opened or started; on error, what it loaded is freed.
func (a *Agent) provision(cfg *config.Config, old *parts) (np *parts, ch *change, err error) {
	first := old == nil
	if first {
		old = &parts{cfg: &config.Config{}}
	}
	oc := old.cfg
	np = &parts{cfg: cfg, models: map[string]*model{}, ruleStats: map[string]*ruleStats{}}
	ch = &change{}
	defer func() {
		if err != nil {
			for _, m := range ch.models {
				retire(m.running.Load())
				if sh := m.shadow.Load(); sh != nil {
					sh.Shutdown()
				}
			}
		}
	}()

	// MQTT first, since only it can fail (a TLS file): a changed link (or what its
	// deployer uses) is started again; the outbox keeps every message, and a transfer
	// under way resumes from disk.
	np.link, np.deployer = old.link, old.deployer
	if first || !reflect.DeepEqual(oc.MQTT, cfg.MQTT) || !reflect.DeepEqual(oc.Trust, cfg.Trust) ||
		!reflect.DeepEqual(oc.Deploy, cfg.Deploy) || oc.Device.Group != cfg.Device.Group {
		np.link, np.deployer = nil, nil
		if cfg.MQTT.Enabled {
			if np.link, err = a.newLink(cfg, a.logBase); err != nil {
				return nil, nil, err
			}
			np.deployer = a.newDeployer(cfg, np.link)
		}
		ch.relink = true
		if old.link != nil || np.link != nil {
			ch.changed = append(ch.changed, "mqtt")
		}
	}

	// Actuators and inputs: an unchanged one is kept; a changed or new one is opened by
	// swap.
	np.actuators, np.actOrder, ch.openActuators, ch.oldActuators = sortParts(ch, "actuator", cfg.Actuators,
		func(c config.Actuator) string { return c.Name }, old.actuators, old.actOrder, func(a *actuator) config.Actuator { return a.cfg })
	np.inputs, np.inOrder, ch.openInputs, ch.oldInputs = sortParts(ch, "input", cfg.Inputs,
		func(c config.Input) string { return c.Name }, old.inputs, old.inOrder, func(in *input) config.Input { return in.cfg })

	// Models: an unchanged one keeps running, with what a deployment put in it.
	for _, mc := range cfg.Models {
		np.modOrder = append(np.modOrder, mc.Name)
		cur, ok := old.models[mc.Name]
		if ok && reflect.DeepEqual(cur.cfg, mc) {
			np.models[mc.Name] = cur
			continue
		}
		m := a.newModel(mc)
		np.models[mc.Name] = m
		ch.models = append(ch.models, m)
		ch.changed = append(ch.changed, describeChange("model", mc.Name, ok))
	}
	for _, name := range old.modOrder {
		if m := old.models[name]; np.models[name] != m {
			ch.oldModels = append(ch.oldModels, m)
		}
	}

	// Cameras: one whose capture settings are unchanged keeps streaming; its pacing and
	// model change in place. Drift settings go with the camera's monitor.
	driftSame := reflect.DeepEqual(oc.Drift, cfg.Drift)
	for _, cc := range cfg.Cameras {
		i := slices.IndexFunc(old.cameras, func(c *camera) bool { return c.cfg().Name == cc.Name })
		if i >= 0 && driftSame && sameCapture(*old.cameras[i].cfg(), cc) {
			cur := old.cameras[i]
			np.cameras = append(np.cameras, cur)
			if m := np.models[cc.Model]; *cur.cfg() != cc || cur.model() != m {
				ch.retune = append(ch.retune, retune{cam: cur, cfg: cc, model: m})
				ch.changed = append(ch.changed, "camera "+cc.Name+" reconfigured")
			}
			continue
		}
		cam, err := a.newCamera(cfg, cc, np.models[cc.Model])
		if err != nil {
			return nil, nil, err
		}
		np.cameras = append(np.cameras, cam)
		ch.cameras = append(ch.cameras, cam)
		if i >= 0 {
			ch.oldCameras = append(ch.oldCameras, old.cameras[i])
		}
		ch.changed = append(ch.changed, describeChange("camera", cc.Name, i >= 0))
	}
	for _, c := range old.cameras {
		if !slices.ContainsFunc(np.cameras, func(n *camera) bool { return n.cfg().Name == c.cfg().Name }) {
			ch.oldCameras = append(ch.oldCameras, c)
			ch.changed = append(ch.changed, "camera "+c.cfg().Name+" removed")
		}
	}

	// Rules: a new engine; swap carries over the state of every unchanged rule.
	np.rules = rules.New(cfg.Rules, rules.Options{InputHigh: np.inputHigh})
	for _, r := range cfg.Rules {
		if st, ok := old.ruleStats[r.Name]; ok && reflect.DeepEqual(oc.RuleNamed(r.Name), &r) {
			np.ruleStats[r.Name] = st
			continue
		}
		np.ruleStats[r.Name] = newRuleStats()
		if !first {
			ch.changed = append(ch.changed, "rule "+r.Name)
		}
	}
	return np, ch, nil
}

// sortParts goes through the configured parts of one kind (actuators, inputs) against
// the old ones, in config order: an unchanged one is kept, a new or changed one is to be
// opened, and an old one changed or removed is to be let go. What changed is noted in ch.
func sortParts[C comparable, P any](ch *change, kind string, cfgs []C, nameOf func(C) string, old map[string]P, oldOrder []string,
	cfgOf func(P) C) (kept map[string]P, order []string, open []C, gone []P) {
	kept = map[string]P{}
	for _, c := range cfgs {
		name := nameOf(c)
		order = append(order, name)
		cur, ok := old[name]
		if ok && cfgOf(cur) == c {
			kept[name] = cur
			continue
		}
		open = append(open, c)
		if ok {
			gone = append(gone, cur)
		}
		ch.changed = append(ch.changed, describeChange(kind, name, ok))
	}
	for _, name := range oldOrder {
		if !slices.Contains(order, name) {
			gone = append(gone, old[name])
			ch.changed = append(ch.changed, kind+" "+name+" removed")
		}
	}
	return kept, order, open, gone
}

func describeChange(kind, name string, existed bool) string {
	if existed {
		return kind + " " + name
	}
	return kind + " " + name + " added"
}

// sameCapture reports whether two settings of a camera open the same stream the same
// way: then only its pacing, model or frame storage differ, which apply in place.
func sameCapture(a, b config.Camera) bool {
	a.DetectFPS, a.Model, a.StoreFrames = b.DetectFPS, b.Model, b.StoreFrames
	return a == b
}

// loadAtStart loads the bundle a deployment last made active for the model, or else the
// configured one. A pushed bundle that no longer loads falls back to the configured one.
func (a *Agent) loadAtStart(reg *infer.Registry, m *model) (*loaded, error) {
	if dir, ok := a.store.Active(m.name); ok {
		d, backend, err := loadModel(reg, dir, m.cfg)
		if err == nil {
			st, _ := a.store.State(m.name)
			return &loaded{detector: d, dir: dir, backend: backend, deployment: st.LastDeployment}, nil
		}
		a.logger.Error("the deployed bundle does not load; using the configured one", "model", m.name, "bundle", dir, "err", err)
	}
	d, backend, err := loadModel(reg, m.configured, m.cfg)
	if err != nil {
		return nil, err
	}
	return &loaded{detector: d, dir: m.configured, backend: backend}, nil
}

// newBackends lists the inference backends built into vigil, each opening its runtime
// library (from the config, or the system's) only when a model first needs it.
func newBackends(rt config.Runtimes) *infer.Registry {
	return backends.New(backends.Libraries{ONNXRuntime: rt.ONNXRuntime, TFLite: rt.TFLite, OpenVINO: rt.OpenVINO})
}

// loadModel loads a bundle with a model's runtime settings (backends.Load picks the
// backend: the config's choice over the bundle's preference).
func loadModel(reg *infer.Registry, dir string, mc config.Model) (*detector.Detector, string, error) {
	return backends.Load(reg, dir, mc.Backend, infer.LoadOptions{Device: mc.Device, Threads: mc.Threads, Optimization: mc.Optimization})
}

// cameraSpec is what capture opens for a camera.
func cameraSpec(cc config.Camera) (capture.Spec, error) {
	u, err := camurl.Parse(cc.URL)
	if err != nil {
		return capture.Spec{}, fmt.Errorf("camera %s: %w", cc.Name, err)
	}
	return capture.SpecFor(u, cc.RTSPTransport, cc.StallTimeout), nil
}

// newDriftMonitor is a camera's drift monitor, or nil when drift.enabled is off.
func newDriftMonitor(d config.Drift) *drift.Monitor {
	if !d.Enabled {
		return nil
	}
	return drift.New(drift.Options{Every: d.Every, Baseline: d.Baseline, Window: d.Window, Threshold: d.Threshold, Clear: d.Clear})
}

// newActuator opens an actuator's line and drives it safe. A line that cannot be driven
// (a GPIO chip missing) leaves the actuator in fault, retried on every command, and is
// reported as fault for an event: the rest of the agent runs.
func (a *Agent) newActuator(ac config.Actuator) (*actuator, map[string]string) {
	safe, _ := hal.ParseLevel(ac.Safe)
	normal := safe
	if ac.Initial != "" {
		normal, _ = hal.ParseLevel(ac.Initial)
	}
	line, simLine := drivers.Output(drivers.Line{Driver: ac.Driver, Chip: ac.Chip, Line: ac.Line, ActiveLow: ac.ActiveLow})
	out, err := hal.NewOutput(ac.Name, line, hal.OutputOptions{Safe: safe, Normal: &normal, Logger: a.logBase})
	var fault map[string]string
	if err != nil {
		a.logger.Error("actuator in fault; the agent runs without it until its line works", "actuator", ac.Name, "err", err)
		fault = map[string]string{"actuator": ac.Name, "driver": ac.Driver, "error": err.Error()}
	}
	return &actuator{Output: out, cfg: ac, sim: simLine, normal: normal}, fault
}

// newInput opens an input's line; Run's group runs it (startInput).
func (a *Agent) newInput(ic config.Input) *input {
	line, simIn := drivers.Input(drivers.Line{Driver: ic.Driver, Chip: ic.Chip, Line: ic.Line, ActiveLow: ic.ActiveLow})
	in := &input{sim: simIn, cfg: ic}
	in.Input = hal.NewInput(ic.Name, line, hal.InputOptions{Debounce: ic.Debounce, Logger: a.logBase, OnChange: a.inputChanged})
	return in
}

// newModel loads a model: the bundle a deployment made active, else the configured one.
// A model that cannot load is reported on the status page and in /readyz; its cameras
// keep streaming without detection and the actuators stay safe.
func (a *Agent) newModel(mc config.Model) *model {
	m := &model{name: mc.Name, cfg: mc, configured: mc.Bundle}
	if m.configured == "" {
		m.configured = filepath.Join(a.bundled, assets.DefaultBundleDir)
	}
	run, err := a.loadAtStart(a.backends, m)
	if err != nil {
		m.err = err
		a.logger.Error("model not loaded; its cameras run without detection", "model", mc.Name, "err", err)
		return m
	}
	m.running.Store(run)
	man := run.detector.Manifest()
	a.logger.Info("model loaded", "model", mc.Name, "bundle", man.Name, "version", man.Version, "backend", run.backend, "deployment", run.deployment)
	if dir, deployment, ok := a.store.Shadow(mc.Name); ok {
		if sh := a.loadShadow(mc, dir, mc, deployment); sh != nil {
			m.shadow.Store(sh)
			return m
		}
	}
	m.shadow.Store(a.configShadow(mc))
	return m
}

// configShadow loads the candidate models[].shadow names, or returns nil.
func (a *Agent) configShadow(mc config.Model) *shadow.Shadow {
	sc := mc.Shadow
	if sc.Bundle == "" {
		return nil
	}
	return a.loadShadow(mc, sc.Bundle, config.Model{Backend: sc.Backend, Device: mc.Device, Threads: mc.Threads}, "")
}

// loadShadow loads the bundle in dir as mc's shadow with the runtime settings of rt;
// deployment names the push that installed it ("" for the config's). A bundle that
// does not load is logged and nil returned: the model runs on without a shadow.
func (a *Agent) loadShadow(mc config.Model, dir string, rt config.Model, deployment string) *shadow.Shadow {
	det, backend, err := loadModel(a.backends, dir, rt)
	if err != nil {
		a.logger.Error("shadow model not loaded", "model", mc.Name, "shadow", dir, "deployment", deployment, "err", err)
		return nil
	}
	a.logger.Info("shadow model loaded", "model", mc.Name, "bundle", det.Manifest().Name, "version", det.Manifest().Version,
		"backend", backend, "deployment", deployment)
	return shadow.New(det, dir, mc.Shadow.Every, deployment)
}

// newCamera makes a camera of cfg on model m; startCamera runs it.
func (a *Agent) newCamera(cfg *config.Config, cc config.Camera, m *model) (*camera, error) {
	logger := a.logBase
	spec, err := cameraSpec(cc)
	if err != nil {
		return nil, err
	}
	cam := &camera{
		cap: capture.NewCamera(capture.CameraOptions{
			Name: cc.Name, StallTimeout: cc.StallTimeout, BackoffMin: cc.Backoff.Min, BackoffMax: cc.Backoff.Max,
			Lossless: spec.Fast, Logger: logger, OnState: a.cameraChanged,
			Open: func(ctx context.Context) (capture.Source, error) { return capture.Open(ctx, spec) },
		}),
		drift:  newDriftMonitor(cfg.Drift),
		logger: logger.With("component", "pipeline", "camera", cc.Name),
		snap:   &stills.Live{},
		stats:  newDetectStats(),
	}
	cam.conf.Store(&cc)
	cam.mod.Store(m)
	return cam, nil
}
