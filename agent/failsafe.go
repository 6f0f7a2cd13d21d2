package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/hal"
)

// What the outputs do when the agent loses sight: stalled cameras, failed detection,
// models that did not load, panics, shutdown. Each function works on the one snapshot
// of the parts its caller took, so a reload in the middle cannot make it look up a
// rule's actuator in parts that no longer have it.

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
		p := a.parts()
		for c := range healthy {
			if !slices.Contains(p.cameras, c) {
				delete(healthy, c)
			}
		}
		for _, cam := range p.cameras {
			st := cam.cap.Status()
			ok := st.State == capture.StateStreaming || st.State == capture.StateConnecting
			if healthy[cam] && !ok {
				reason := fmt.Sprintf("camera %s %s", cam.cfg().Name, st.State)
				if st.LastError != "" {
					reason += ": " + st.LastError
				}
				a.failSafe(p, cam, reason)
			}
			if !healthy[cam] && st.State == capture.StateStreaming {
				a.restore(p, cam, "camera "+cam.cfg().Name+" streaming again")
			}
			healthy[cam] = ok
		}
	}
}

// failSafe drives the actuators of the camera's `on_stall: safe` rules safe. restore
// undoes it once the camera (or its model) works again.
func (a *Agent) failSafe(p *parts, cam *camera, reason string) {
	cam.safed.Store(true)
	name := cam.cfg().Name
	for _, r := range p.cfg.Rules {
		if r.Camera != name || r.OnStall != "safe" || r.Action.Actuator == "" {
			continue
		}
		act := p.actuators[r.Action.Actuator]
		act.cmd.Lock()
		err := act.Safe(reason)
		act.cmd.Unlock()
		if err != nil {
			a.logger.Error("fail-safe: actuator not safe", "actuator", r.Action.Actuator, "rule", r.Name, "err", err)
			continue
		}
		a.logger.Warn("fail-safe: actuator driven safe", "actuator", r.Action.Actuator, "rule", r.Name, "reason", reason)
		body := map[string]string{"actuator": r.Action.Actuator, "rule": r.Name, "camera": name, "command": "safe", "reason": reason}
		a.recordEvent(context.Background(), "failsafe", body)
	}
}

// restore returns the actuators that failSafe drove safe for cam to what the rules want
// now: the state of a rule still holding one, else its normal level.
func (a *Agent) restore(p *parts, cam *camera, reason string) {
	if cam.stats.status().LastError != "" || !p.modelsLoaded() {
		return // its detection still fails: what it guards stays safe
	}
	if !cam.safed.Swap(false) {
		return
	}
	camName := cam.cfg().Name
	done := map[string]bool{}
	for _, r := range p.cfg.Rules {
		name := r.Action.Actuator
		if r.Camera != camName || r.OnStall != "safe" || name == "" || done[name] {
			continue
		}
		done[name] = true
		level, _ := a.settle(p, name, reason)
		a.logger.Info("fail-safe over: actuator restored", "actuator", name, "level", level, "reason", reason)
		body := map[string]string{"actuator": name, "camera": camName, "command": level.String(), "reason": reason}
		a.recordEvent(context.Background(), "failsafe", body)
	}
}

// settle drives an actuator to what the rules want now: the state of the first rule
// still holding it (held or latched), else its normal level.
//
// An output whose rules are blind (a camera guarding it is failed safe, or a model did
// not load) stays at its safe level instead of going back to normal.
func (a *Agent) settle(p *parts, name, reason string) (hal.Level, error) {
	act := p.actuators[name]
	act.cmd.Lock()
	defer act.cmd.Unlock()
	level := act.normal
	if holders := p.rules.Holding(name); len(holders) > 0 {
		level, _ = hal.ParseLevel(holders[0].Action.State)
		reason += "; held by rule " + holders[0].Name
	} else if blind := p.blind(name); blind != "" {
		level, _ = hal.ParseLevel(act.cfg.Safe)
		reason += "; kept safe: " + blind
	}
	err := act.Set(level, reason)
	a.saveLatches(p)
	return level, err
}

// blind says why the rules that guard an actuator cannot see ("" when they can): a
// model that did not load, or a camera of an `on_stall: safe` rule failed safe.
func (p *parts) blind(actuator string) string {
	if !p.modelsLoaded() {
		return "a model did not load"
	}
	for _, cam := range p.cameras {
		if !cam.safed.Load() {
			continue
		}
		name := cam.cfg().Name
		for _, r := range p.cfg.Rules {
			if r.Camera == name && r.OnStall == "safe" && r.Action.Actuator == actuator {
				return "camera " + name + " is failed safe"
			}
		}
	}
	return ""
}

// saveLatches keeps the latched rules on disk: after a restart (a crash, a power cut) a
// weld robot paused until an operator acknowledges must stay paused.
func (a *Agent) saveLatches(p *parts) {
	a.latchMu.Lock()
	defer a.latchMu.Unlock()
	names := p.rules.Latched()
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
func (a *Agent) restoreLatches(p *parts) {
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
	for _, r := range p.rules.RestoreLatched(names) {
		a.logger.Warn("rule still latched from before the restart", "rule", r.Name, "actuator", r.Action.Actuator, "until", r.Action.Until)
		a.recordEvent(context.Background(), "latch", map[string]string{"rule": r.Name, "actuator": r.Action.Actuator,
			"until": r.Action.Until, "reason": "latched before the restart"})
	}
}

// goNormal drives every actuator from its safe start level to its normal level, once
// the pipeline runs.
func (a *Agent) goNormal(ctx context.Context, p *parts) {
	if ctx.Err() != nil {
		return // a part already failed and drove everything safe
	}
	if !p.modelsLoaded() {
		a.logger.Warn("a model did not load: actuators stay at their safe level")
		return
	}
	for _, name := range p.actOrder {
		if _, err := a.settle(p, name, "pipeline running"); err != nil {
			a.logger.Error("actuator: cannot drive its initial level", "actuator", name, "err", err)
		}
	}
}

// safeAll drives every actuator to its safe level, logging what fails.
func (a *Agent) safeAll(reason string) {
	p := a.parts()
	for _, name := range p.actOrder {
		if err := p.actuators[name].Safe(reason); err != nil {
			a.logger.Error("actuator not safe", "actuator", name, "reason", reason, "err", err)
		}
	}
}
