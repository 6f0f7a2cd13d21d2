// Package deployer carries out, on the device, the model deployments an operator pushes
// over MQTT (vigil model push; sync/deploy has the protocol): received, verified,
// installed, warmed up, swapped in and watched, or rolled back, promoted and discarded.
// It is one of the agent's running parts: the agent builds it with the link it listens
// on and the models it changes, both behind small interfaces declared here, so it
// imports neither MQTT nor an inference runtime.
package deployer

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vigil-edge/vigil/sync/deploy"
)

// Link is what the deployer needs of the device's MQTT link (sync/mqttlink.Link): topics
// under the device's prefix to listen on, and its retained state to publish.
type Link interface {
	Subscribe(filter string, handle func(topic string, payload []byte))
	Unsubscribe(filter string)
	Retain(suffix string, payload []byte)
}

// Models is what the deployer needs of the agent's models.
type Models interface {
	// Lookup is the model of that name as the agent runs it now; nil when there is none.
	Lookup(name string) Model
	// Commit runs change, the part of a deployment that changes the model and the store,
	// unless a reload replaced m since Lookup returned it: then nothing changes and it
	// returns ErrReloaded. No reload replaces the model while change runs.
	Commit(m Model, change func() error) error
}

// Model is one configured model: load a bundle for it, swap it in, and back.
type Model interface {
	Name() string
	// ConfiguredBundle is the bundle directory the config names: a rollback's target when
	// the store has no previous bundle.
	ConfiguredBundle() string
	// Load loads the bundle in dir with the model's runtime settings; deployment names the
	// push that installed it ("" for none).
	Load(dir, deployment string) (Candidate, error)
	// Running is the bundle the model runs now; nil when none is loaded.
	Running() Candidate
	// Swap makes next the running bundle and returns the one it replaces (nil if none).
	// A frame in process finishes on the previous one.
	Swap(next Candidate) Candidate
	// SetShadow runs c beside the model as its shadow; nil goes back to the config's.
	SetShadow(c Candidate, deployment string)
}

// Candidate is a loaded bundle.
type Candidate interface {
	Version() string
	// WarmUp runs one inference on a frame of the size the model's cameras deliver.
	WarmUp(ctx context.Context) error
	// Check runs the bundle's own checks: its golden images, or its eval minimums.
	Check() error
	// Stats are its own inference times and failures since it loaded.
	Stats() Stats
	// Close frees a candidate that was never swapped in; Retire one that was, once the
	// last frame on it is done.
	Close()
	Retire()
}

// Stats are a bundle's inference figures, for judging it against the one it replaced.
type Stats struct {
	Median    time.Duration // of the recent inferences
	Runs      int           // inferences in Median
	Errors    int
	LastError string
}

// Settings are the deploy section of the config and the device's identity.
type Settings struct {
	MaxBytes     int64         // deploy.max_bytes
	WarmupRuns   int           // deploy.warmup_runs
	WarmupBudget time.Duration // deploy.warmup_budget
	Watch        time.Duration // deploy.watch
	MaxSlowdown  float64       // deploy.max_slowdown
	StallTimeout time.Duration // deploy.stall_timeout
	TopicPrefix  string        // mqtt.topic_prefix
	Device       string        // device.id
	Group        string        // device.group; "" for none
	Trusted      []string      // trust.keys
	Dir          string        // where transfers in progress are kept (state_dir/deploy)
}

// Options are the deployer's dependencies.
type Options struct {
	Link   Link
	Models Models
	Store  *deploy.Store
	Logger *slog.Logger
	// Record puts an event into the outbox (a deployment's change of phase).
	Record func(kind string, body any)
	// Recover is deferred on the goroutines the deployer's Run does not own (MQTT
	// handlers, downloads): the agent turns a panic there into its fail-safe stop.
	Recover func(part string)
}

// Deployer carries out the model deployments pushed over MQTT, one at a time, others
// queued behind it. A deployment is received (chunks kept on disk, so a broker outage or
// a restart only resumes it), verified (size, SHA-256, a signature by a trusted key)
// before anything is unpacked, installed beside the running bundle, checked against its
// model, loaded and warmed up while the running model keeps detecting, then swapped in
// atomically and watched: detection errors or a slowdown beyond deploy.max_slowdown in
// the watch window swap the previous model back.
type Deployer struct {
	cfg     Settings
	link    Link
	models  Models
	store   *deploy.Store
	lim     deploy.Limits
	logger  *slog.Logger
	record  func(kind string, body any)
	recover func(part string)
	work    chan *inflight  // deployments ready to verify, and rollbacks
	ctx     context.Context // Run's: every deployment's context derives from it

	mu      sync.Mutex // guards the fields below
	current *inflight  // the deployment under way; nil when idle
	queued  []*inflight
	last    *deploy.State // the state last reported, for the status page
}

