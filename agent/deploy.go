package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/modelfile"
	"github.com/vigil-edge/vigil/sync/deploy"
	"github.com/vigil-edge/vigil/sync/mqttlink"
)

// deployer carries out the model deployments pushed over MQTT (sync/deploy has the
// protocol): one at a time, others queued behind it. A deployment is received (chunks
// kept on disk, so a broker outage or a restart only resumes it), verified (size,
// SHA-256, a signature by a trusted key) before anything is unpacked, installed beside
// the running bundle, checked against its model, loaded and warmed up while the running
// model keeps detecting, then swapped in atomically and watched: detection errors or a
// slowdown beyond deploy.max_slowdown in the watch window swap the previous model back.
type deployer struct {
	a        *Agent
	link     *mqttlink.Link // the link it subscribes and reports on
	stop     func()         // stops it and its link (startLink)
	cfg      config.Deploy
	prefix   string
	device   string
	group    string
	trusted  []string
	lim      deploy.Limits
	store    *deploy.Store
	root     string // transfers in progress, one directory each
	backends *infer.Registry
	logger   *slog.Logger
	work     chan *inflight  // deployments ready to verify, and rollbacks
	ctx      context.Context // Run's: every deployment's context derives from it

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

func newDeployer(a *Agent, c *config.Config, link *mqttlink.Link, store *deploy.Store, backends *infer.Registry, logger *slog.Logger) *deployer {
	return &deployer{
		a: a, link: link, cfg: c.Deploy, prefix: c.MQTT.TopicPrefix, device: c.Device.ID, group: c.Device.Group,
		trusted: c.Trust.Keys, lim: deploy.Limits{MaxBytes: int64(c.Deploy.MaxBytes)}, store: store,
		root: filepath.Join(c.Device.StateDir, "deploy"), backends: backends,
		logger: logger.With("component", "deploy"), work: make(chan *inflight, maxQueued+1),
	}
}

// Run subscribes to the deployment topics, resumes what a restart interrupted, and
// processes deployments until ctx ends.
func (d *deployer) Run(ctx context.Context) error {
	if err := os.MkdirAll(d.root, 0o750); err != nil {
		return fmt.Errorf("deploy: create %s: %w", d.root, err)
	}
	d.ctx = ctx
	d.resume()
	d.link.Subscribe(deploy.Target{Device: d.device}.DeployTopic(d.prefix), d.onManifest)
	if d.group != "" {
		d.link.Subscribe(deploy.Target{Group: d.group}.DeployTopic(d.prefix), d.onManifest)
	}
	stalls := time.NewTicker(min(d.cfg.StallTimeout/4, 5*time.Second))
	defer stalls.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case f := <-d.work:
			d.process(ctx, f)
		case <-stalls.C:
			d.checkStall()
		}
	}
}

// checkStall deals with a transfer that stopped making progress (the operator gave up,
// the broker dropped chunks over its queue limit): the chunk subscription is renewed
// once, which brings the retained chunks again; if that does not help either, the
// deployment is rejected, so that it cannot block the ones behind it.
func (d *deployer) checkStall() {
	d.mu.Lock()
	f := d.current
	if f == nil || f.ready || !f.m.CarriesBundle() || time.Since(f.lastChunk) < d.cfg.StallTimeout {
		d.mu.Unlock()
		return
	}
	renew := !f.resubscribed
	f.resubscribed, f.lastChunk = true, time.Now()
	d.mu.Unlock()
	via := f.m.Transfer.Via
	if via == deploy.ViaChunks {
		filter := f.target.ChunkFilter(d.prefix, f.m.Deployment)
		d.link.Unsubscribe(filter)
		if renew {
			d.logger.Warn("transfer stalled; subscribing to its chunks again", "deployment", f.m.Deployment, "missing", len(f.transfer.Missing()))
			d.link.Subscribe(filter, d.onChunk)
			return
		}
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("stalled: no chunk for %v (deploy.stall_timeout), %d of %d missing",
			d.cfg.StallTimeout, len(f.transfer.Missing()), f.m.Transfer.Chunks), "")
		return
	}
	if !renew {
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("stalled: the download made no progress for %v (deploy.stall_timeout)", d.cfg.StallTimeout), "")
	}
}

