package agent

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/agent/rules"
	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/hal/sim"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/shadow"
	"github.com/vigil-edge/vigil/sync/deploy/deployer"
	"github.com/vigil-edge/vigil/sync/mqttlink"
)

// The running parts and their one builder.
//
// Start and reload go the same way, in the shape Caddy reloads a config:
//
//  1. provision makes the parts a config describes, reusing every part of the old ones
//     whose settings did not change (by reference: an untouched camera keeps
//     streaming, an untouched output keeps its level, an untouched model keeps what a
//     deployment put in it). It opens no line and starts no goroutine, and when it
//     fails the old parts are untouched.
//  2. swap makes them the agent's parts in one step (one atomic pointer), after the
//     outputs and inputs being replaced have let go of their lines, which the new ones
//     may share.
//  3. start runs what is new; stop ends what the old parts had and the new ones do not
//     share.
//
// Readers take one snapshot with a.parts() per task (a frame, a request, a stall check)
// and pass it down, so a task never mixes the parts of two configs.

// parts is what a config makes of the agent: its cameras, models, actuators, inputs,
// rules and MQTT link.
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
	deployer  *deployer.Deployer    // nil when mqtt.enabled is false
}

// parts returns the agent's current parts. Keep the result for one task: a reload may
// replace them meanwhile.
func (a *Agent) parts() *parts { return a.cur.Load() }

// camera returns the camera named, or nil.
func (p *parts) camera(name string) *camera {
	for _, cam := range p.cameras {
		if cam.cfg().Name == name {
			return cam
		}
	}
	return nil
}

// inputHigh reports an input's debounced level, for rule interlocks.
func (p *parts) inputHigh(name string) bool {
	in, ok := p.inputs[name]
	return ok && in.Level() == hal.High
}

// modelsLoaded reports whether every model loaded: with one missing, its rules are
// blind, so outputs stay at their safe level instead of their normal one.
func (p *parts) modelsLoaded() bool {
	for _, m := range p.models {
		if m.detector() == nil {
			return false
		}
	}
	return true
}

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
	stop context.CancelFunc // set once it runs (start)
	done chan struct{}
}

