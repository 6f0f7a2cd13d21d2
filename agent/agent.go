// Package agent wires Vigil's rooms into one running daemon and owns its lifecycle:
// cameras (capture) feed detectors (infer), whose detections go through the rules to
// actuators (hal) and, as events, into the outbox (sync/outbox); the status page,
// the JSON API and Prometheus metrics show all of it. It is the only package that
// imports the others; cmd/vigil only parses flags and calls New and Run.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/agent/web"
	"github.com/vigil-edge/vigil/assets"
	"github.com/vigil-edge/vigil/capture/stills"
	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/hal/drivers"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/internal/sdnotify"
	"github.com/vigil-edge/vigil/sync/deploy"
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

	outbox    *outbox.Outbox
	store     *deploy.Store // models installed by deployments
	backends  *infer.Registry
	bundled   string        // where the embedded files were extracted
	snapshots *stills.Store // frames that made rules fire, matches drawn
	samples   *stills.Store // frames kept for retraining, as captured (samples.go)
	uploader  *sampleUploader
	events    *web.Events
	metrics   *metrics
	listener  net.Listener
	http      *http.Server
	closeOnce sync.Once
	hangAfter time.Duration
	fatal     chan error    // a panic outside Run's goroutines (an MQTT handler), to stop Run
	running   chan struct{} // closed once Run has started the parts

	// Run's group, for the parts a reload starts; runMu serialises reloads with Run's
	// start and guards these.
	runMu sync.Mutex
	// modelsMu is held by Reload while it replaces models and by a deployment while it
	// changes one (deployer.commit), so that a deployment never lands on a model a
	// reload has just retired.
	modelsMu   sync.Mutex
	pending    *change // what New built, for Run to start
	linkStop   func()  // stops the running MQTT link and its deployer; nil when none
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

// New builds an agent from a validated config: it prepares the state directory, opens
// the outbox, drives every actuator to its safe level, loads the models and opens the
// HTTP listener. Nothing runs until Run. On error, whatever was opened is closed.
func New(cfg *config.Config, opts Options) (a *Agent, err error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a = &Agent{fatal: make(chan error, 1), running: make(chan struct{}), version: opts.Version, logger: logger.With("component", "agent"), started: time.Now(),
		events: web.NewEvents(100)}
	a.cur.Store(&parts{cfg: cfg}) // until provision has built them; Close needs some
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

	a.logBase = logger
	a.outbox, err = outbox.Open(outbox.Options{
		Path: filepath.Join(state, "outbox"), Device: cfg.Device.ID, MaxBytes: int64(cfg.Outbox.MaxBytes),
		Fsync: outbox.Fsync(cfg.Outbox.Fsync), FsyncInterval: cfg.Outbox.FsyncInterval,
		Logger: logger, OnFault: a.events.Add,
	})
	if err != nil {
		return a, err
	}
	a.backends = newBackends(cfg.Runtimes)
	if a.store, err = deploy.OpenStore(filepath.Join(state, "models"), deploy.Limits{MaxBytes: int64(cfg.Deploy.MaxBytes)}); err != nil {
		return a, fmt.Errorf("open the model store: %w", err)
	}
	a.snapshots = stills.NewStore(filepath.Join(state, "snapshots"), int64(cfg.Snapshots.MaxBytes), false, logger)
	a.samples = stills.NewStore(filepath.Join(state, "samples"), int64(cfg.Samples.MaxBytes), true, logger)

	// The parts, built as a reload builds them. A model that cannot load is reported on
	// the status page and in /readyz; its cameras keep streaming without detection and
	// the actuators stay safe. Every output is driven to its safe level as it opens; one
	// whose line cannot be driven (a GPIO chip missing) stays in the fault state,
	// retried on every command, and the rest of the agent runs.
	p, ch, err := a.replace(cfg, nil)
	if err != nil {
		return a, err
	}
	a.pending = ch // Run starts them
	a.latchFile = filepath.Join(state, "latches.json")
	a.restoreLatches(p)
	a.uploader = a.newUploader()

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
	a.http = &http.Server{
		Handler:           web.New(device{a}, a.events, promhttp.HandlerFor(a.metrics.registry, promhttp.HandlerOpts{}), cfg.HTTP.InferConcurrency),
		ReadHeaderTimeout: 10 * time.Second,
	}
	return a, nil
}

// inputChanged records an input's accepted change as an event and, when it goes high,
// releases the rules latched until it.
func (a *Agent) inputChanged(name string, level hal.Level) {
	a.logger.Info("input changed", "input", name, "level", level)
	a.recordEvent(context.Background(), "input", map[string]string{"input": name, "state": level.String()})
	if level == hal.High {
		p := a.parts()
		for _, fire := range p.rules.InputRose(name) {
			a.release(context.Background(), p, fire)
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
		a.events.Add(env)
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
		held, err := drivers.DriveSafe(drivers.Line{Driver: ac.Driver, Chip: ac.Chip, Line: ac.Line, ActiveLow: ac.ActiveLow}, safe)
		if err != nil {
			report(ac.Name, ac.Driver, "FAILED: "+err.Error())
			errs = append(errs, fmt.Errorf("actuator %s: %w", ac.Name, err))
			continue
		}
		result := "safe (" + safe.String() + ")"
		if !held {
			result += "; a simulated line holds no state between processes"
		}
		report(ac.Name, ac.Driver, result)
	}
	return errors.Join(errs...)
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
	a.start(p, a.pending)
	a.pending = nil
	a.runMu.Unlock()
	close(a.running)
	a.goNormal(ctx, p)
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
	// Under systemd: ready now, then watchdog pings while no frame hangs in a pipeline.
	g.Go(a.guard("systemd", func() error { return sdnotify.Run(ctx, a.hungPipeline, a.logger) }))
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

// Close drives every actuator to its safe level, flushes and closes the outbox and
// frees the models. Run calls it; a second call does nothing.
func (a *Agent) Close() error {
	var errs []error
	a.closeOnce.Do(func() {
		p := a.parts()
		for _, name := range p.actOrder {
			if err := p.actuators[name].Close(); err != nil {
				errs = append(errs, err)
			}
		}
		for _, name := range p.inOrder {
			p.inputs[name].Close()
		}
		if a.listener != nil {
			a.listener.Close() // already closed after Run; needed when Run never ran
		}
		if a.outbox != nil {
			if err := a.outbox.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		for _, name := range p.modOrder {
			if d := p.models[name].detector(); d != nil {
				d.Close()
			}
			a.setShadow(p.models[name], nil)
		}
		if len(errs) == 0 {
			a.logger.Info("stopped; actuators safe, outbox closed")
		}
	})
	return errors.Join(errs...)
}

// Addr is the HTTP listener's address.
func (a *Agent) Addr() net.Addr { return a.listener.Addr() }