// resume picks up the transfers a restart interrupted; their chunks arrive again.
func (d *deployer) resume() {
	transfers, err := deploy.LoadTransfers(d.root)
	if err != nil {
		d.logger.Error("cannot list interrupted transfers; they start over when pushed again", "err", err)
	}
	for _, t := range transfers {
		m := t.Manifest()
		if seen, _ := d.store.Seen(m.Model, m); seen || d.a.parts().models[m.Model] == nil {
			t.Remove()
			continue
		}
		target, err := deploy.TargetOf(d.prefix, d.topicOf(t))
		if err != nil {
			t.Remove()
			continue
		}
		// Its retained manifest may have been cleared while the agent was down: the
		// stall check rejects it if no chunk comes.
		d.logger.Info("resuming an interrupted deployment", "deployment", m.Deployment, "progress", t.Progress())
		d.admit(&inflight{m: m, target: target, transfer: t})
	}
}

// topicOf is the deploy topic a resumed transfer came on: its target is kept beside it.
func (d *deployer) topicOf(t *deploy.Transfer) string {
	b, err := os.ReadFile(filepath.Join(t.Dir(), "topic"))
	if err != nil {
		return ""
	}
	return string(b)
}

// onManifest handles a manifest on a deploy topic (the link's receiving goroutine).
func (d *deployer) onManifest(topic string, payload []byte) {
	defer d.a.recoverPanic("deploy: manifest")
	m, err := deploy.ParseManifest(payload, d.lim)
	if errors.Is(err, deploy.ErrEmptyManifest) {
		// The operator's tool cleared the retained manifest: done, or given up. A
		// transfer from that topic still incomplete will never complete.
		d.withdraw(topic)
		return
	}
	if err != nil {
		var id struct{ Deployment, Model string }
		json.Unmarshal(payload, &id)
		d.report(deploy.State{Deployment: id.Deployment, Model: id.Model, Phase: deploy.PhaseRejected, Error: err.Error()}, true)
		return
	}
	target, err := deploy.TargetOf(d.prefix, topic)
	if err != nil {
		return
	}
	if d.a.parts().models[m.Model] == nil {
		d.report(deploy.State{Deployment: m.Deployment, Model: m.Model, Phase: deploy.PhaseRejected,
			Error: fmt.Sprintf("this device has no model named %q (config models[].name)", m.Model)}, true)
		return
	}
	if seen, why := d.store.Seen(m.Model, m); seen {
		d.logger.Debug("deployment ignored", "deployment", m.Deployment, "why", why)
		return
	}
	d.admit(&inflight{m: m, target: target})
}

// withdraw rejects the transfer under way if its manifest came on topic and is cleared.
func (d *deployer) withdraw(topic string) {
	withdrawn := errors.New("withdrawn: the manifest was cleared before the transfer completed")
	d.mu.Lock()
	f := d.current
	downloading := f != nil && !f.ready && f.m.CarriesBundle() && f.target.DeployTopic(d.prefix) == topic
	var dropped []*inflight
	d.queued = slices.DeleteFunc(d.queued, func(q *inflight) bool {
		if q.target.DeployTopic(d.prefix) == topic {
			dropped = append(dropped, q)
			return true
		}
		return false
	})
	d.mu.Unlock()
	for _, q := range dropped {
		q.cancel()
		d.report(d.stateOf(q, deploy.PhaseRejected, withdrawn), true)
	}
	if downloading {
		d.link.Unsubscribe(f.target.ChunkFilter(d.prefix, f.m.Deployment))
		d.finish(f, deploy.PhaseRejected, withdrawn, "")
	}
}