// model is one configured model. What runs can change while the pipelines use it (a
// pushed model is swapped in), so the pipelines load it atomically for each frame.
type model struct {
	// shadow is the candidate run beside it: pushed by a shadow deployment, else
	// models[].shadow; nil without either. setShadow changes it.
	shadow     atomic.Pointer[shadow.Shadow]
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
	frameSize  func() (w, h int) // its cameras' frames, to warm it up on; nil: 640x480

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

// change is what provision found between two configs: what swap opens and start runs,
// what stop ends, and, for the reload's report, what changed.
type change struct {
	changed []string // "camera door", "actuator relay added", ...

	// Opened by swap, after the old ones let go of their lines.
	openActuators []config.Actuator
	openInputs    []config.Input
	// Reused cameras whose pacing or model changes in place at the swap.
	retune []retune

	// Started once swapped in.
	cameras []*camera
	inputs  []*input // filled by swap
	models  []*model // their shadows start
	relink  bool     // the link and deployer change: the new ones start, the old ones stop

	// The old parts the new ones do not share: released by swap (outputs, inputs) or
	// stopped after it.
	oldActuators []*actuator
	oldInputs    []*input
	oldCameras   []*camera
	oldModels    []*model
	oldLinkStop  func() // set by start when relink: the replaced link's stop
}

// retune is a camera's new settings that need no restart.
type retune struct {
	cam   *camera
	cfg   config.Camera
	model *model
}

// replace builds the parts cfg describes, reusing what it can of old (nil at start),
// and swaps them in: New and Reload both come here. modelsMu is held from before the
// new models load until the swap, so a deployment committing meanwhile either lands
// before (and the new models load what it activated) or finds its model replaced
// (errReloaded); it never lands on a model the swap then throws away.
func (a *Agent) replace(cfg *config.Config, old *parts) (*parts, *change, error) {
	a.modelsMu.Lock()
	defer a.modelsMu.Unlock()
	np, ch, err := a.provision(cfg, old)
	if err != nil {
		return nil, nil, err
	}
	a.swap(old, np, ch)
	return np, ch, nil
}

// swap makes np the agent's parts. The outputs and inputs it replaces or drops let go
// of their lines first (driven safe), since the new ones may open the same lines; the
// new ones are opened (outputs driven safe) and the reused cameras retuned. The caller
// holds modelsMu (replace).
func (a *Agent) swap(old, np *parts, ch *change) {
	for _, in := range ch.oldInputs {
		if in.stop != nil {
			in.stop()
			<-in.done
		}
		in.Close()
	}
	for _, act := range ch.oldActuators {
		act.Close()
	}
	for _, ac := range ch.openActuators {
		act, fault := a.newActuator(ac)
		if fault != nil {
			a.recordEvent(context.Background(), "fault", fault)
		}
		np.actuators[ac.Name] = act
	}
	for _, ic := range ch.openInputs {
		in := a.newInput(ic)
		np.inputs[ic.Name] = in
		ch.inputs = append(ch.inputs, in)
	}
	if old != nil && old.rules != nil {
		np.rules.Carry(old.rules) // as late as can be: a firing on the old rules counts
	}
	for _, rt := range ch.retune {
		rt.cam.conf.Store(&rt.cfg)
		if prev := rt.cam.mod.Swap(rt.model); prev != rt.model && rt.cam.drift != nil {
			rt.cam.drift.Reset() // another model: a new baseline
		}
	}
	a.cur.Store(np)
}

// start runs the parts a change brings: cameras, inputs, shadows, and the link with its
// deployer. Shadows start before the deployer, which may replace one.
func (a *Agent) start(np *parts, ch *change) {
	for _, cam := range ch.cameras {
		a.startCamera(cam)
	}
	for _, in := range ch.inputs {
		a.startInput(in)
	}
	for _, m := range ch.models {
		a.startShadow(m)
	}
	if ch.relink {
		ch.oldLinkStop, a.linkStop = a.linkStop, nil
		if np.link != nil {
			a.linkStop = a.startLink(np.link, np.deployer)
		}
	}
}

// stop ends what the old parts had and the new ones do not share: the link (its
// deployer first), then the cameras, then the models, whose cameras have stopped.
func (a *Agent) stop(ch *change) {
	if ch.oldLinkStop != nil {
		ch.oldLinkStop()
	}
	for _, c := range ch.oldCameras {
		if c.stop != nil {
			c.stop()
			<-c.done
		}
	}
	for _, m := range ch.oldModels {
		retire(m.running.Load()) // a retuned camera may finish a frame on it first
		a.setShadow(m, nil)
	}
}

// The parts that start and reload run go into Run's group, each with a context of its
// own: a part's error or panic still stops the agent, and stopping one part leaves the
// others running.

// spawn runs fn in Run's group under its own context; the returned stop ends it, and
// done is closed when fn has returned.
func (a *Agent) spawn(part string, fn func(ctx context.Context) error) (stop context.CancelFunc, done chan struct{}) {
	ctx, stop := context.WithCancel(a.groupCtx)
	done = make(chan struct{})
	a.group.Go(a.guard(part, func() error {
		defer close(done)
		return fn(ctx)
	}))
	return stop, done
}

func (a *Agent) startCamera(cam *camera) {
	name := cam.cfg().Name
	stopCap, capDone := a.spawn("camera "+name, cam.cap.Run)
	stopLoop, loopDone := a.spawn("pipeline "+name, func(ctx context.Context) error { return a.detectLoop(ctx, cam) })
	cam.stop = func() { stopCap(); stopLoop() }
	cam.done = make(chan struct{})
	go func() {
		<-capDone
		<-loopDone
		if cam.drift != nil {
			cam.drift.Close() // no frame reaches it any more
		}
		close(cam.done)
	}()
}

// startShadow runs a model's shadow, if it has one.
func (a *Agent) startShadow(m *model) {
	if sh := m.shadow.Load(); sh != nil {
		sh.Started(a.spawn("shadow of "+m.name, sh.Run))
	}
}

// setShadow makes sh (nil: none) the model's shadow, running it when the agent runs,
// and stops and closes the one it replaces.
func (a *Agent) setShadow(m *model, sh *shadow.Shadow) {
	if sh != nil && a.groupCtx != nil {
		sh.Started(a.spawn("shadow of "+m.name, sh.Run))
	}
	if old := m.shadow.Swap(sh); old != nil {
		old.Shutdown()
	}
}

func (a *Agent) startInput(in *input) {
	in.stop, in.done = a.spawn("input "+in.cfg.Name, in.Run)
}

// startLink runs an MQTT link and the deployer on it; the returned stop ends both, the
// deployer first.
func (a *Agent) startLink(link *mqttlink.Link, d *deployer.Deployer) (stop func()) {
	stopLink, linkDone := a.spawn("mqtt link", link.Run)
	stopDeploy, deployDone := a.spawn("deployments", d.Run)
	return func() {
		stopDeploy()
		<-deployDone
		stopLink()
		<-linkDone
	}
}
