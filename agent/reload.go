package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/agent/rules"
	"github.com/vigil-edge/vigil/sync/mqttlink"
)

// The parts that a reload starts and stops run in Run's group, each with a context of
// its own: a part's error or panic still stops the agent, and stopping one part leaves
// the others running.

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
	var wg sync.WaitGroup
	wg.Add(2)
	stopCap, capDone := a.spawn("camera "+cam.cfg.Name, cam.cap.Run)
	stopLoop, loopDone := a.spawn("pipeline "+cam.cfg.Name, func(ctx context.Context) error { return a.detectLoop(ctx, cam) })
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
		sh.start(a.spawn("shadow of "+m.name, sh.Run))
	}
}

// setShadow makes sh (nil: none) the model's shadow, running it when the agent runs,
// and stops and closes the one it replaces.
func (a *Agent) setShadow(m *model, sh *shadow) {
	if sh != nil && a.groupCtx != nil {
		sh.start(a.spawn("shadow of "+m.name, sh.Run))
	}
	if old := m.shadow.Swap(sh); old != nil {
		old.shutdown()
	}
}

func (a *Agent) startInput(in *input) {
	in.stop, in.done = a.spawn("input "+in.cfg.Name, in.Run)
}

// startLink runs an MQTT link and the deployer on it; they stop together.
func (a *Agent) startLink(link *mqttlink.Link, d *deployer) {
	stopLink, linkDone := a.spawn("mqtt link", link.Run)
	stopDeploy, deployDone := a.spawn("deployments", d.Run)
	d.stop = func() {
		stopDeploy()
		<-deployDone
		stopLink()
		<-linkDone
	}
}

// ReloadResult says what a reload did.
type ReloadResult struct {
	At string `json:"at"`
	OK bool   `json:"ok"`
	// Errors are why the new config was refused (the old one keeps running).
	Errors []string `json:"errors,omitempty"`
	// Changed lists what was started again, added or removed ("camera door", ...).
	Changed []string `json:"changed,omitempty"`
	// AtRestart lists settings that changed but apply only when the agent restarts.
	AtRestart []string `json:"at_restart,omitempty"`
}

// errNotRunning is Reload's error before Run has started the agent.
var errNotRunning = errors.New("reload: the agent is not running")

