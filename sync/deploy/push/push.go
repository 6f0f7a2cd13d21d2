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
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/internal/backoff"
	"github.com/vigil-edge/vigil/internal/mqttbarrier"
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

// session is one connection to the broker and what it learnt about the devices.
type session struct {
	opts       Options
	target     deploy.Target
	deployment string
	client     paho.Client

	// mu protects the fields below.
	mu       sync.Mutex
	devices  map[string]string       // target device -> its last status ("online", "offline")
	versions map[string]string       // target device -> the version of opts.Model its status gives
	states   map[string]deploy.State // device -> its state for this deployment
	changed  chan struct{}           // a token when devices or states changed (capacity 1)
	// wave, in a staged rollout, is what wait waits for: the devices of the current
	// wave. nil means every target device.
	wave map[string]bool
	// late, in a staged rollout's last wave (published on the group topics), lets a
	// device that was not planned in it join the wave when it reports this deployment
	// (back from offline, or new to the group), unless it is in done.
	late bool
	done map[string]bool // devices that reached a final phase in an earlier wave

	// lost receives a token when the connection broke, reconnected when it was made
	// again (capacity 1 each).
	lost, reconnected chan struct{}
}

func newSession(opts Options, target deploy.Target, deployment string) *session {
	s := &session{
		opts: opts, target: target, deployment: deployment,
		devices: map[string]string{}, versions: map[string]string{}, states: map[string]deploy.State{}, changed: make(chan struct{}, 1),
		lost: make(chan struct{}, 1), reconnected: make(chan struct{}, 1),
	}
	if target.Device != "" {
		s.devices[target.Device] = ""
	}
	return s
}

func (s *session) notify() {
	select {
	case s.changed <- struct{}{}:
	default: // a token is already waiting
	}
}

// subscriptions are the session's topic filters and their handlers; they are
// subscribed on every (re)connect.
func (s *session) subscriptions() []mqttdial.Subscription {
	p := s.opts.TopicPrefix
	if s.target.Group != "" {
		return []mqttdial.Subscription{{Filter: p + "/+/status", Handler: s.onStatus}, {Filter: p + "/+/models/state", Handler: s.onState}}
	}
	return []mqttdial.Subscription{
		{Filter: deploy.StateTopic(p, s.target.Device), Handler: s.onState},
		{Filter: deploy.StatusTopic(p, s.target.Device), Handler: s.onStatus},
	}
}

// connect makes a new connection and subscribes, waiting for the broker's SUBACKs
// (so the retained messages are on their way before discover's barrier).
//
// Reconnecting is done here, not by paho's AutoReconnect: paho's resume of in-flight
// messages after its own reconnect races with its writer (eclipse-paho/paho.mqtt.golang
// issue 703), and a fresh client loses nothing here since every publish is retried
// until acknowledged.
func (s *session) connect(ctx context.Context) error {
	b := s.opts.Broker
	o := b.ClientOptions().SetCleanSession(true).SetAutoReconnect(false).
		SetConnectionLostHandler(func(paho.Client, error) {
			select {
			case s.lost <- struct{}{}:
			default: // one is already waiting
			}
		})
	c, err := mqttdial.Connect(ctx, b, o, s.subscriptions()...)
	if err != nil {
		return err
	}
	s.client = c
	return nil
}

// reconnect replaces a broken connection, retrying with backoff until ctx ends, and
// leaves a token in s.reconnected: the broker may have restarted without keeping its
// retained messages, so Push publishes them again.
func (s *session) reconnect(ctx context.Context) error {
	if s.client.IsConnectionOpen() {
		return nil
	}
	s.client.Disconnect(0)
	for failures := 0; ; failures++ {
		err := s.connect(ctx)
		if err == nil {
			select {
			case s.reconnected <- struct{}{}:
			default:
			}
			return nil
		}
		t := time.NewTimer(backoff.Delay(100*time.Millisecond, 5*time.Second, failures))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("broker unreachable (%v): %w", err, ctx.Err())
		case <-t.C:
		}
	}
}

// discover waits until the subscriptions made on connect have delivered their
// retained messages, so a group's devices are known before anything is published.
func (s *session) discover(ctx context.Context) error {
	barrier := s.opts.TopicPrefix + "/push/" + s.opts.Broker.ClientID + "/barrier"
	if err := mqttbarrier.Wait(ctx, s.client, barrier, barrierWait); err != nil {
		return err
	}
	if s.target.Group != "" {
		s.mu.Lock()
		n := len(s.devices)
		s.mu.Unlock()
		if n == 0 {
			return fmt.Errorf("no device of group %s: no retained %s/+/status has \"group\": %q (is the group set in the devices' device.group, and have they connected?)",
				s.target.Group, s.opts.TopicPrefix, s.target.Group)
		}
	}
	return nil
}

// onStatus learns a group's devices from their retained status, and whether a
// target device is offline.
func (s *session) onStatus(_ paho.Client, msg paho.Message) {
	var st struct {
		State  string `json:"state"`
		Group  string `json:"group"`
		Models []struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		} `json:"models"`
	}
	device := levelAfterPrefix(s.opts.TopicPrefix, msg.Topic())
	if device == "" || len(msg.Payload()) == 0 || json.Unmarshal(msg.Payload(), &st) != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, known := s.devices[device]
	// A device stays known once it was, whatever its group says later.
	if known || (s.target.Group != "" && st.Group == s.target.Group) {
		s.devices[device] = st.State
		for _, m := range st.Models {
			if m.Name == s.opts.Model {
				s.versions[device] = m.Version
			}
		}
		s.notify()
	}
}

