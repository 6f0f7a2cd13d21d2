// Package agent wires Vigil's rooms into one running daemon and owns its lifecycle:
// cameras (capture) feed detectors (infer), whose detections go through the rules to
// actuators (hal) and, as events, into the outbox (sync/outbox); the status page,
// the JSON API and Prometheus metrics show all of it. It is the only package that
// imports the others; cmd/vigil only parses flags and calls New and Run.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/agent/rules"
	"github.com/vigil-edge/vigil/assets"
	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/capture/camurl"
	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/hal/gpio"
	"github.com/vigil-edge/vigil/hal/sim"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/backends"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/drift"
	"github.com/vigil-edge/vigil/sync/deploy"
	"github.com/vigil-edge/vigil/sync/mqttlink"
	"github.com/vigil-edge/vigil/sync/outbox"
)

// Options are what the agent needs besides its config.
type Options struct {
	Version string
	Logger  *slog.Logger
	// Listener, if set, serves HTTP instead of listening on cfg.HTTP.Listen (tests
	// pass 127.0.0.1:0).
	Listener net.Listener
	// Bundled, if set, is a directory where assets.Extract already put the embedded
	// files (the bundled model and clip); empty: they are extracted under
	// device.state_dir/bundled. Many agents in one process (the fleet load test) share
	// one copy instead of writing 4 MB each.
	Bundled string
	// HangAfter is how long a frame may be in the pipeline before the systemd watchdog
	// stops being pinged; 0 means DefaultHangAfter.
	HangAfter time.Duration
}

// Agent is one running Vigil.
type Agent struct {
	cur     atomic.Pointer[parts] // what the config makes of the agent; see parts
	version string
	logger  *slog.Logger
	started time.Time

	outbox     *outbox.Outbox
	store      *deploy.Store // models installed by deployments
	backends   *infer.Registry
	bundled    string // where the embedded files were extracted
	snapshots  *snapshotStore
	samples    *snapshotStore // frames kept for retraining (samples.go)
	uploader   *sampleUploader
	events     *eventLog
	metrics    *metrics
	listener   net.Listener
	http       *http.Server
	closeOnce  sync.Once
	hangAfter  time.Duration
	fatal      chan error    // a panic outside Run's goroutines (an MQTT handler), to stop Run
	running    chan struct{} // closed once Run has started the parts
	inferSlots chan struct{} // POST /api/infer requests running

	// Run's group, for the parts a reload starts; runMu serialises reloads with Run's
	// start and guards these.
	runMu sync.Mutex
	// modelsMu is held by Reload while it replaces models and by a deployment while it
	// changes one (deployer.commit), so that a deployment never lands on a model a
	// reload has just retired.
	modelsMu   sync.Mutex
	group      *errgroup.Group
	groupCtx   context.Context
	logBase    *slog.Logger                 // the logger Options gave
	lastReload atomic.Pointer[ReloadResult] // nil until the first reload
	latchFile  string                       // state_dir/latches.json
	latchMu    sync.Mutex                   // guards latched and the file
	latched    []string                     // as last saved

	// beforeRules, when set by a test, runs before each frame's rules (to inject a panic
	// where a rule or decoder bug would strike).
	beforeRules func(camera string)
}

// parts is what a config makes of the agent: its cameras, models, actuators, inputs,
// rules and MQTT link. A reload builds new parts, reusing every object whose config did
// not change (an untouched camera keeps streaming, an untouched output keeps its level),
// and swaps them in as a whole; readers take one consistent snapshot with a.parts().
type parts struct {
	cfg       *config.Config
	actuators map[string]*actuator // by name
	actOrder  []string
	models    map[string]*model // by name
	modOrder  []string
	cameras   []*camera
	inputs    map[string]*input // by name
	inOrder   []string
	rules     *rules.Engine
	ruleStats map[string]*ruleStats // by rule name
	link      *mqttlink.Link        // nil when mqtt.enabled is false
	deployer  *deployer             // nil when mqtt.enabled is false
}

// parts returns the agent's current parts. Keep the result for one task: a reload may
// replace them meanwhile.
func (a *Agent) parts() *parts { return a.cur.Load() }

type actuator struct {
	*hal.Output
	cfg config.Actuator
	// cmd is held from deciding what the rules want of the output to commanding it, so
	// that an acknowledge and a rule firing at once cannot leave the output at a level
	// the rules no longer want.
	cmd sync.Mutex
	sim *sim.Line // nil for hardware drivers
	// normal is the operating level (config initial, else safe): driven once the
	// pipeline runs, and when the last rule holding the actuator lets go.
	normal hal.Level
}

