package deployer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vigil-edge/vigil/infer/modelfile"
	"github.com/vigil-edge/vigil/sync/deploy"
)

// Applying a received deployment to its model: verify, install, warm up, swap, watch;
// and the actions that carry no bundle (rollback, promote, discard).

// process verifies, installs, warms up and swaps in a received deployment, or carries
// out a rollback. It runs on the deployer's goroutine, so only one model changes at a
// time, and returns after the watch window.
func (d *Deployer) process(ctx context.Context, f *inflight) {
	d.mu.Lock()
	stale := d.current != f || f.ctx.Err() != nil
	d.mu.Unlock()
	if stale {
		return // ended while it waited (withdrawn, stalled)
	}
	m := f.m
	mod := d.models.Lookup(m.Model)
	if mod == nil {
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("this device has no model named %q any more (config models[].name)", m.Model), "")
		return
	}
	switch m.Action {
	case deploy.ActionRollback:
		// A rollback ends in rolled_back when it worked, rejected when it could not.
		st, err := d.store.State(m.Model)
		if err == nil && st.Active == "" && st.Previous == "" {
			err = fmt.Errorf("model %s has no previous bundle to roll back to", m.Model)
		}
		if err != nil {
			d.finish(f, deploy.PhaseRejected, fmt.Errorf("rollback: %w", err), "")
			return
		}
		dir := mod.ConfiguredBundle()
		if st.Previous != "" {
			dir = filepath.Join(d.store.Root(), m.Model, st.Previous)
		}
		next, err := d.warm(ctx, f, mod, dir, "")
		if err != nil {
			d.finish(f, deploy.PhaseRejected, fmt.Errorf("rollback: %w", err), "")
			return
		}
		err = d.models.Commit(mod, func() error {
			if _, err := d.store.Rollback(m.Model); err != nil {
				return err
			}
			if prev := d.swap(mod, next); prev != nil {
				prev.Retire() // rollbacks are not watched: nothing to return to
			}
			return nil
		})
		if err != nil {
			next.Close()
			d.finish(f, deploy.PhaseRejected, fmt.Errorf("rollback: %w", err), "")
			return
		}
		d.finish(f, deploy.PhaseRolledBack, nil, next.Version())
		return
	case deploy.ActionPromote:
		d.promote(ctx, f, mod)
		return
	case deploy.ActionDiscard:
		err := d.models.Commit(mod, func() error {
			if _, _, ok := d.store.Shadow(m.Model); !ok {
				return fmt.Errorf("model %s has no pushed shadow candidate to discard", m.Model)
			}
			if err := d.store.ClearShadow(m.Model); err != nil {
				return err
			}
			mod.SetShadow(nil, "")
			return nil
		})
		if err != nil {
			d.finish(f, deploy.PhaseRejected, err, "")
			return
		}
		d.finish(f, deploy.PhaseDiscarded, nil, "")
		return
	}

	d.report(d.stateOf(f, deploy.PhaseVerifying, nil), true)
	archive, err := d.assemble(f)
	if err != nil {
		d.finish(f, deploy.PhaseRejected, err, "")
		return
	}
	d.report(d.stateOf(f, deploy.PhaseStaging, nil), true)
	dir, err := d.install(m, archive)
	if err != nil {
		d.finish(f, deploy.PhaseRejected, err, "")
		return
	}
	next, err := d.warm(ctx, f, mod, dir, m.Deployment)
	if err != nil {
		d.store.Discard(m.Model, dir)
		phase := deploy.PhaseRolledBack
		if m.Action == deploy.ActionShadow {
			phase = deploy.PhaseRejected // nothing was rolled: the model ran on untouched
		}
		d.finish(f, phase, err, "")
		return
	}
	var prev Candidate
	err = d.models.Commit(mod, func() error {
		if m.Action == deploy.ActionShadow {
			// Beside the model, not instead of it.
			if err := d.store.SetShadow(m.Model, dir, m.Deployment); err != nil {
				return err
			}
			mod.SetShadow(next, m.Deployment)
			return nil
		}
		if err := d.store.Activate(m.Model, dir); err != nil {
			return fmt.Errorf("activate: %w", err)
		}
		prev = d.swap(mod, next)
		return nil
	})
	if err != nil {
		next.Close()
		d.store.Discard(m.Model, dir)
		d.finish(f, deploy.PhaseRejected, err, "")
		return
	}
	if m.Action == deploy.ActionShadow {
		d.finish(f, deploy.PhaseShadowing, nil, m.Bundle.Version)
		return
	}
	d.finish(f, deploy.PhaseActive, nil, m.Bundle.Version)
	d.watch(ctx, f, mod, prev, next)
}

// ErrReloaded is why a deployment that finished its warm-up after a reload replaced its
// model changes nothing: what it loaded follows the old model's settings.
var ErrReloaded = errors.New("the model's config was reloaded during the deployment; nothing changed, push again")