// admit starts a deployment, or queues it behind the one under way.
func (d *deployer) admit(f *inflight) {
	f.ctx, f.cancel = context.WithCancel(d.ctx)
	d.mu.Lock()
	if cur := d.current; cur != nil {
		for _, q := range append([]*inflight{cur}, d.queued...) {
			if q.m.Deployment == f.m.Deployment {
				d.mu.Unlock()
				f.cancel()
				return // the retained manifest again, after a reconnect
			}
		}
		if len(d.queued) >= maxQueued {
			d.mu.Unlock()
			f.cancel()
			d.report(d.stateOf(f, deploy.PhaseRejected, fmt.Errorf("%d deployments are already waiting", maxQueued)), true)
			return
		}
		d.queued = append(d.queued, f)
		d.mu.Unlock()
		st := d.stateOf(f, deploy.PhaseReceived, nil)
		st.Error = "queued behind deployment " + cur.m.Deployment
		d.report(st, true)
		return
	}
	d.current = f
	f.lastChunk = time.Now()
	d.mu.Unlock()
	d.begin(f)
}

// begin receives a deployment's archive (or, for a rollback, goes straight to work).
func (d *deployer) begin(f *inflight) {
	defer d.a.recoverPanic("deploy: begin")
	d.report(d.stateOf(f, deploy.PhaseReceived, nil), true)
	m := f.m
	if !m.CarriesBundle() {
		d.ready(f)
		return
	}
	// Who signed it is known from the manifest: an untrusted push is refused before a
	// byte of it is downloaded (the archive's SHA-256 is checked once it is here).
	if err := deploy.Verify(m, d.trusted); err != nil {
		d.finish(f, deploy.PhaseRejected, err, "")
		return
	}
	if free, err := deploy.FreeBytes(d.root); err == nil && free < uint64(2*m.Size+64<<20) {
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("not enough disk space: %d MiB free under %s, the bundle needs %d MiB twice (archive and unpacked)",
			free>>20, d.root, m.Size>>20), "")
		return
	}
	dir := filepath.Join(d.root, m.Deployment)
	if m.Transfer.Via == deploy.ViaURL {
		d.report(d.stateOf(f, deploy.PhaseDownloading, nil), true)
		go d.download(f, dir)
		return
	}
	t, err := deploy.OpenTransfer(dir, m)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "topic"), []byte(f.target.DeployTopic(d.prefix)), 0o640)
	}
	if err != nil {
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("store the transfer: %w", err), "")
		return
	}
	f.transfer = t
	f.reported = t.Progress()
	st := d.stateOf(f, deploy.PhaseDownloading, nil)
	st.Progress = t.Progress()
	d.report(st, true)
	if t.Complete() {
		d.ready(f)
		return
	}
	d.link.Subscribe(f.target.ChunkFilter(d.prefix, m.Deployment), d.onChunk)
}

// onChunk stores a chunk of the current transfer (the link's receiving goroutine).
func (d *deployer) onChunk(topic string, payload []byte) {
	defer d.a.recoverPanic("deploy: chunk")
	if len(payload) == 0 {
		return // a cleared retained chunk
	}
	id, i, err := deploy.ParseChunkTopic(topic)
	if err != nil {
		return
	}
	d.mu.Lock()
	f := d.current
	done := f == nil || f.transfer == nil || f.m.Deployment != id || f.ready
	if !done {
		f.lastChunk = time.Now()
	}
	d.mu.Unlock()
	if done {
		return
	}
	complete, err := f.transfer.Put(i, payload)
	if err != nil {
		d.link.Unsubscribe(f.target.ChunkFilter(d.prefix, id))
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("chunk %d: %w", i, err), "")
		return
	}
	if p := f.transfer.Progress(); complete || p-f.reported >= 0.1 {
		f.reported = p
		st := d.stateOf(f, deploy.PhaseDownloading, nil)
		st.Progress = p
		d.report(st, false)
	}
	if complete {
		d.link.Unsubscribe(f.target.ChunkFilter(d.prefix, id))
		d.ready(f)
	}
}