// Reload applies a new, validated config while the agent runs, changing only what the
// config changes: a camera, model, actuator or input whose settings are the same keeps
// running (a camera keeps streaming, an output keeps its level), the rules keep their
// state (holds and latches) where a rule is unchanged, and the outbox and the events in
// flight are untouched. Settings that need a restart (device, http.listen, outbox,
// runtimes, snapshots, log) are listed and keep their old values until then.
func (a *Agent) Reload(next *config.Config) (ReloadResult, error) {
	a.runMu.Lock()
	defer a.runMu.Unlock()
	res := ReloadResult{At: time.Now().UTC().Format(time.RFC3339Nano)}
	if a.group == nil || a.groupCtx.Err() != nil {
		return res, errNotRunning
	}
	old := a.parts()
	oc := old.cfg
	for key, pair := range map[string][2]any{
		"device": {oc.Device, next.Device}, "http.listen": {oc.HTTP.Listen, next.HTTP.Listen}, "outbox": {oc.Outbox, next.Outbox},
		"runtimes": {oc.Runtimes, next.Runtimes}, "snapshots": {oc.Snapshots, next.Snapshots}, "log": {oc.Log, next.Log},
	} {
		if !reflect.DeepEqual(pair[0], pair[1]) {
			res.AtRestart = append(res.AtRestart, key)
		}
	}
	slices.Sort(res.AtRestart)
	// What needs a restart keeps running as it is.
	merged := *next
	merged.Device, merged.HTTP.Listen, merged.Outbox, merged.Runtimes, merged.Snapshots, merged.Log =
		oc.Device, oc.HTTP.Listen, oc.Outbox, oc.Runtimes, oc.Snapshots, oc.Log
	np := &parts{cfg: &merged, actuators: map[string]*actuator{}, inputs: map[string]*input{}, models: map[string]*model{}, ruleStats: map[string]*ruleStats{}}
	var stopAfter []func() // parts replaced or removed, stopped once the new ones run

	// MQTT first, since only it can still fail (a TLS file): a changed link (or what its
	// deployer uses) is started again; the outbox keeps every message, and a transfer
	// under way resumes from disk.
	np.link, np.deployer = old.link, old.deployer
	var stopLink func()
	if !reflect.DeepEqual(oc.MQTT, merged.MQTT) || !reflect.DeepEqual(oc.Trust, merged.Trust) ||
		!reflect.DeepEqual(oc.Deploy, merged.Deploy) || oc.Device.Group != merged.Device.Group {
		np.link, np.deployer = nil, nil
		if merged.MQTT.Enabled {
			link, err := a.newLink(&merged, a.logBase)
			if err != nil {
				return a.refuse(res, err)
			}
			np.link = link
			np.deployer = newDeployer(a, &merged, link, a.store, a.backends, a.logBase)
		}
		if old.deployer != nil {
			stopLink = old.deployer.stop
		}
		res.Changed = append(res.Changed, "mqtt")
	}

	if stopLink != nil {
		stopAfter = append(stopAfter, stopLink)
	}

	// Actuators: an unchanged one keeps its line and level; a changed one is released
	// (driven safe) before its replacement opens the line, which it may share.
	for _, ac := range merged.Actuators {
		if cur, ok := old.actuators[ac.Name]; ok && reflect.DeepEqual(cur.cfg, ac) {
			np.actuators[ac.Name] = cur
		} else {
			if ok {
				cur.Close()
				res.Changed = append(res.Changed, "actuator "+ac.Name)
			} else {
				res.Changed = append(res.Changed, "actuator "+ac.Name+" added")
			}
			act, fault := a.newActuator(ac)
			if fault != nil {
				a.recordEvent(context.Background(), "fault", fault)
			}
			np.actuators[ac.Name] = act
		}
		np.actOrder = append(np.actOrder, ac.Name)
	}
	for _, name := range old.actOrder {
		if _, kept := np.actuators[name]; !kept {
			act := old.actuators[name]
			stopAfter = append(stopAfter, func() { act.Close() })
			res.Changed = append(res.Changed, "actuator "+name+" removed")
		}
	}

	// Inputs, the same way.
	for _, ic := range merged.Inputs {
		if cur, ok := old.inputs[ic.Name]; ok && reflect.DeepEqual(cur.cfg, ic) {
			np.inputs[ic.Name] = cur
		} else {
			if ok {
				cur.stop()
				<-cur.done
				cur.Close()
				res.Changed = append(res.Changed, "input "+ic.Name)
			} else {
				res.Changed = append(res.Changed, "input "+ic.Name+" added")
			}
			in := a.newInput(ic)
			np.inputs[ic.Name] = in
			a.startInput(in)
		}
		np.inOrder = append(np.inOrder, ic.Name)
	}
	for _, name := range old.inOrder {
		if _, kept := np.inputs[name]; !kept {
			in := old.inputs[name]
			stopAfter = append(stopAfter, func() { in.stop(); <-in.done; in.Close() })
			res.Changed = append(res.Changed, "input "+name+" removed")
		}
	}

	// Models: an unchanged one keeps running (and what a deployment put in it). A
	// deployment finishing meanwhile waits (deployer.commit) and then sees the new ones.
	a.modelsMu.Lock()
	modelsLocked := true
	defer func() {
		if modelsLocked {
			a.modelsMu.Unlock()
		}
	}()
	for _, mc := range merged.Models {
		if cur, ok := old.models[mc.Name]; ok && reflect.DeepEqual(cur.cfg, mc) {
			np.models[mc.Name] = cur
		} else {
			np.models[mc.Name] = a.newModel(mc)
			a.startShadow(np.models[mc.Name])
			if ok {
				res.Changed = append(res.Changed, "model "+mc.Name)
			} else {
				res.Changed = append(res.Changed, "model "+mc.Name+" added")
			}
		}
		np.modOrder = append(np.modOrder, mc.Name)
	}

	// Cameras: an unchanged camera on an unchanged model keeps streaming.
	for _, cc := range merged.Cameras {
		var cur *camera
		for _, c := range old.cameras {
			if c.cfg.Name == cc.Name {
				cur = c
			}
		}
		if cur != nil && reflect.DeepEqual(cur.cfg, cc) && cur.model == np.models[cc.Model] {
			np.cameras = append(np.cameras, cur)
			continue
		}
		cam, err := a.newCamera(cc, np.models[cc.Model])
		if err != nil {
			res.Errors = append(res.Errors, err.Error()) // validated already: not expected
			continue
		}
		np.cameras = append(np.cameras, cam)
		if cur != nil {
			stopAfter = append(stopAfter, func() { cur.stop(); <-cur.done })
			res.Changed = append(res.Changed, "camera "+cc.Name)
		} else {
			res.Changed = append(res.Changed, "camera "+cc.Name+" added")
		}
	}
	for _, c := range old.cameras {
		if !slices.ContainsFunc(np.cameras, func(n *camera) bool { return n.cfg.Name == c.cfg.Name }) {
			stopAfter = append(stopAfter, func() { c.stop(); <-c.done })
			res.Changed = append(res.Changed, "camera "+c.cfg.Name+" removed")
		}
	}

	// Rules: a new engine that keeps the state of every unchanged rule.
	np.rules = rules.New(merged.Rules, rules.Options{InputHigh: a.inputHigh})
	np.rules.Carry(old.rules)
	for _, r := range merged.Rules {
		if st, ok := old.ruleStats[r.Name]; ok && reflect.DeepEqual(oc.RuleNamed(r.Name), &r) {
			np.ruleStats[r.Name] = st
		} else {
			np.ruleStats[r.Name] = &ruleStats{}
			res.Changed = append(res.Changed, "rule "+r.Name)
		}
	}

	// Swap: from here the pipelines, the API and the status page see the new parts.
	a.cur.Store(np)
	a.modelsMu.Unlock()
	modelsLocked = false
	for _, cam := range np.cameras {
		if cam.stop == nil {
			a.startCamera(cam)
		}
	}
	if np.link != nil && np.link != old.link {
		a.startLink(np.link, np.deployer)
	}
	for _, stop := range stopAfter {
		stop()
	}
	for _, name := range old.modOrder {
		if m := old.models[name]; np.models[name] != m {
			retire(m.running.Load()) // its cameras have stopped
			a.setShadow(m, nil)
		}
	}
	// New outputs go to their normal level, and the rules' holds apply.
	for _, name := range np.actOrder {
		if np.actuators[name] != old.actuators[name] {
			a.settle(name, "reload")
		}
	}
	a.saveLatches()
	res.OK = true
	return res, nil
}

