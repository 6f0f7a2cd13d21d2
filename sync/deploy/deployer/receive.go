package deployer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/vigil-edge/vigil/sync/deploy"
)

// Receiving a deployment: its manifest, then its archive in chunks over MQTT or by URL,
// kept on disk so that a broker outage or a restart only resumes it.

// Run subscribes to the deployment topics, resumes what a restart interrupted, and
// processes deployments until ctx ends.
func (d *Deployer) Run(ctx context.Context) error {
	if err := os.MkdirAll(d.cfg.Dir, 0o750); err != nil {
		return fmt.Errorf("deploy: create %s: %w", d.cfg.Dir, err)
	}
	d.ctx = ctx
	d.resume()
	d.link.Subscribe(deploy.Target{Device: d.cfg.Device}.DeployTopic(d.cfg.TopicPrefix), d.onManifest)
	if d.cfg.Group != "" {
		d.link.Subscribe(deploy.Target{Group: d.cfg.Group}.DeployTopic(d.cfg.TopicPrefix), d.onManifest)
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
func (d *Deployer) checkStall() {
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
		filter := f.target.ChunkFilter(d.cfg.TopicPrefix, f.m.Deployment)
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
func (d *Deployer) resume() {
	transfers, err := deploy.LoadTransfers(d.cfg.Dir)
	if err != nil {
		d.logger.Error("cannot list interrupted transfers; they start over when pushed again", "err", err)
	}
	for _, t := range transfers {
		m := t.Manifest()
		if seen, _ := d.store.Seen(m.Model, m); seen || d.models.Lookup(m.Model) == nil {
			t.Remove()
			continue
		}
		target, err := deploy.TargetOf(d.cfg.TopicPrefix, d.topicOf(t))
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
func (d *Deployer) topicOf(t *deploy.Transfer) string {
	b, err := os.ReadFile(filepath.Join(t.Dir(), "topic"))
	if err != nil {
		return ""
	}
	return string(b)
}

// onManifest handles a manifest on a deploy topic (the link's receiving goroutine).
func (d *Deployer) onManifest(topic string, payload []byte) {
	defer d.recover("deploy: manifest")
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
	target, err := deploy.TargetOf(d.cfg.TopicPrefix, topic)
	if err != nil {
		return
	}
	if d.models.Lookup(m.Model) == nil {
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
func (d *Deployer) withdraw(topic string) {
	withdrawn := errors.New("withdrawn: the manifest was cleared before the transfer completed")
	d.mu.Lock()
	f := d.current
	downloading := f != nil && !f.ready && f.m.CarriesBundle() && f.target.DeployTopic(d.cfg.TopicPrefix) == topic
	var dropped []*inflight
	d.queued = slices.DeleteFunc(d.queued, func(q *inflight) bool {
		if q.target.DeployTopic(d.cfg.TopicPrefix) == topic {
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
		d.link.Unsubscribe(f.target.ChunkFilter(d.cfg.TopicPrefix, f.m.Deployment))
		d.finish(f, deploy.PhaseRejected, withdrawn, "")
	}
}

// admit starts a deployment, or queues it behind the one under way.
func (d *Deployer) admit(f *inflight) {
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
func (d *Deployer) begin(f *inflight) {
	defer d.recover("deploy: begin")
	d.report(d.stateOf(f, deploy.PhaseReceived, nil), true)
	m := f.m
	if !m.CarriesBundle() {
		d.ready(f)
		return
	}
	// Who signed it is known from the manifest: an untrusted push is refused before a
	// byte of it is downloaded (the archive's SHA-256 is checked once it is here).
	if err := deploy.Verify(m, d.cfg.Trusted); err != nil {
		d.finish(f, deploy.PhaseRejected, err, "")
		return
	}
	if free, err := deploy.FreeBytes(d.cfg.Dir); err == nil && free < uint64(2*m.Size+64<<20) {
		d.finish(f, deploy.PhaseRejected, fmt.Errorf("not enough disk space: %d MiB free under %s, the bundle needs %d MiB twice (archive and unpacked)",
			free>>20, d.cfg.Dir, m.Size>>20), "")
		return
	}
	dir := filepath.Join(d.cfg.Dir, m.Deployment)
	if m.Transfer.Via == deploy.ViaURL {
		d.report(d.stateOf(f, deploy.PhaseDownloading, nil), true)
		go d.download(f, dir)
		return
	}
	t, err := deploy.OpenTransfer(dir, m)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "topic"), []byte(f.target.DeployTopic(d.cfg.TopicPrefix)), 0o640)
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
	d.link.Subscribe(f.target.ChunkFilter(d.cfg.TopicPrefix, m.Deployment), d.onChunk)
}

// onChunk stores a chunk of the current transfer (the link's receiving goroutine).
func (d *Deployer) onChunk(topic string, payload []byte) {
	defer d.recover("deploy: chunk")
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
		d.link.Unsubscribe(f.target.ChunkFilter(d.cfg.TopicPrefix, id))
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
		d.link.Unsubscribe(f.target.ChunkFilter(d.cfg.TopicPrefix, id))
		d.ready(f)
	}
}

// download fetches a url transfer's archive, within the size the manifest gives.
func (d *Deployer) download(f *inflight, dir string) {
	defer d.recover("deploy: download")
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
func (d *Deployer) ready(f *inflight) {
	d.mu.Lock()
	send := !f.ready && d.current == f && f.ctx.Err() == nil
	f.ready = true
	d.mu.Unlock()
	if send {
		d.work <- f
	}
}