// download fetches a url transfer's archive, within the size the manifest gives.
func (d *deployer) download(f *inflight, dir string) {
	defer d.a.recoverPanic("deploy: download")
	err := func() error {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(f.ctx, http.MethodGet, f.m.Transfer.URL, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", f.m.Transfer.URL, resp.Status)
		}
		path := filepath.Join(dir, "archive.tar")
		out, err := os.Create(path)
		if err != nil {
			return err
		}
		// Progress for the stall check, a buffer at a time.
		n, err := io.Copy(out, io.TeeReader(io.LimitReader(resp.Body, f.m.Size+1), progressWriter(func() {
			d.mu.Lock()
			f.lastChunk = time.Now()
			d.mu.Unlock()
		})))
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if n != f.m.Size {
			return fmt.Errorf("GET %s: %d bytes, the manifest says %d", f.m.Transfer.URL, n, f.m.Size)
		}
		d.mu.Lock()
		f.archive = path
		d.mu.Unlock()
		return nil
	}()
	if f.ctx.Err() != nil {
		os.RemoveAll(dir)
		return // finished already (withdrawn, stalled) or the agent is stopping
	}
	if err != nil {
		os.RemoveAll(dir)
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("download: %w", err), "")
		return
	}
	d.ready(f)
}

// progressWriter calls tick for every write: an io.TeeReader's side channel.
type progressWriter func()

func (p progressWriter) Write(b []byte) (int, error) {
	p()
	return len(b), nil
}

// ready hands a deployment to the work loop, once.
func (d *deployer) ready(f *inflight) {
	d.mu.Lock()
	send := !f.ready && d.current == f && f.ctx.Err() == nil
	f.ready = true
	d.mu.Unlock()
	if send {
		d.work <- f
	}
}