// onState keeps each device's state for this deployment.
func (s *session) onState(_ paho.Client, msg paho.Message) {
	var st deploy.State
	device := levelAfterPrefix(s.opts.TopicPrefix, msg.Topic())
	if device == "" || json.Unmarshal(msg.Payload(), &st) != nil || st.Deployment != s.deployment {
		return // another deployment's state, or not a state at all
	}
	s.mu.Lock()
	_, target := s.devices[device]
	if s.late && !s.wave[device] && !s.done[device] {
		// The deployment id is this push's: whoever reports it took part.
		s.wave[device] = true
		target = true
	}
	s.mu.Unlock()
	// Called before the state is recorded, so Push cannot return while a call for
	// the final phase is still running.
	if target && s.opts.OnState != nil {
		s.opts.OnState(device, st)
	}
	s.mu.Lock()
	s.states[device] = st
	s.notify()
	s.mu.Unlock()
}

// levelAfterPrefix is the <device> of <prefix>/<device>/...
func levelAfterPrefix(prefix, topic string) string {
	rest, ok := strings.CutPrefix(topic, prefix+"/")
	if !ok {
		return ""
	}
	device, _, _ := strings.Cut(rest, "/")
	return device
}

// publish publishes one retained QoS 1 message and waits for the broker's PUBACK,
// reconnecting and publishing again when the connection broke before it (retained
// messages make a repeat harmless).
func (s *session) publish(ctx context.Context, topic string, payload []byte) error {
	for {
		err := mqttdial.Wait(ctx, s.client.Publish(topic, 1, true, payload), opTimeout)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("publish %s: %w", topic, ctx.Err())
		}
		if err := s.reconnect(ctx); err != nil {
			return fmt.Errorf("publish %s: %w", topic, err)
		}
	}
}

// publishChunks publishes the archive's chunks, up to window of them unacknowledged.
func (s *session) publishChunks(ctx context.Context, archive *os.File, m *deploy.Manifest, topics []string, progress func(sent, total int64)) error {
	type pending struct {
		i    int
		data []byte
		tok  paho.Token
	}
	var inflight []pending
	var sent int64
	settle := func(p pending) error {
		if err := mqttdial.Wait(ctx, p.tok, opTimeout); err != nil {
			// The connection broke: publish it again, waiting for its acknowledgement.
			if err := s.publish(ctx, topics[p.i], p.data); err != nil {
				return fmt.Errorf("publish chunk %d: %w", p.i, err)
			}
		}
		sent += int64(len(p.data))
		if progress != nil {
			progress(sent, m.Size)
		}
		return nil
	}
	for i := range topics {
		data := make([]byte, m.ChunkLen(i))
		if _, err := archive.ReadAt(data, int64(i)*int64(m.Transfer.ChunkSize)); err != nil {
			return fmt.Errorf("read chunk %d: %w", i, err)
		}
		if len(inflight) == window {
			if err := settle(inflight[0]); err != nil {
				return err
			}
			inflight = inflight[1:]
		}
		inflight = append(inflight, pending{i, data, s.client.Publish(topics[i], 1, true, data)})
	}
	for _, p := range inflight {
		if err := settle(p); err != nil {
			return err
		}
	}
	return nil
}

// waiting are the devices wait waits for (the caller holds s.mu).
func (s *session) waiting() []string {
	var out []string
	if s.wave != nil {
		for device := range s.wave {
			out = append(out, device)
		}
		return out
	}
	for device := range s.devices {
		out = append(out, device)
	}
	return out
}

// wait waits until every device waited for (waiting) reported a final phase for
// this deployment, the timeout passed or ctx ended, and returns their rows, sorted by
// device. After a reconnect it calls republish: a broker that restarted may have lost
// the retained messages that devices still need to resume their transfers.
func (s *session) wait(ctx context.Context, republish func(context.Context) error) []DeviceResult {
	timeout := time.NewTimer(s.opts.Timeout)
	defer timeout.Stop()
	// Publishing again waits for the broker, but no longer than the wait itself.
	rctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	why := ""
	for why == "" {
		if s.allFinal() {
			break
		}
		select {
		case <-s.changed:
		case <-s.lost:
			// States are retained: subscribing again on the new connection brings
			// the latest of each device.
			if err := s.reconnect(rctx); err != nil && ctx.Err() == nil && rctx.Err() == nil {
				why = "reconnecting failed: " + err.Error()
			}
		case <-s.reconnected:
			if err := republish(rctx); err != nil {
				switch {
				case ctx.Err() != nil: // the next round says so
				case rctx.Err() != nil:
					why = fmt.Sprintf("no final phase within %v (the broker went away)", s.opts.Timeout)
				default:
					why = "publishing again after a reconnect failed: " + err.Error()
				}
			}
		case <-timeout.C:
			why = fmt.Sprintf("no final phase within %v", s.opts.Timeout)
		case <-ctx.Done():
			why = "push interrupted: " + ctx.Err().Error()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var rows []DeviceResult
	for _, device := range s.waiting() {
		status := s.devices[device]
		st, ok := s.states[device]
		r := DeviceResult{Device: device, Phase: st.Phase, Version: st.Version, Reason: st.Error}
		switch {
		case !ok:
			r.Reason = why
			if status == "offline" {
				r.Reason += " (the device is offline)"
			}
		case !st.Phase.Final():
			r.Reason = fmt.Sprintf("%s (still %s", why, st.Phase)
			if st.Phase == deploy.PhaseDownloading {
				r.Reason += fmt.Sprintf(" at %.0f%%", 100*st.Progress)
			}
			r.Reason += ")"
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b DeviceResult) int { return strings.Compare(a.Device, b.Device) })
	return rows
}

func (s *session) allFinal() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	devices := s.waiting()
	if len(devices) == 0 {
		return false
	}
	for _, device := range devices {
		if !s.states[device].Phase.Final() {
			return false
		}
	}
	return true
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