func (a *Agent) refuse(res ReloadResult, err error) (ReloadResult, error) {
	res.Errors = append(res.Errors, err.Error())
	return res, fmt.Errorf("reload: %w", err)
}

// ReloadFromFile loads the config file the agent was started from again and applies it.
// A config with errors is refused, the old one keeps running, and the errors are
// reported (log, status page, event). SIGHUP, POST /api/reload and the file watch all
// come here.
func (a *Agent) ReloadFromFile(trigger string) (ReloadResult, error) {
	<-a.running // a reload asked for while the agent starts waits for it
	res := ReloadResult{At: time.Now().UTC().Format(time.RFC3339Nano)}
	src := a.parts().cfg.Source
	var err error
	if src == "" {
		err = errors.New("no config file to reload: the agent runs on its embedded defaults")
	} else {
		var next *config.Config
		if next, err = config.Load(src); err == nil {
			res, err = a.Reload(next)
		} else {
			var errs config.Errors
			if errors.As(err, &errs) {
				for _, e := range errs {
					res.Errors = append(res.Errors, e.Error())
				}
			}
		}
	}
	if err != nil && len(res.Errors) == 0 {
		res.Errors = []string{err.Error()}
	}
	a.lastReload.Store(&res)
	body := map[string]any{"trigger": trigger, "file": src, "ok": res.OK, "changed": res.Changed, "errors": res.Errors, "at_restart": res.AtRestart}
	a.recordEvent(context.Background(), "reload", body)
	if err != nil {
		a.logger.Error("reload refused; the running config stays", "trigger", trigger, "errors", res.Errors)
	} else {
		a.logger.Info("config reloaded", "trigger", trigger, "changed", res.Changed, "at_restart", res.AtRestart)
	}
	return res, err
}

// watchConfig reloads when the config file changes. It watches the file's directory,
// so an editor that writes a new file and renames it over the old one is seen, and
// waits for a quiet moment, so one save is one reload.
func (a *Agent) watchConfig(ctx context.Context) error {
	src := a.parts().cfg.Source
	if src == "" {
		<-ctx.Done()
		return nil
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		a.logger.Warn("config file not watched; reload with SIGHUP or POST /api/reload", "err", err)
		<-ctx.Done()
		return nil
	}
	defer w.Close()
	if err := w.Add(filepath.Dir(src)); err != nil {
		a.logger.Warn("config file not watched; reload with SIGHUP or POST /api/reload", "err", err)
		<-ctx.Done()
		return nil
	}
	const quiet = 500 * time.Millisecond
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if filepath.Clean(ev.Name) == filepath.Clean(src) && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0 {
				timer.Reset(quiet)
			}
		case err, ok := <-w.Errors:
			if ok {
				a.logger.Warn("config file watch", "err", err)
			}
		case <-timer.C:
			a.ReloadFromFile("file change")
		}
	}
}