// process verifies, installs, warms up and swaps in a received deployment, or carries
// out a rollback. It runs on the deployer's goroutine, so only one model changes at a
// time, and returns after the watch window.
func (d *deployer) process(ctx context.Context, f *inflight) {
	d.mu.Lock()
	stale := d.current != f || f.ctx.Err() != nil
	d.mu.Unlock()
	if stale {
		return // ended while it waited (withdrawn, stalled)
	}
	m := f.m
	mod := d.a.parts().models[m.Model]
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
		dir := mod.configured
		if st.Previous != "" {
			dir = filepath.Join(d.store.Root(), m.Model, st.Previous)
		}
		next, err := d.warm(ctx, f, mod, dir)
		if err != nil {
			d.finish(f, deploy.PhaseRejected, fmt.Errorf("rollback: %w", err), "")
			return
		}
		err = d.commit(m.Model, mod, func() error {
			if _, err := d.store.Rollback(m.Model); err != nil {
				return err
			}
			retire(d.swap(mod, next)) // rollbacks are not watched: nothing to return to
			return nil
		})
		if err != nil {
			next.detector.Close()
			d.finish(f, deploy.PhaseRejected, fmt.Errorf("rollback: %w", err), "")
			return
		}
		d.finish(f, deploy.PhaseRolledBack, nil, next.detector.Manifest().Version)
		return
	case deploy.ActionPromote:
		d.promote(ctx, f, mod)
		return
	case deploy.ActionDiscard:
		err := d.commit(m.Model, mod, func() error {
			if _, _, ok := d.store.Shadow(m.Model); !ok {
				return fmt.Errorf("model %s has no pushed shadow candidate to discard", m.Model)
			}
			if err := d.store.ClearShadow(m.Model); err != nil {
				return err
			}
			d.a.setShadow(mod, d.a.configShadow(mod.cfg))
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
	next, err := d.warm(ctx, f, mod, dir)
	if err != nil {
		d.store.Discard(m.Model, dir)
		phase := deploy.PhaseRolledBack
		if m.Action == deploy.ActionShadow {
			phase = deploy.PhaseRejected // nothing was rolled: the model ran on untouched
		}
		d.finish(f, phase, err, "")
		return
	}
	next.deployment = m.Deployment
	var prev *loaded
	err = d.commit(m.Model, mod, func() error {
		if m.Action == deploy.ActionShadow {
			// Beside the model, not instead of it.
			if err := d.store.SetShadow(m.Model, dir, m.Deployment); err != nil {
				return err
			}
			sh := newShadow(next.detector, dir, mod.cfg.Shadow.Every)
			sh.deployment = m.Deployment
			d.a.setShadow(mod, sh)
			return nil
		}
		if err := d.store.Activate(m.Model, dir); err != nil {
			return fmt.Errorf("activate: %w", err)
		}
		prev = d.swap(mod, next)
		return nil
	})
	if err != nil {
		next.detector.Close()
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

// errReloaded is why a deployment that finished its warm-up after a reload replaced
// its model changes nothing: what it loaded follows the old model's settings.
var errReloaded = errors.New("the model's config was reloaded during the deployment; nothing changed, push again")

// commit runs change, the part of a deployment that changes the model and the store,
// unless a reload replaced the model since mod was looked up: then nothing changes and
// the error says so. Reload holds modelsMu while it replaces models, so a deployment
// cannot land on a model that no camera uses any more.
func (d *deployer) commit(name string, mod *model, change func() error) error {
	d.a.modelsMu.Lock()
	defer d.a.modelsMu.Unlock()
	if d.a.parts().models[name] != mod {
		return errReloaded
	}
	return change()
}

// promote swaps in the model's pushed shadow candidate, as a deployment of it would be:
// loaded afresh and warmed up (the shadow runs on, untouched, if that fails), made
// active, and watched.
func (d *deployer) promote(ctx context.Context, f *inflight, mod *model) {
	name := f.m.Model
	dir, shadowed, ok := d.store.Shadow(name)
	if !ok {
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("model %s has no pushed shadow candidate to promote (push one with --shadow first)", name), "")
		return
	}
	next, err := d.warm(ctx, f, mod, dir)
	if err != nil {
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("promote: %w", err), "")
		return
	}
	next.deployment = shadowed
	var prev *loaded
	err = d.commit(name, mod, func() error {
		if err := d.store.Activate(name, dir); err != nil {
			return fmt.Errorf("activate: %w", err)
		}
		if err := d.store.ClearShadow(name); err != nil {
			d.logger.Error("promoted, but the store still names the shadow", "model", name, "err", err)
		}
		d.a.setShadow(mod, d.a.configShadow(mod.cfg))
		prev = d.swap(mod, next)
		return nil
	})
	if err != nil {
		next.detector.Close()
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("promote: %w", err), "")
		return
	}
	d.finish(f, deploy.PhaseActive, nil, next.detector.Manifest().Version)
	d.watch(ctx, f, mod, prev, next)
}

// assemble returns the path of the received archive, its size and SHA-256 checked.
func (d *deployer) assemble(f *inflight) (string, error) {
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
func (d *deployer) install(m *deploy.Manifest, archive string) (string, error) {
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

// warm loads a bundle with the model's runtime settings and runs it deploy.warmup_runs
// times on a frame of the size its cameras deliver, each within deploy.warmup_budget.
func (d *deployer) warm(ctx context.Context, f *inflight, mod *model, dir string) (*loaded, error) {
	d.report(d.stateOf(f, deploy.PhaseWarming, nil), true)
	det, backend, err := loadModel(d.backends, dir, mod.cfg)
	if err != nil {
		return nil, fmt.Errorf("warm-up: load: %w", err)
	}
	w, h := d.a.frameSize(mod)
	frame := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(114, 114, 114, 0), h, w, gocv.MatTypeCV8UC3)
	defer frame.Close()
	var dets []infer.Detection
	for i := range d.cfg.WarmupRuns {
		if ctx.Err() != nil {
			det.Close()
			return nil, ctx.Err()
		}
		start := time.Now()
		dets, _, err = det.Detect(frame, dets[:0])
		took := time.Since(start)
		if err == nil && took > d.cfg.WarmupBudget {
			err = fmt.Errorf("inference %d took %v, over deploy.warmup_budget %v", i+1, took.Round(time.Millisecond), d.cfg.WarmupBudget)
		}
		if err != nil {
			det.Close()
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	// A bundle's labelled images (golden/) are a strict check (every object found), or,
	// when its model.yaml sets eval minimums, measured against those.
	check := checkGolden
	if det.Manifest().Eval != (infer.EvalSpec{}) {
		check = checkEval
	}
	if err := check(det, dir); err != nil {
		det.Close()
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	return &loaded{detector: det, dir: dir, backend: backend}, nil
}

// goldenDir holds a bundle's optional golden images: NAME.jpg (or .png) with NAME.json,
// {"detections": [{"label": "dog", "box": [x1, y1, x2, y2], "min_score": 0.5}]}, the
// objects the model must find in it (box in image pixels; min_score defaults to the
// bundle's thresholds.score).
const goldenDir = "golden"

// checkGolden runs the model on the bundle's golden images: each expected object must be
// found with its label, at least its score, and a box overlapping the expected one by
// IoU >= 0.5. A bundle without golden images passes.
func checkGolden(det *detector.Detector, dir string) error {
	specs, _ := filepath.Glob(filepath.Join(dir, goldenDir, "*.json"))
	return detectLabelled(det, specs, func(name string, want []labelledObject, dets []infer.Detection) error {
		for _, w := range want {
			min := w.MinScore
			if min == 0 {
				min = det.Manifest().Thresholds.Score
			}
			found := slices.ContainsFunc(dets, func(d infer.Detection) bool {
				return d.Label == w.Label && d.Score >= min && infer.IoU(d.Box, w.Box) >= 0.5
			})
			if !found {
				return fmt.Errorf("golden image %s: no %s with score >= %.2f near %v (found %s)", name, w.Label, min, w.Box, describe(dets))
			}
		}
		return nil
	})
}

// checkEval measures the model on the bundle's labelled images (golden/) against the
// minimums its model.yaml asks for (eval.min_precision, min_recall, min_map50).
func checkEval(det *detector.Detector, dir string) error {
	want := det.Manifest().Eval
	specs, _ := filepath.Glob(filepath.Join(dir, goldenDir, "*.json"))
	if len(specs) == 0 {
		return fmt.Errorf("model.yaml asks for eval minimums, but the bundle has no labelled images in %s/", goldenDir)
	}
	got, err := evalImages(det, specs)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"precision", got.Precision, want.MinPrecision}, {"recall", got.Recall, want.MinRecall}, {"mAP@0.5", got.MAP50, want.MinMAP50}} {
		if c.got < c.want {
			return fmt.Errorf("eval on %d labelled images: %s %.3f is under the bundle's minimum %.3f", got.Images, c.name, c.got, c.want)
		}
	}
	return nil
}

// describe lists detections briefly, for an error message.
func describe(dets []infer.Detection) string {
	if len(dets) == 0 {
		return "nothing"
	}
	parts := make([]string, 0, len(dets))
	for _, d := range dets[:min(len(dets), 5)] {
		parts = append(parts, fmt.Sprintf("%s %.2f", d.Label, d.Score))
	}
	return strings.Join(parts, ", ")
}

// swap makes next the model's running bundle and returns the one it replaces. A
// pipeline in the middle of a frame finishes it on the previous detector, which stays
// open until the watch window is over.
func (d *deployer) swap(mod *model, next *loaded) *loaded {
	prev := mod.running.Swap(next)
	for _, cam := range d.a.parts().cameras {
		if cam.model() == mod && cam.drift != nil {
			cam.drift.Reset() // the new model gets its own baseline
		}
	}
	d.logger.Info("model swapped", "model", mod.name, "bundle", next.dir, "backend", next.backend)
	return prev
}

// watch keeps the previous model ready for deploy.watch after a swap, and swaps it back
// if the new one fails a detection or is slower than deploy.max_slowdown times it.
func (d *deployer) watch(ctx context.Context, f *inflight, mod *model, prev, next *loaded) {
	defer func() {
		if prev != nil && mod.running.Load() != prev {
			retire(prev)
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
			if errs, last := next.stats.errors(); errs > 0 {
				problem = fmt.Errorf("detection failed after the swap: %s", last)
			}
		case <-t.C:
			newP50, n := next.stats.p50()
			oldP50, _ := prev.stats.p50()
			if n > 0 && oldP50 > 0 && float64(newP50) > d.cfg.MaxSlowdown*float64(oldP50) {
				problem = fmt.Errorf("median inference %v is over deploy.max_slowdown %.1f x the previous model's %v",
					newP50.Round(time.Millisecond/10), d.cfg.MaxSlowdown, oldP50.Round(time.Millisecond/10))
			}
			if problem == nil {
				return
			}
		}
		if problem == nil {
			continue
		}
		err := d.commit(mod.name, mod, func() error {
			mod.running.Store(prev)
			if _, err := d.store.Revert(mod.name); err != nil {
				d.logger.Error("rollback: the store still names the new bundle", "err", err)
			}
			return nil
		})
		if err != nil {
			return // a reload replaced the model: its new one runs what the store says
		}
		d.store.Record(mod.name, f.m, deploy.PhaseRolledBack, problem.Error())
		st := d.stateOf(f, deploy.PhaseRolledBack, problem)
		d.report(st, true)
		d.logger.Warn("model rolled back", "model", mod.name, "deployment", f.m.Deployment, "reason", problem)
		retire(next)
		prev = nil // running again: not to be closed
		return
	}
}

// retire closes a swapped-out bundle's detector as soon as no frame is on it: a
// pipeline that took it just before the swap finishes its frame first.
func retire(l *loaded) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.retired = true
	if l.users == 0 {
		l.detector.Close()
	}
}

// acquire takes the bundle for one frame; false means it was retired (load the
// running one again).
func (l *loaded) acquire() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.retired {
		return false
	}
	l.users++
	return true
}

// release ends acquire's frame, closing a retired bundle's detector after its last one.
func (l *loaded) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.users--
	if l.retired && l.users == 0 {
		l.detector.Close()
	}
}

