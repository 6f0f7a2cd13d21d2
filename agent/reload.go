package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/vigil-edge/vigil/agent/config"
)

// errNotRunning is Reload's error before Run has started the agent.
var errNotRunning = errors.New("reload: the agent is not running")

// Reload applies a new, validated config while the agent runs, changing only what the
// config changes: a camera, model, actuator or input whose settings are the same keeps
// running (a camera keeps streaming, an output keeps its level; a camera whose only
// change is its pacing, model or frame storage is retuned in place), the rules keep their
// state (holds and latches) where a rule is unchanged, and the outbox and the events in
// flight are untouched. Settings that need a restart (device, http.listen, outbox,
// runtimes, snapshots, log) are listed and keep their old values until then. It builds
// the parts as New does (replace, in parts.go).
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
	np, ch, err := a.replace(&merged, old)
	if err != nil {
		return a.refuse(res, err)
	}
	res.Changed = ch.changed
	a.start(np, ch)
	a.stop(ch)
	// New outputs go to their normal level, and the rules' holds apply.
	for _, ac := range ch.openActuators {
		a.settle(np, ac.Name, "reload")
	}
	a.saveLatches(np)
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