type input struct {
	*hal.Input
	sim  *sim.Input // nil for hardware drivers; the API sets it
	cfg  config.Input
	stop context.CancelFunc
	done chan struct{}
}

// model is one configured model. What runs can change while the pipelines use it (a
// pushed model is swapped in), so the pipelines load it atomically for each frame.
type model struct {
	// shadow is the candidate run beside it: pushed by a shadow deployment, else
	// models[].shadow; nil without either. setShadow changes it.
	shadow     atomic.Pointer[shadow]
	name       string
	cfg        config.Model
	configured string                 // the bundle directory the config names (or the bundled one)
	running    atomic.Pointer[loaded] // nil while no bundle is loaded
	err        error                  // why the configured bundle did not load at start
}

// loaded is a bundle loaded on a backend.
type loaded struct {
	detector *detector.Detector
	dir      string // the bundle directory
	backend  string
	// deployment names the push that installed it; "" for the configured bundle.
	deployment string
	stats      runStats

	mu      sync.Mutex // guards users and retired
	users   int        // frames on it now
	retired bool       // swapped out: closed when the last frame is done
}

// acquire takes the running bundle for one frame (release it after), or returns nil
// when none is loaded.
func (m *model) acquire() *loaded {
	for {
		l := m.running.Load()
		if l == nil || l.acquire() {
			return l
		}
		// Retired between the load and the acquire: a swap happened; take the new one.
	}
}

// detector is the running detector, or nil.
func (m *model) detector() *detector.Detector {
	if l := m.running.Load(); l != nil {
		return l.detector
	}
	return nil
}

// New builds an agent from a validated config: it prepares the state directory, opens
// the outbox, drives every actuator to its safe level, loads the models and opens the
// HTTP listener. Nothing runs until Run. On error, whatever was opened is closed.
func New(cfg *config.Config, opts Options) (a *Agent, err error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a = &Agent{fatal: make(chan error, 1), running: make(chan struct{}), version: opts.Version, logger: logger.With("component", "agent"), started: time.Now(),
		events: newEventLog(100)}
	p := &parts{cfg: cfg, actuators: map[string]*actuator{}, inputs: map[string]*input{}, models: map[string]*model{}, ruleStats: map[string]*ruleStats{}}
	a.cur.Store(p) // filled in below, before anything runs
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	a.metrics = newMetrics(a)

	state := cfg.Device.StateDir
	if err := os.MkdirAll(state, 0o750); err != nil {
		return a, fmt.Errorf("create state directory (device.state_dir) %s: %w", state, err)
	}
	a.bundled = opts.Bundled
	if a.bundled == "" {
		if a.bundled, err = assets.Extract(filepath.Join(state, "bundled")); err != nil {
			return a, err
		}
	}

	// Actuators first: every output is at its safe level before anything else runs. An
	// output whose line cannot be driven (a GPIO chip missing) stays in the fault state,
	// retried on every command, and the rest of the agent runs.
	a.logBase = logger
	var faults []map[string]string
	for _, ac := range cfg.Actuators {
		act, fault := a.newActuator(ac)
		if fault != nil {
			faults = append(faults, fault)
		}
		p.actuators[ac.Name] = act
		p.actOrder = append(p.actOrder, ac.Name)
	}
	for _, ic := range cfg.Inputs {
		p.inputs[ic.Name] = a.newInput(ic)
		p.inOrder = append(p.inOrder, ic.Name)
	}

	a.outbox, err = outbox.Open(outbox.Options{
		Path: filepath.Join(state, "outbox"), Device: cfg.Device.ID, MaxBytes: int64(cfg.Outbox.MaxBytes),
		Fsync: outbox.Fsync(cfg.Outbox.Fsync), FsyncInterval: cfg.Outbox.FsyncInterval,
		Logger: logger, OnFault: a.events.add,
	})
	if err != nil {
		return a, err
	}
	for _, body := range faults {
		a.recordEvent(context.Background(), "fault", body)
	}
	if cfg.MQTT.Enabled {
		if p.link, err = a.newLink(cfg, logger); err != nil {
			return a, err
		}
	}

	// A model that cannot load is reported on the status page and in /readyz; its
	// cameras keep streaming without detection and the actuators stay safe.
	backends := newBackends(cfg.Runtimes)
	a.backends = backends
	if a.store, err = deploy.OpenStore(filepath.Join(state, "models"), deploy.Limits{MaxBytes: int64(cfg.Deploy.MaxBytes)}); err != nil {
		return a, fmt.Errorf("open the model store: %w", err)
	}
	for _, mc := range cfg.Models {
		p.models[mc.Name] = a.newModel(mc)
		p.modOrder = append(p.modOrder, mc.Name)
	}

	if p.link != nil {
		p.deployer = newDeployer(a, cfg, p.link, a.store, backends, logger)
	}
	p.rules = rules.New(cfg.Rules, rules.Options{InputHigh: a.inputHigh})
	a.latchFile = filepath.Join(state, "latches.json")
	a.restoreLatches()
	p.ruleStats = map[string]*ruleStats{}
	for _, r := range cfg.Rules {
		p.ruleStats[r.Name] = &ruleStats{}
	}
	a.snapshots = newSnapshotStore(filepath.Join(state, "snapshots"), int64(cfg.Snapshots.MaxBytes), logger)
	a.samples = newSnapshotStore(filepath.Join(state, "samples"), int64(cfg.Samples.MaxBytes), logger)
	a.samples.clean = true
	a.uploader = a.newUploader()
	for _, cc := range cfg.Cameras {
		cam, err := a.newCamera(cc, p.models[cc.Model])
		if err != nil {
			return a, err
		}
		p.cameras = append(p.cameras, cam)
	}

	a.inferSlots = make(chan struct{}, cfg.HTTP.InferConcurrency)
	a.hangAfter = opts.HangAfter
	if a.hangAfter <= 0 {
		a.hangAfter = DefaultHangAfter
	}
	a.listener = opts.Listener
	if a.listener == nil {
		a.listener, err = net.Listen("tcp", cfg.HTTP.Listen)
		if err != nil {
			return a, fmt.Errorf("http.listen %s: %w", cfg.HTTP.Listen, err)
		}
	}
	a.http = &http.Server{Handler: a.routes(), ReadHeaderTimeout: 10 * time.Second}
	return a, nil
}