// finish ends a deployment in a final phase and starts the next queued one.
func (d *deployer) finish(f *inflight, phase deploy.Phase, err error, version string) {
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

func (d *deployer) stateOf(f *inflight, phase deploy.Phase, err error) deploy.State {
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
func (d *deployer) report(st deploy.State, event bool) {
	d.mu.Lock()
	d.last = &st
	d.mu.Unlock()
	if b, err := json.Marshal(st); err == nil {
		d.link.Retain("models/state", b)
	}
	if event {
		d.a.recordEvent(context.Background(), "deployment", st)
	}
	level := slog.LevelInfo
	if st.Phase == deploy.PhaseRejected || st.Phase == deploy.PhaseRolledBack {
		level = slog.LevelWarn
	}
	d.logger.Log(context.Background(), level, "deployment "+string(st.Phase), "deployment", st.Deployment, "model", st.Model,
		"version", st.Version, "progress", st.Progress, "error", st.Error)
}

// lastState is the state last reported, for /api/status.
func (d *deployer) lastState() *deploy.State {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}

// frameSize is the size of the frames the model's first streaming camera delivers, or
// 640x480.
func (a *Agent) frameSize(m *model) (w, h int) {
	for _, cam := range a.parts().cameras {
		if size := cam.frameSize.Load(); cam.model() == m && size != 0 {
			return int(size >> 32), int(size & 0xffffffff)
		}
	}
	return 640, 480
}

// runStats are a loaded bundle's own inference times and failures, so that a swapped-in
// model is judged against the one it replaced.
type runStats struct {
	mu      sync.Mutex // guards the fields below
	times   []time.Duration
	pos     int
	errs    int
	lastErr string
}

func (s *runStats) record(d time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.errs++
		s.lastErr = err.Error()
		return
	}
	if len(s.times) < statsWindow {
		s.times = append(s.times, d)
	} else {
		s.times[s.pos] = d
		s.pos = (s.pos + 1) % statsWindow
	}
}

func (s *runStats) p50() (time.Duration, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.times) == 0 {
		return 0, 0
	}
	t := slices.Clone(s.times)
	slices.Sort(t)
	return t[len(t)/2], len(t)
}

func (s *runStats) errors() (int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errs, s.lastErr
}