// promote swaps in the model's pushed shadow candidate, as a deployment of it would be:
// loaded afresh and warmed up (the shadow runs on, untouched, if that fails), made
// active, and watched.
func (d *Deployer) promote(ctx context.Context, f *inflight, mod Model) {
	name := f.m.Model
	dir, shadowed, ok := d.store.Shadow(name)
	if !ok {
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("model %s has no pushed shadow candidate to promote (push one with --shadow first)", name), "")
		return
	}
	next, err := d.warm(ctx, f, mod, dir, shadowed)
	if err != nil {
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("promote: %w", err), "")
		return
	}
	var prev Candidate
	err = d.models.Commit(mod, func() error {
		if err := d.store.Activate(name, dir); err != nil {
			return fmt.Errorf("activate: %w", err)
		}
		if err := d.store.ClearShadow(name); err != nil {
			d.logger.Error("promoted, but the store still names the shadow", "model", name, "err", err)
		}
		mod.SetShadow(nil, "")
		prev = d.swap(mod, next)
		return nil
	})
	if err != nil {
		next.Close()
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("promote: %w", err), "")
		return
	}
	d.finish(f, deploy.PhaseActive, nil, next.Version())
	d.watch(ctx, f, mod, prev, next)
}

// assemble returns the path of the received archive, its size and SHA-256 checked.
func (d *Deployer) assemble(f *inflight) (string, error) {
	d.mu.Lock()
	archive := f.archive
	d.mu.Unlock()
	if archive != "" {
		return archive, nil
	}
	path := filepath.Join(f.transfer.Dir(), "archive.tar")
	out, err := os.Create(path)
	if err != nil {
		return "", fmt.Errorf("assemble the archive: %w", err)
	}
	_, _, err = f.transfer.Assemble(out)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return path, err
}

// install unpacks a verified archive and checks the bundle against its model, as
// `vigil model inspect` does, before anything loads it.
func (d *Deployer) install(m *deploy.Manifest, archive string) (string, error) {
	r, err := os.Open(archive)
	if err != nil {
		return "", err
	}
	defer r.Close()
	dir, err := d.store.Install(m.Model, m, r)
	if err != nil {
		return "", fmt.Errorf("install: %w", err)
	}
	man, _, err := modelfile.CheckBundle(dir)
	if err == nil && (man.Name != m.Bundle.Name || man.Version != m.Bundle.Version) {
		err = fmt.Errorf("model.yaml is %s %s, the manifest says %s %s", man.Name, man.Version, m.Bundle.Name, m.Bundle.Version)
	}
	if err != nil {
		d.store.Discard(m.Model, dir)
		return "", fmt.Errorf("bundle: %w", err)
	}
	return dir, nil
}

// warm loads a bundle with the model's runtime settings, runs it deploy.warmup_runs
// times, each within deploy.warmup_budget, and runs the bundle's own checks.
func (d *Deployer) warm(ctx context.Context, f *inflight, mod Model, dir, deployment string) (Candidate, error) {
	d.report(d.stateOf(f, deploy.PhaseWarming, nil), true)
	next, err := mod.Load(dir, deployment)
	if err != nil {
		return nil, fmt.Errorf("warm-up: load: %w", err)
	}
	for i := range d.cfg.WarmupRuns {
		if ctx.Err() != nil {
			next.Close()
			return nil, ctx.Err()
		}
		start := time.Now()
		err := next.WarmUp(ctx)
		took := time.Since(start)
		if err == nil && took > d.cfg.WarmupBudget {
			err = fmt.Errorf("inference %d took %v, over deploy.warmup_budget %v", i+1, took.Round(time.Millisecond), d.cfg.WarmupBudget)
		}
		if err != nil {
			next.Close()
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	if err := next.Check(); err != nil {
		next.Close()
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	return next, nil
}

// swap makes next the model's running bundle and returns the one it replaces. A
// pipeline in the middle of a frame finishes it on the previous bundle, which stays
// loaded until the watch window is over.
func (d *Deployer) swap(mod Model, next Candidate) Candidate {
	prev := mod.Swap(next)
	d.logger.Info("model swapped", "model", mod.Name(), "version", next.Version())
	return prev
}

// watch keeps the previous model ready for deploy.watch after a swap, and swaps it back
// if the new one fails a detection or is slower than deploy.max_slowdown times it.
func (d *Deployer) watch(ctx context.Context, f *inflight, mod Model, prev, next Candidate) {
	defer func() {
		if prev != nil && mod.Running() != prev {
			prev.Retire()
		}
	}()
	if prev == nil || d.cfg.Watch == 0 {
		return
	}
	t := time.NewTimer(d.cfg.Watch)
	defer t.Stop()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		var problem error
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if st := next.Stats(); st.Errors > 0 {
				problem = fmt.Errorf("detection failed after the swap: %s", st.LastError)
			}
		case <-t.C:
			now, before := next.Stats(), prev.Stats()
			if now.Runs > 0 && before.Median > 0 && float64(now.Median) > d.cfg.MaxSlowdown*float64(before.Median) {
				problem = fmt.Errorf("median inference %v is over deploy.max_slowdown %.1f x the previous model's %v",
					now.Median.Round(time.Millisecond/10), d.cfg.MaxSlowdown, before.Median.Round(time.Millisecond/10))
			}
			if problem == nil {
				return
			}
		}
		if problem == nil {
			continue
		}
		err := d.models.Commit(mod, func() error {
			mod.Swap(prev)
			if _, err := d.store.Revert(mod.Name()); err != nil {
				d.logger.Error("rollback: the store still names the new bundle", "err", err)
			}
			return nil
		})
		if err != nil {
			return // a reload replaced the model: its new one runs what the store says
		}
		d.store.Record(mod.Name(), f.m, deploy.PhaseRolledBack, problem.Error())
		st := d.stateOf(f, deploy.PhaseRolledBack, problem)
		d.report(st, true)
		d.logger.Warn("model rolled back", "model", mod.Name(), "deployment", f.m.Deployment, "reason", problem)
		next.Retire()
		prev = nil // running again: not to be closed
		return
	}
}