// openLine gives an actuator's output line for its driver. simLine is set for the sim
// driver, whose history the status page shows. A gpio line is opened on first use and
// reopened (at most once a second) while that fails, so an output whose chip is missing
// is in fault, not fatal, and works once the chip is there.
func openLine(ac config.Actuator) (line hal.Line, simLine *sim.Line) {
	if ac.Driver == "sim" {
		simLine = sim.New(nil)
		return simLine, simLine
	}
	return hal.Retrying(gpio.Driver, func() (hal.Line, error) {
		return gpio.OpenOutput(ac.Chip, ac.Line, ac.ActiveLow)
	}), nil
}

// openInputLine is openLine for inputs.
func openInputLine(ic config.Input) (line hal.InputLine, simIn *sim.Input) {
	if ic.Driver == "sim" {
		simIn = sim.NewInput()
		return simIn, simIn
	}
	return hal.RetryingInput(gpio.Driver, func() (hal.InputLine, error) {
		return gpio.OpenInput(ic.Chip, ic.Line, ic.ActiveLow, gpio.PullNoChange)
	}), nil
}

// inputChanged records an input's accepted change as an event and, when it goes high,
// releases the rules latched until it.
func (a *Agent) inputChanged(name string, level hal.Level) {
	a.logger.Info("input changed", "input", name, "level", level)
	a.recordEvent(context.Background(), "input", map[string]string{"input": name, "state": level.String()})
	if level == hal.High {
		for _, fire := range a.parts().rules.InputRose(name) {
			a.release(context.Background(), fire)
		}
	}
}

// recordEvent puts an event into the outbox and the recent-events list, logging a
// failure to commit it (the outbox keeps a queued event and retries the disk).
func (a *Agent) recordEvent(ctx context.Context, kind string, body any) outbox.Envelope {
	env, err := a.enqueueEvent(ctx, kind, body)
	if err != nil {
		a.logger.Error("event not committed", "kind", kind, "seq", env.Seq, "err", err)
	}
	if env.Seq != 0 {
		a.events.add(env)
	}
	return env
}

