// Package push is the operator's side of remote model push (`vigil model push`): it
// publishes a signed bundle's chunks and its deployment manifest, retained at QoS 1,
// to one device or a group, waits for each device's final phase on its retained
// models/state, and clears the retained messages again; or, staged (staged.go), to a
// group in waves after a canary, stopping when too many fail. See package deploy for
// the protocol. Only cmd/vigil imports it.
package push

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/internal/mqttdial"
	"github.com/vigil-edge/vigil/sync/deploy"
)

// Options configure one push.
type Options struct {
	// Broker is where the devices are; its ClientID defaults to vigil-push-<random>,
	// its Timeout (a connect, each subscribe) to 30s.
	Broker mqttdial.Broker

	TopicPrefix string // default "vigil"
	Device      string // exactly one of Device and Group
	Group       string
	Model       string // config models[].name on the devices; default "default"

	Via       string // deploy.ViaChunks (default) or deploy.ViaURL
	URL       string // with ViaURL: where devices fetch the archive
	ChunkSize int    // default deploy.DefaultChunkSize

	// Rollback sends action "rollback" instead of a bundle.
	Rollback bool
	// Shadow sends the bundle as action "shadow": the devices run it beside the model
	// and report their agreement instead of swapping it in. Promote swaps that
	// candidate in; DiscardShadow drops it (neither sends a bundle).
	Shadow        bool
	Promote       bool
	DiscardShadow bool
	// Deployment is the deployment id; default: time and random.
	Deployment string
	// Timeout bounds the wait for the devices' final phases (default 10m).
	Timeout time.Duration

	// Progress, when set, is called as chunks are acknowledged by the broker.
	Progress func(sent, total int64)
	// OnState, when set, is called for each state a target device reports for this
	// deployment.
	OnState func(device string, s deploy.State)
	// Now is the clock for "issued" (default time.Now).
	Now func() time.Time

	// Staged rollout of a group (pushStaged); set Canary or CanaryDevices to stage.

	// Canary is the size of the first wave: "N" devices or "P%" of the group's online
	// devices (rounded up, at least 1), the first in device id order.
	Canary string
	// CanaryDevices names the canary devices instead of Canary.
	CanaryDevices []string
	// Wave is the size of each wave after the canary, "N" or "P%" like Canary; ""
	// means all the rest in one wave.
	Wave string
	// MaxFailures is how many devices may fail (rejected, rolled_back, no answer) in
	// all the waves so far before the rollout stops.
	MaxFailures int
	// OnWave, when set, is called as each wave starts and ends.
	OnWave func(WaveEvent)
}

// Result is the outcome of a push.
type Result struct {
	Deployment string
	// Success is the phase every device must reach: active, or rolled_back for a
	// rollback.
	Success deploy.Phase
	Devices []DeviceResult // sorted by device; by wave then device when Staged

	// Staged is set for a staged rollout; the rest is for one.
	Staged      bool
	MaxFailures int
	// Stopped says why waves were not started ("" when all ran): too many failures,
	// or the push was interrupted.
	Stopped string
}

// DeviceResult is one device's row in the table.
type DeviceResult struct {
	Device  string
	Phase   deploy.Phase // "" when the device never answered
	Version string
	Reason  string

	// Staged rollouts only:
	// Wave is the device's wave, 1 being the canary; 0 for a device in none
	// (offline when the rollout was planned).
	Wave int
	// Skipped is set for a device that was not attempted: offline, or its wave was
	// not started (Reason says which).
	Skipped bool
}

// OK reports whether every device reached the success phase. For a staged rollout:
// whether every wave ran and the failures stayed within MaxFailures (devices skipped
// as offline are not failures; the table lists them).
func (r *Result) OK() bool {
	if r.Staged {
		return r.Stopped == "" && r.attempted() > 0 && r.Failures() <= r.MaxFailures
	}
	reached := 0
	for _, d := range r.Devices {
		switch {
		case d.Skipped: // offline when the push started: listed, not a failure
		case d.Phase != r.Success:
			return false
		default:
			reached++
		}
	}
	return reached > 0
}

// Failures counts the devices attempted that did not reach the success phase.
func (r *Result) Failures() int {
	n := 0
	for _, d := range r.Devices {
		if !d.Skipped && d.Phase != r.Success {
			n++
		}
	}
	return n
}