// inflight is one deployment from its manifest to its final phase.
type inflight struct {
	m        *deploy.Manifest
	target   deploy.Target
	transfer *deploy.Transfer // chunked transfers only
	reported float64          // the progress last reported (the MQTT handler's)
	// ctx ends when the deployment does (finished, withdrawn, the agent stopping), so
	// work still under way for it (a download) stops and is not applied.
	ctx    context.Context
	cancel context.CancelFunc

	// Guarded by the deployer's mu:
	ready        bool      // handed to the work loop
	archive      string    // url transfers: the downloaded archive
	lastChunk    time.Time // when the transfer last made progress
	resubscribed bool      // the chunk subscription was renewed once after a stall
}

// maxQueued bounds the deployments waiting behind the current one.
const maxQueued = 8

// New makes a deployer; Run runs it.
func New(cfg Settings, opts Options) *Deployer {
	d := &Deployer{
		cfg: cfg, link: opts.Link, models: opts.Models, store: opts.Store, lim: deploy.Limits{MaxBytes: cfg.MaxBytes},
		logger: opts.Logger, record: opts.Record, recover: opts.Recover, work: make(chan *inflight, maxQueued+1),
	}
	if d.logger == nil {
		d.logger = slog.New(slog.DiscardHandler)
	}
	d.logger = d.logger.With("component", "deploy")
	if d.record == nil {
		d.record = func(string, any) {}
	}
	if d.recover == nil {
		d.recover = func(string) {}
	}
	return d
}

// finish ends a deployment in a final phase and starts the next queued one.
func (d *Deployer) finish(f *inflight, phase deploy.Phase, err error, version string) {
	reason := ""
	if err != nil {
		reason = err.Error()
	}
	if rerr := d.store.Record(f.m.Model, f.m, phase, reason); rerr != nil {
		d.logger.Error("deployment history not written", "deployment", f.m.Deployment, "err", rerr)
	}
	st := d.stateOf(f, phase, err)
	if version != "" {
		st.Version = version
	}
	if phase == deploy.PhaseActive {
		st.Progress = 1
	}
	d.report(st, true)
	f.cancel()
	d.mu.Lock()
	archive := f.archive
	d.mu.Unlock()
	if f.transfer != nil {
		f.transfer.Remove()
	} else if archive != "" {
		os.RemoveAll(filepath.Dir(archive))
	}
	d.mu.Lock()
	if d.current != f {
		d.mu.Unlock()
		return
	}
	d.current = nil
	var next *inflight
	for len(d.queued) > 0 && next == nil {
		next, d.queued = d.queued[0], d.queued[1:]
		if seen, _ := d.store.Seen(next.m.Model, next.m); seen {
			next.cancel()
			next = nil
		}
	}
	d.current = next
	if next != nil {
		next.lastChunk = time.Now()
	}
	d.mu.Unlock()
	if next != nil {
		go d.begin(next)
	}
}

func (d *Deployer) stateOf(f *inflight, phase deploy.Phase, err error) deploy.State {
	st := deploy.State{Deployment: f.m.Deployment, Model: f.m.Model, Phase: phase}
	if f.m.Bundle != nil {
		st.Version = f.m.Bundle.Version
	}
	if f.transfer != nil {
		st.Progress = f.transfer.Progress()
	}
	if err != nil {
		st.Error = err.Error()
	}
	return st
}

// report publishes a deployment's state (retained) and, for a change of phase, records
// it as an event.
func (d *Deployer) report(st deploy.State, event bool) {
	d.mu.Lock()
	d.last = &st
	d.mu.Unlock()
	if b, err := json.Marshal(st); err == nil {
		d.link.Retain("models/state", b)
	}
	if event {
		d.record("deployment", st)
	}
	level := slog.LevelInfo
	if st.Phase == deploy.PhaseRejected || st.Phase == deploy.PhaseRolledBack {
		level = slog.LevelWarn
	}
	d.logger.Log(context.Background(), level, "deployment "+string(st.Phase), "deployment", st.Deployment, "model", st.Model,
		"version", st.Version, "progress", st.Progress, "error", st.Error)
}

// LastState is the state last reported, for /api/status; nil before any.
func (d *Deployer) LastState() *deploy.State {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}