// DriveSafe drives every actuator of cfg to its safe level and releases it, without
// running anything else: `vigil safe`, for systemd's ExecStopPost= after the agent was
// killed. It reports one line per actuator and fails if any could not be driven.
func DriveSafe(cfg *config.Config, report func(actuator, driver, result string)) error {
	var errs []error
	for _, ac := range cfg.Actuators {
		safe, _ := hal.ParseLevel(ac.Safe)
		var err error
		if ac.Driver == "sim" {
			err = nil // nothing outlives the process that drove it
		} else if line, oerr := gpio.OpenOutput(ac.Chip, ac.Line, ac.ActiveLow); oerr != nil {
			err = oerr
		} else {
			err = errors.Join(line.Out(safe), line.Close())
		}
		if err != nil {
			report(ac.Name, ac.Driver, "FAILED: "+err.Error())
			errs = append(errs, fmt.Errorf("actuator %s: %w", ac.Name, err))
			continue
		}
		result := "safe (" + safe.String() + ")"
		if ac.Driver == "sim" {
			result += "; a simulated line holds no state between processes"
		}
		report(ac.Name, ac.Driver, result)
	}
	return errors.Join(errs...)
}

// loadAtStart loads the bundle a deployment last made active for the model, or else the
// configured one. A pushed bundle that no longer loads falls back to the configured one.
func (a *Agent) loadAtStart(backends *infer.Registry, m *model) (*loaded, error) {
	if dir, ok := a.store.Active(m.name); ok {
		d, backend, err := loadModel(backends, dir, m.cfg)
		if err == nil {
			st, _ := a.store.State(m.name)
			return &loaded{detector: d, dir: dir, backend: backend, deployment: st.LastDeployment}, nil
		}
		a.logger.Error("the deployed bundle does not load; using the configured one", "model", m.name, "bundle", dir, "err", err)
	}
	d, backend, err := loadModel(backends, m.configured, m.cfg)
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

// loadModel picks the backend (the config's choice over the bundle's preference) and
// loads the bundle with it.
func loadModel(backends *infer.Registry, dir string, mc config.Model) (*detector.Detector, string, error) {
	m, err := infer.LoadManifest(dir)
	if err != nil {
		return nil, "", err
	}
	name := mc.Backend
	if name == "" {
		name = m.Backend
	}
	if name == "" {
		name = backends.Names()[0]
	}
	backend, err := backends.Get(name)
	if err != nil {
		return nil, name, err
	}
	if err := backend.Available(); err != nil {
		return nil, name, err
	}
	d, err := detector.Load(backend, dir, infer.LoadOptions{Device: mc.Device, Threads: mc.Threads, Optimization: mc.Optimization})
	return d, name, err
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
func (a *Agent) newDriftMonitor() *drift.Monitor {
	d := a.parts().cfg.Drift
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
	line, simLine := openLine(ac)
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
	line, simIn := openInputLine(ic)
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
func (a *Agent) configShadow(mc config.Model) *shadow {
	sc := mc.Shadow
	if sc.Bundle == "" {
		return nil
	}
	return a.loadShadow(mc, sc.Bundle, config.Model{Backend: sc.Backend, Device: mc.Device, Threads: mc.Threads}, "")
}

// loadShadow loads the bundle in dir as mc's shadow with the runtime settings of rt;
// deployment names the push that installed it ("" for the config's). A bundle that
// does not load is logged and nil returned: the model runs on without a shadow.
func (a *Agent) loadShadow(mc config.Model, dir string, rt config.Model, deployment string) *shadow {
	det, backend, err := loadModel(a.backends, dir, rt)
	if err != nil {
		a.logger.Error("shadow model not loaded", "model", mc.Name, "shadow", dir, "deployment", deployment, "err", err)
		return nil
	}
	a.logger.Info("shadow model loaded", "model", mc.Name, "bundle", det.Manifest().Name, "version", det.Manifest().Version,
		"backend", backend, "deployment", deployment)
	sh := newShadow(det, dir, mc.Shadow.Every)
	sh.deployment = deployment
	return sh
}

func (a *Agent) newCamera(cc config.Camera, m *model) (*camera, error) {
	logger := a.logBase
	spec, err := cameraSpec(cc)
	if err != nil {
		return nil, err
	}
	cam := &camera{
		cfg: cc,
		cap: capture.NewCamera(capture.CameraOptions{
			Name: cc.Name, StallTimeout: cc.StallTimeout, BackoffMin: cc.Backoff.Min, BackoffMax: cc.Backoff.Max,
			Lossless: spec.Fast, Logger: logger, OnState: a.cameraChanged,
			Open: func(ctx context.Context) (capture.Source, error) { return capture.Open(ctx, spec) },
		}),
		model:  m,
		drift:  a.newDriftMonitor(),
		logger: logger.With("component", "pipeline", "camera", cc.Name),
		snap:   &snapshot{},
		stats:  newDetectStats(),
	}
	return cam, nil
}

// Run runs the pipeline, the HTTP server and telemetry until ctx ends or a part fails,
// then drives the actuators safe and closes everything. It returns nil on a clean
// shutdown.
func (a *Agent) Run(ctx context.Context) (err error) {
	defer func() { err = errors.Join(err, a.Close()) }()
	g, ctx := errgroup.WithContext(ctx)
	a.runMu.Lock()
	a.group, a.groupCtx = g, ctx
	p := a.parts()
	for _, cam := range p.cameras {
		a.startCamera(cam)
	}
	for _, name := range p.inOrder {
		a.startInput(p.inputs[name])
	}
	// Shadows before the deployer, which may replace one.
	for _, name := range p.modOrder {
		a.startShadow(p.models[name])
	}
	if p.link != nil {
		a.startLink(p.link, p.deployer)
	}
	a.runMu.Unlock()
	close(a.running)
	a.goNormal(ctx)
	// Requests inherit the agent's context, so event streams end when it stops
	// (Shutdown waits for active requests and would otherwise wait for them).
	a.http.BaseContext = func(net.Listener) context.Context { return ctx }
	g.Go(func() error {
		a.logger.Info("status page listening", "url", "http://"+a.listener.Addr().String())
		if err := a.http.Serve(a.listener); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		// Outputs go safe first, before waiting for anything: a camera stuck in a
		// blocking read must not keep a relay energised while the rest shuts down.
		a.safeAll("shutdown")
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := a.http.Shutdown(shutdown); err != nil {
			a.http.Close() // requests still running after 2s are cut off
		}
		return nil
	})
	sm := newServiceManager(a)
	g.Go(a.guard("systemd", func() error { return sm.Run(ctx) }))
	g.Go(func() error {
		select {
		case err := <-a.fatal:
			return err
		case <-ctx.Done():
			return nil
		}
	})
	g.Go(a.guard("telemetry", func() error { return a.telemetryLoop(ctx) }))
	g.Go(a.guard("config watch", func() error { return a.watchConfig(ctx) }))
	g.Go(a.guard("stall watch", func() error { return a.watchStalls(ctx) }))
	g.Go(a.guard("samples upload", func() error { return a.uploader.Run(ctx) }))
	err = g.Wait()
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// cameraChanged records a camera's change of state (streaming, backoff with the
// reason, ended) as an event.
func (a *Agent) cameraChanged(name, state, lastErr string) {
	body := map[string]string{"camera": name, "state": state}
	if lastErr != "" {
		body["error"] = lastErr
	}
	a.recordEvent(context.Background(), "camera", body)
}

// stallCheck is how often the cameras' health is looked at for on_stall.
const stallCheck = 200 * time.Millisecond

// watchStalls drives the actuators of a camera's `on_stall: safe` rules to their safe
// level when the camera stops delivering frames (stalled, or failed and retrying):
// a rule cannot see what it is supposed to guard. It acts on the change, once, so an
// operator can still move the output by hand while the camera is down.
func (a *Agent) watchStalls(ctx context.Context) error {
	t := time.NewTicker(stallCheck)
	defer t.Stop()
	healthy := map[*camera]bool{} // cameras come and go with reloads
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cams := a.parts().cameras
		for c := range healthy {
			if !slices.Contains(cams, c) {
				delete(healthy, c)
			}
		}
		for _, cam := range cams {
			st := cam.cap.Status()
			ok := st.State == capture.StateStreaming || st.State == capture.StateConnecting
			if healthy[cam] && !ok {
				reason := fmt.Sprintf("camera %s %s", cam.cfg.Name, st.State)
				if st.LastError != "" {
					reason += ": " + st.LastError
				}
				a.failSafe(cam, reason)
			}
			if !healthy[cam] && st.State == capture.StateStreaming {
				a.restore(cam, "camera "+cam.cfg.Name+" streaming again")
			}
			healthy[cam] = ok
		}
	}
}

// failSafe drives the actuators of the camera's `on_stall: safe` rules safe. restore
// undoes it once the camera (or its model) works again.
func (a *Agent) failSafe(cam *camera, reason string) {
	cam.safed.Store(true)
	for _, r := range a.parts().cfg.Rules {
		if r.Camera != cam.cfg.Name || r.OnStall != "safe" || r.Action.Actuator == "" {
			continue
		}
		act := a.parts().actuators[r.Action.Actuator]
		act.cmd.Lock()
		err := act.Safe(reason)
		act.cmd.Unlock()
		if err != nil {
			a.logger.Error("fail-safe: actuator not safe", "actuator", r.Action.Actuator, "rule", r.Name, "err", err)
			continue
		}
		a.logger.Warn("fail-safe: actuator driven safe", "actuator", r.Action.Actuator, "rule", r.Name, "reason", reason)
		body := map[string]string{"actuator": r.Action.Actuator, "rule": r.Name, "camera": cam.cfg.Name, "command": "safe", "reason": reason}
		a.recordEvent(context.Background(), "failsafe", body)
	}
}

// restore returns the actuators that failSafe drove safe for cam to what the rules want
// now: the state of a rule still holding one, else its normal level.
func (a *Agent) restore(cam *camera, reason string) {
	if cam.stats.status().LastError != "" || !a.modelsLoaded() {
		return // its detection still fails: what it guards stays safe
	}
	if !cam.safed.Swap(false) {
		return
	}
	done := map[string]bool{}
	for _, r := range a.parts().cfg.Rules {
		name := r.Action.Actuator
		if r.Camera != cam.cfg.Name || r.OnStall != "safe" || name == "" || done[name] {
			continue
		}
		done[name] = true
		level, _ := a.settle(name, reason)
		a.logger.Info("fail-safe over: actuator restored", "actuator", name, "level", level, "reason", reason)
		body := map[string]string{"actuator": name, "camera": cam.cfg.Name, "command": level.String(), "reason": reason}
		a.recordEvent(context.Background(), "failsafe", body)
	}
}

// settle drives an actuator to what the rules want now: the state of the first rule
// still holding it (held or latched), else its normal level.
//
// An output whose rules are blind (a camera guarding it is failed safe, or a model did
// not load) stays at its safe level instead of going back to normal.
func (a *Agent) settle(name, reason string) (hal.Level, error) {
	act := a.parts().actuators[name]
	act.cmd.Lock()
	defer act.cmd.Unlock()
	level := act.normal
	if holders := a.parts().rules.Holding(name); len(holders) > 0 {
		level, _ = hal.ParseLevel(holders[0].Action.State)
		reason += "; held by rule " + holders[0].Name
	} else if blind := a.blind(name); blind != "" {
		level, _ = hal.ParseLevel(a.parts().cfg.ActuatorNamed(name).Safe)
		reason += "; kept safe: " + blind
	}
	err := act.Set(level, reason)
	a.saveLatches()
	return level, err
}

// blind says why the rules that guard an actuator cannot see ("" when they can): a
// model that did not load, or a camera of an `on_stall: safe` rule failed safe.
func (a *Agent) blind(actuator string) string {
	if !a.modelsLoaded() {
		return "a model did not load"
	}
	for _, cam := range a.parts().cameras {
		if !cam.safed.Load() {
			continue
		}
		for _, r := range a.parts().cfg.Rules {
			if r.Camera == cam.cfg.Name && r.OnStall == "safe" && r.Action.Actuator == actuator {
				return "camera " + cam.cfg.Name + " is failed safe"
			}
		}
	}
	return ""
}

// saveLatches keeps the latched rules on disk: after a restart (a crash, a power cut) a
// weld robot paused until an operator acknowledges must stay paused.
func (a *Agent) saveLatches() {
	a.latchMu.Lock()
	defer a.latchMu.Unlock()
	names := a.parts().rules.Latched()
	if slices.Equal(names, a.latched) {
		return
	}
	data, _ := json.Marshal(names)
	tmp := a.latchFile + ".tmp"
	err := os.WriteFile(tmp, data, 0o640)
	if err == nil {
		err = os.Rename(tmp, a.latchFile)
	}
	if err != nil {
		a.logger.Error("latched rules not saved: a restart would forget them", "err", err)
		return
	}
	a.latched = names
}

// restoreLatches latches again the rules that were latched when the agent stopped.
func (a *Agent) restoreLatches() {
	data, err := os.ReadFile(a.latchFile)
	if err != nil {
		return
	}
	var names []string
	if err := json.Unmarshal(data, &names); err != nil {
		a.logger.Error("latched rules file unreadable; nothing restored", "file", a.latchFile, "err", err)
		return
	}
	a.latched = names
	for _, r := range a.parts().rules.RestoreLatched(names) {
		a.logger.Warn("rule still latched from before the restart", "rule", r.Name, "actuator", r.Action.Actuator, "until", r.Action.Until)
		a.recordEvent(context.Background(), "latch", map[string]string{"rule": r.Name, "actuator": r.Action.Actuator,
			"until": r.Action.Until, "reason": "latched before the restart"})
	}
}

// modelsLoaded reports whether every model loaded: with one missing, its rules are
// blind, so outputs stay at their safe level instead of their normal one.
func (a *Agent) modelsLoaded() bool {
	for _, m := range a.parts().models {
		if m.detector() == nil {
			return false
		}
	}
	return true
}

// goNormal drives every actuator from its safe start level to its normal level, once
// the pipeline runs.
func (a *Agent) goNormal(ctx context.Context) {
	if ctx.Err() != nil {
		return // a part already failed and drove everything safe
	}
	if !a.modelsLoaded() {
		a.logger.Warn("a model did not load: actuators stay at their safe level")
		return
	}
	for _, name := range a.parts().actOrder {
		if _, err := a.settle(name, "pipeline running"); err != nil {
			a.logger.Error("actuator: cannot drive its initial level", "actuator", name, "err", err)
		}
	}
}

// inputHigh reports an input's debounced level, for rule interlocks.
func (a *Agent) inputHigh(name string) bool {
	in, ok := a.parts().inputs[name]
	return ok && in.Level() == hal.High
}

// recoverPanic is guard for code that runs on goroutines Run does not own (MQTT
// handlers, downloads): deferred there, it turns a panic into the same fail-safe stop.
func (a *Agent) recoverPanic(part string) {
	if p := recover(); p != nil {
		a.safeAll(fmt.Sprintf("panic in %s", part))
		a.logger.Error("panic: actuators driven safe, stopping", "part", part, "panic", p, "stack", string(debug.Stack()))
		select {
		case a.fatal <- fmt.Errorf("panic in %s: %v", part, p):
		default:
		}
	}
}

// guard runs one of the agent's parts and turns a panic in it into fail-safe: every
// actuator goes safe, the panic and its stack are logged, and the part returns an
// error, which stops the agent with a non-zero exit so that systemd restarts it.
func (a *Agent) guard(part string, run func() error) func() error {
	return func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				a.safeAll(fmt.Sprintf("panic in %s", part))
				a.logger.Error("panic: actuators driven safe, stopping", "part", part, "panic", p, "stack", string(debug.Stack()))
				err = fmt.Errorf("panic in %s: %v", part, p)
			}
		}()
		return run()
	}
}