func (r *Result) attempted() int {
	n := 0
	for _, d := range r.Devices {
		if !d.Skipped {
			n++
		}
	}
	return n
}

// WriteTable prints the result as a table: device, phase, version, reason, and the
// wave first for a staged rollout.
func (r *Result) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if r.Staged {
		fmt.Fprint(tw, "WAVE\t")
	}
	fmt.Fprintln(tw, "DEVICE\tPHASE\tVERSION\tREASON")
	for _, d := range r.Devices {
		phase := string(d.Phase)
		switch {
		case d.Skipped:
			phase = "skipped"
		case phase == "":
			phase = "no answer"
		}
		if r.Staged {
			fmt.Fprintf(tw, "%s\t", waveLabel(d.Wave))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Device, phase, orDash(d.Version), orDash(d.Reason))
	}
	tw.Flush()
}

func countTrue(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Timeouts of single broker operations.
const (
	opTimeout     = 30 * time.Second // connect, subscribe, one publish
	cleanupBudget = time.Minute      // clearing retained messages after the wait
	window        = 8                // chunks published and not yet acknowledged
	barrierWait   = 5 * time.Second  // for the echo that follows the retained statuses
)

// Push publishes the bundle in bundleDir (ignored for a rollback) to the target and
// waits for the devices. An error before anything was published means the push could
// not be carried out (unsigned or changed bundle, broker unreachable, no device in
// the group) and the Result is nil. Once the manifest is out, the Result is always
// returned, with the devices' answers; an error alongside it says the retained
// messages could not all be cleared.
//
// With Canary or CanaryDevices set the push is a staged rollout of the group (see
// pushStaged): canary devices first, then the rest in waves, stopping when failures
// pass MaxFailures.
func Push(ctx context.Context, bundleDir string, opts Options) (*Result, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	if opts.staged() {
		return pushStaged(ctx, bundleDir, opts)
	}
	b, err := build(ctx, bundleDir, opts)
	if err != nil {
		return nil, err
	}
	defer b.close()
	target := deploy.Target{Device: opts.Device, Group: opts.Group}
	res := &Result{Deployment: b.m.Deployment, Success: b.success}

	s := newSession(opts, target, b.m.Deployment)
	if err := s.connect(ctx); err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	defer func() { s.client.Disconnect(250) }()
	if err := s.discover(ctx); err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	var skipped []PlannedDevice
	if target.Group != "" {
		// A group's devices offline now are not waited for (one powered-off device must
		// not hold the push for its whole timeout); one that comes back while the
		// others are at it takes the retained manifest and joins.
		plan, err := s.plan(b)
		if err != nil {
			return nil, err
		}
		skipped = plan.Skipped
		s.mu.Lock()
		s.wave, s.late = map[string]bool{}, true
		for _, dev := range plan.Waves[0].Devices {
			s.wave[dev.Device] = true
		}
		s.mu.Unlock()
	}

	// From here on retained messages may be on the broker: clear them whatever happens.
	d := &delivery{s: s, b: b, targets: []deploy.Target{target}}
	if err := d.publish(ctx, opts.Progress); err != nil {
		return nil, errors.Join(fmt.Errorf("push: %w", err), d.clear())
	}
	res.Devices = s.wait(ctx, func(ctx context.Context) error { return d.publish(ctx, nil) })
	for _, dev := range skipped {
		if !slices.ContainsFunc(res.Devices, func(r DeviceResult) bool { return r.Device == dev.Device }) {
			res.Devices = append(res.Devices, DeviceResult{Device: dev.Device, Skipped: true, Reason: "offline when the push started"})
		}
	}
	slices.SortFunc(res.Devices, func(a, b DeviceResult) int { return strings.Compare(a.Device, b.Device) })
	return res, d.clear()
}

// built is a deployment ready to publish: its manifest (and payload) and, for a
// chunked deploy, the archive in a temporary file.
type built struct {
	m       *deploy.Manifest
	payload []byte
	archive *os.File // nil for a rollback
	success deploy.Phase
}

// build checks the bundle (or makes the rollback manifest) and encodes the manifest.
func build(ctx context.Context, bundleDir string, opts Options) (*built, error) {
	m := &deploy.Manifest{Deployment: opts.Deployment, Model: opts.Model, Issued: opts.Now().UTC()}
	b := &built{m: m}
	switch {
	case opts.Rollback:
		m.Action, b.success = deploy.ActionRollback, deploy.PhaseRolledBack
	case opts.Promote:
		m.Action, b.success = deploy.ActionPromote, deploy.PhaseActive
	case opts.DiscardShadow:
		m.Action, b.success = deploy.ActionDiscard, deploy.PhaseDiscarded
	default:
		var err error
		b.archive, err = prepare(ctx, bundleDir, m, opts)
		if err != nil {
			return nil, err
		}
		b.success = deploy.PhaseActive
		if opts.Shadow {
			b.success = deploy.PhaseShadowing
		}
	}
	// What devices will parse must parse (their size limit aside).
	if err := m.Validate(deploy.Limits{MaxBytes: 1 << 62}); err != nil {
		b.close()
		return nil, fmt.Errorf("push: %w", err)
	}
	var err error
	if b.payload, err = m.Marshal(); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

func (b *built) close() {
	if b.archive != nil {
		b.archive.Close()
		os.Remove(b.archive.Name())
	}
}

// chunked reports whether the archive travels in chunks over MQTT.
func (b *built) chunked() bool {
	return b.archive != nil && b.m.Transfer.Via == deploy.ViaChunks
}

// delivery is one publication of a deployment to some targets (one device, a group,
// or the devices of one wave): per target its chunks then its manifest, retained.
type delivery struct {
	s       *session
	b       *built
	targets []deploy.Target

	// published are the retained topics that may be on the broker, manifests first.
	published []string
}

// publish publishes, for each target, the chunks, then the manifest, so a device
// never sees a manifest whose chunks are not all on the broker yet. progress counts
// the chunk bytes of all the targets.
func (d *delivery) publish(ctx context.Context, progress func(sent, total int64)) error {
	if d.published == nil {
		for _, t := range d.targets {
			d.published = append(d.published, t.DeployTopic(d.s.opts.TopicPrefix))
		}
		for _, t := range d.targets {
			d.published = append(d.published, d.chunkTopics(t)...)
		}
	}
	var done int64
	total := int64(len(d.targets))
	if d.b.archive != nil {
		total *= d.b.m.Size
	}
	for _, t := range d.targets {
		if topics := d.chunkTopics(t); len(topics) > 0 {
			var p func(sent, _ int64)
			if progress != nil {
				p = func(sent, _ int64) { progress(done+sent, total) }
			}
			if err := d.s.publishChunks(ctx, d.b.archive, d.b.m, topics, p); err != nil {
				return err
			}
			done += d.b.m.Size
		}
		if err := d.s.publish(ctx, t.DeployTopic(d.s.opts.TopicPrefix), d.b.payload); err != nil {
			return fmt.Errorf("publish the manifest: %w", err)
		}
	}
	return nil
}

func (d *delivery) chunkTopics(t deploy.Target) []string {
	if !d.b.chunked() {
		return nil
	}
	topics := make([]string, d.b.m.Transfer.Chunks)
	for i := range topics {
		topics[i] = t.ChunkTopic(d.s.opts.TopicPrefix, d.b.m.Deployment, i)
	}
	return topics
}

// clear publishes empty retained payloads on what was published: the manifests
// first, so no device starts on a deployment whose chunks go away.
func (d *delivery) clear() error {
	cctx, cancel := context.WithTimeout(context.Background(), cleanupBudget)
	defer cancel()
	var errs []error
	for _, topic := range d.published {
		if err := d.s.publish(cctx, topic, nil); err != nil {
			errs = append(errs, err)
		}
	}
	d.published = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clear the retained deployment messages: %w", err)
	}
	return nil
}

func (o *Options) defaults() error {
	if (o.Device == "") == (o.Group == "") {
		return errors.New("push: give exactly one of a device and a group")
	}
	if n := countTrue(o.Rollback, o.Shadow, o.Promote, o.DiscardShadow); n > 1 {
		return errors.New("push: rollback, shadow, promote and discard go one at a time")
	}
	if o.Broker.URL == "" {
		return errors.New("push: no broker URL")
	}
	for _, name := range []string{o.Device, o.Group} {
		if strings.ContainsAny(name, "/+#") {
			return fmt.Errorf("push: %q cannot be a topic level", name)
		}
	}
	if o.TopicPrefix == "" {
		o.TopicPrefix = "vigil"
	}
	if o.Model == "" {
		o.Model = "default"
	}
	if o.Via == "" {
		o.Via = deploy.ViaChunks
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = deploy.DefaultChunkSize
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Deployment == "" {
		o.Deployment = o.Now().UTC().Format("20060102T150405Z") + "-" + randomHex(3)
	}
	if err := o.CheckStaged(); err != nil {
		return err
	}
	if !deploy.ValidDeploymentID(o.Deployment) {
		return fmt.Errorf("push: %q is not a deployment id", o.Deployment)
	}
	if o.Broker.ClientID == "" {
		o.Broker.ClientID = "vigil-push-" + randomHex(6)
	}
	if o.Broker.Timeout <= 0 {
		o.Broker.Timeout = opTimeout
	}
	switch o.Via {
	case deploy.ViaChunks:
		if o.URL != "" {
			return errors.New("push: a URL is for --via url")
		}
	case deploy.ViaURL:
		if o.URL == "" {
			return errors.New("push: --via url needs --url")
		}
	default:
		return fmt.Errorf("push: via %q is not one of chunks, url", o.Via)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// prepare packs and checks the signed bundle into a temporary file and fills in the
// manifest's bundle, digest, signature and transfer.
func prepare(ctx context.Context, bundleDir string, m *deploy.Manifest, opts Options) (*os.File, error) {
	bm, err := infer.LoadManifest(bundleDir)
	if err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	if !deploy.ValidVersion(bm.Version) {
		return nil, fmt.Errorf("push: %s: version %q cannot be a deployed version (1 to 64 of A-Z a-z 0-9 . _ + -)", bundleDir, bm.Version)
	}
	f, err := os.CreateTemp("", "vigil-push-*.tar")
	if err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	fail := func(err error) (*os.File, error) {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("push: %w", err)
	}
	sig, err := deploy.CheckSigned(bundleDir, f)
	if err != nil {
		return fail(err)
	}
	m.Action = deploy.ActionDeploy
	if opts.Shadow {
		m.Action = deploy.ActionShadow
	}
	m.Bundle = &deploy.BundleRef{Name: bm.Name, Version: bm.Version}
	m.Size, m.SHA256, m.Key, m.Signature = sig.Size, sig.SHA256, sig.Key, sig.Signature
	if opts.Via == deploy.ViaURL {
		m.Transfer = &deploy.TransferSpec{Via: deploy.ViaURL, URL: opts.URL}
		if err := checkURL(ctx, opts.URL, sig); err != nil {
			return fail(err)
		}
	} else {
		m.Transfer = &deploy.TransferSpec{Via: deploy.ViaChunks, ChunkSize: opts.ChunkSize,
			Chunks: int((sig.Size + int64(opts.ChunkSize) - 1) / int64(opts.ChunkSize))}
	}
	return f, nil
}

// checkURL fetches the archive from url and checks it is the signed one, so a push
// that every device would reject is not published.
func checkURL(ctx context.Context, url string, sig *deploy.Signature) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("--url: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("--url: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("--url %s: %s", url, resp.Status)
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(resp.Body, sig.Size+1))
	if err != nil {
		return fmt.Errorf("--url %s: %w", url, err)
	}
	if sha := hex.EncodeToString(h.Sum(nil)); n != sig.Size || sha != sig.SHA256 {
		return fmt.Errorf("--url %s serves %d bytes with SHA-256 %s, not the signed archive (%d bytes, %s); upload the output of `vigil model pack`",
			url, n, sha, sig.Size, sig.SHA256)
	}
	return nil
}

// ProgressPrinter returns a Progress func drawing a bar on w when tty is set, or a
// plain line every 10% otherwise.
func ProgressPrinter(w io.Writer, tty bool) func(sent, total int64) {
	lastTenth := -1
	return func(sent, total int64) {
		if total <= 0 {
			return
		}
		frac := float64(sent) / float64(total)
		if tty {
			const width = 30
			n := int(frac * width)
			fmt.Fprintf(w, "\rsending [%s%s] %3.0f%% %s of %s", strings.Repeat("#", n), strings.Repeat(".", width-n), 100*frac, mb(sent), mb(total))
			if sent >= total {
				fmt.Fprintln(w)
			}
			return
		}
		if tenth := int(frac * 10); tenth > lastTenth {
			lastTenth = tenth
			fmt.Fprintf(w, "sent %3.0f%% (%s of %s)\n", 100*frac, mb(sent), mb(total))
		}
	}
}

func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