// safeAll drives every actuator to its safe level, logging what fails.
func (a *Agent) safeAll(reason string) {
	for _, name := range a.parts().actOrder {
		if err := a.parts().actuators[name].Safe(reason); err != nil {
			a.logger.Error("actuator not safe", "actuator", name, "reason", reason, "err", err)
		}
	}
}

// Close drives every actuator to its safe level, flushes and closes the outbox and
// frees the models. Run calls it; a second call does nothing.
func (a *Agent) Close() error {
	var errs []error
	a.closeOnce.Do(func() {
		for _, name := range a.parts().actOrder {
			if err := a.parts().actuators[name].Close(); err != nil {
				errs = append(errs, err)
			}
		}
		for _, name := range a.parts().inOrder {
			a.parts().inputs[name].Close()
		}
		if a.listener != nil {
			a.listener.Close() // already closed after Run; needed when Run never ran
		}
		if a.outbox != nil {
			if err := a.outbox.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		for _, name := range a.parts().modOrder {
			if d := a.parts().models[name].detector(); d != nil {
				d.Close()
			}
			a.setShadow(a.parts().models[name], nil)
		}
		if len(errs) == 0 {
			a.logger.Info("stopped; actuators safe, outbox closed")
		}
	})
	return errors.Join(errs...)
}

// Addr is the HTTP listener's address.
func (a *Agent) Addr() net.Addr { return a.listener.Addr() }
