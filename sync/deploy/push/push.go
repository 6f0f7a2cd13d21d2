// Package push is the operator's side of remote model push (`vigil model push`): it
// publishes a signed bundle's chunks and its deployment manifest, retained at QoS 1,
// to one device or a group, waits for each device's final phase on its retained
// models/state, and clears the retained messages again. See package deploy for the
// protocol. Only cmd/vigil imports it.
package push

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
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
	"github.com/vigil-edge/vigil/sync/deploy"
)

// Options configure one push.
type Options struct {
	Broker   string // tcp://, ssl://, ws://, wss://
	Username string
	Password string
	TLS      *tls.Config // for ssl:// and wss://; nil means the system's roots
	ClientID string      // default: vigil-push-<random>

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
}

// Result is the outcome of a push.
type Result struct {
	Deployment string
	// Success is the phase every device must reach: active, or rolled_back for a
	// rollback.
	Success deploy.Phase
	Devices []DeviceResult // sorted by device
}

// DeviceResult is one device's row in the table.
type DeviceResult struct {
	Device  string
	Phase   deploy.Phase // "" when the device never answered
	Version string
	Reason  string
}

// OK reports whether every device reached the success phase.
func (r *Result) OK() bool {
	if len(r.Devices) == 0 {
		return false
	}
	for _, d := range r.Devices {
		if d.Phase != r.Success {
			return false
		}
	}
	return true
}

// WriteTable prints the result as a table: device, phase, version, reason.
func (r *Result) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tPHASE\tVERSION\tREASON")
	for _, d := range r.Devices {
		phase := string(d.Phase)
		if phase == "" {
			phase = "no answer"
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

// TLSConfig builds the client TLS settings from PEM files: caFile ("" for the system's
// roots) and an optional client certificate and key.
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s: no PEM certificate in it", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("--cert-file and --key-file go together")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("--cert-file/--key-file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
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
func Push(ctx context.Context, bundleDir string, opts Options) (*Result, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	target := deploy.Target{Device: opts.Device, Group: opts.Group}
	m := &deploy.Manifest{Deployment: opts.Deployment, Model: opts.Model, Issued: opts.Now().UTC()}
	res := &Result{Deployment: m.Deployment}
	var archive *os.File
	switch {
	case opts.Rollback:
		m.Action, res.Success = deploy.ActionRollback, deploy.PhaseRolledBack
	case opts.Promote:
		m.Action, res.Success = deploy.ActionPromote, deploy.PhaseActive
	case opts.DiscardShadow:
		m.Action, res.Success = deploy.ActionDiscard, deploy.PhaseDiscarded
	default:
		var err error
		archive, err = prepare(ctx, bundleDir, m, opts)
		if err != nil {
			return nil, err
		}
		defer func() { archive.Close(); os.Remove(archive.Name()) }()
		res.Success = deploy.PhaseActive
		if opts.Shadow {
			res.Success = deploy.PhaseShadowing
		}
	}
	// What devices will parse must parse (their size limit aside).
	if err := m.Validate(deploy.Limits{MaxBytes: 1 << 62}); err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	payload, err := m.Marshal()
	if err != nil {
		return nil, err
	}

	s := newSession(opts, target, m.Deployment)
	if err := s.connect(); err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	defer func() { s.client.Disconnect(250) }()
	if err := s.discover(ctx); err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}

	// From here on retained messages may be on the broker: clear them whatever happens.
	var published []string
	cleanup := func() error {
		cctx, cancel := context.WithTimeout(context.Background(), cleanupBudget)
		defer cancel()
		var errs []error
		// The manifest first, so no device starts on a deployment whose chunks go away.
		for _, topic := range published {
			if err := s.publish(cctx, topic, nil); err != nil {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("clear the retained deployment messages: %w", err)
		}
		return nil
	}
	deployTopic := target.DeployTopic(opts.TopicPrefix)
	var chunkTopics []string
	if archive != nil && m.Transfer.Via == deploy.ViaChunks {
		chunkTopics = make([]string, m.Transfer.Chunks)
		for i := range chunkTopics {
			chunkTopics[i] = target.ChunkTopic(opts.TopicPrefix, m.Deployment, i)
		}
	}
	published = append([]string{deployTopic}, chunkTopics...)
	// publishAll publishes the chunks, then the manifest, so a device never sees a
	// manifest whose chunks are not all on the broker yet.
	publishAll := func(ctx context.Context, progress func(sent, total int64)) error {
		if len(chunkTopics) > 0 {
			if err := s.publishChunks(ctx, archive, m, chunkTopics, progress); err != nil {
				return err
			}
		}
		if err := s.publish(ctx, deployTopic, payload); err != nil {
			return fmt.Errorf("publish the manifest: %w", err)
		}
		return nil
	}
	if err := publishAll(ctx, opts.Progress); err != nil {
		return nil, errors.Join(fmt.Errorf("push: %w", err), cleanup())
	}

	s.wait(ctx, res, func(ctx context.Context) error { return publishAll(ctx, nil) })
	return res, cleanup()
}

func (o *Options) defaults() error {
	if (o.Device == "") == (o.Group == "") {
		return errors.New("push: give exactly one of a device and a group")
	}
	if n := countTrue(o.Rollback, o.Shadow, o.Promote, o.DiscardShadow); n > 1 {
		return errors.New("push: rollback, shadow, promote and discard go one at a time")
	}
	if o.Broker == "" {
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
	if !deploy.ValidDeploymentID(o.Deployment) {
		return fmt.Errorf("push: %q is not a deployment id", o.Deployment)
	}
	if o.ClientID == "" {
		o.ClientID = "vigil-push-" + randomHex(6)
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
	mu      sync.Mutex
	devices map[string]string       // target device -> its last status ("online", "offline")
	states  map[string]deploy.State // device -> its state for this deployment
	changed chan struct{}           // a token when devices or states changed (capacity 1)

	// lost receives a token when the connection broke, reconnected when it was made
	// again (capacity 1 each).
	lost, reconnected chan struct{}
}

func newSession(opts Options, target deploy.Target, deployment string) *session {
	s := &session{
		opts: opts, target: target, deployment: deployment,
		devices: map[string]string{}, states: map[string]deploy.State{}, changed: make(chan struct{}, 1),
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
func (s *session) subscriptions() map[string]paho.MessageHandler {
	p := s.opts.TopicPrefix
	subs := map[string]paho.MessageHandler{}
	if s.target.Group != "" {
		subs[p+"/+/status"] = s.onStatus
		subs[p+"/+/models/state"] = s.onState
	} else {
		subs[deploy.StateTopic(p, s.target.Device)] = s.onState
		subs[deploy.StatusTopic(p, s.target.Device)] = s.onStatus
	}
	return subs
}

// connect makes a new connection and subscribes, waiting for the broker's SUBACKs
// (so the retained messages are on their way before discover's barrier).
//
// Reconnecting is done here, not by paho's AutoReconnect: paho's resume of in-flight
// messages after its own reconnect races with its writer (eclipse-paho/paho.mqtt.golang
// issue 703), and a fresh client loses nothing here since every publish is retried
// until acknowledged.
func (s *session) connect() error {
	o := paho.NewClientOptions().AddBroker(s.opts.Broker).SetClientID(s.opts.ClientID).
		SetUsername(s.opts.Username).SetPassword(s.opts.Password).
		SetCleanSession(true).SetConnectTimeout(opTimeout).SetKeepAlive(30 * time.Second).
		SetAutoReconnect(false).
		SetConnectionLostHandler(func(paho.Client, error) {
			select {
			case s.lost <- struct{}{}:
			default: // one is already waiting
			}
		})
	if s.opts.TLS != nil {
		o.SetTLSConfig(s.opts.TLS)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(opTimeout) {
		return fmt.Errorf("connect to %s: no answer in %v", redact(s.opts.Broker), opTimeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("connect to %s: %w", redact(s.opts.Broker), err)
	}
	for filter, h := range s.subscriptions() {
		tok := c.Subscribe(filter, 1, h)
		var err error
		if !tok.WaitTimeout(opTimeout) {
			err = fmt.Errorf("no answer in %v", opTimeout)
		} else {
			err = tok.Error()
		}
		if err != nil {
			c.Disconnect(0)
			return fmt.Errorf("subscribe %s on %s: %w", filter, redact(s.opts.Broker), err)
		}
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
		err := s.connect()
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

func redact(broker string) string {
	if i := strings.Index(broker, "@"); i >= 0 {
		if j := strings.Index(broker, "://"); j >= 0 && j < i {
			return broker[:j+3] + "xxxxx" + broker[i:]
		}
	}
	return broker
}

// discover waits until the subscriptions made on connect have delivered their
// retained messages, so a group's devices are known before anything is published.
func (s *session) discover(ctx context.Context) error {
	// A barrier: subscribed after the others, a message to our own topic comes back
	// after the retained messages of the earlier subscriptions (a broker answers one
	// client's packets in order).
	barrier := s.opts.TopicPrefix + "/push/" + s.opts.ClientID + "/barrier"
	back := make(chan struct{}, 1)
	tok := s.client.Subscribe(barrier, 1, func(paho.Client, paho.Message) {
		select {
		case back <- struct{}{}:
		default:
		}
	})
	if err := waitToken(ctx, tok); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if err := waitToken(ctx, s.client.Publish(barrier, 1, false, []byte("sync"))); err != nil {
		return fmt.Errorf("publish to %s: %w", barrier, err)
	}
	// A broker whose ACLs keep us from that topic never echoes it; by then the
	// retained messages have long arrived, so go on without the barrier.
	t := time.NewTimer(barrierWait)
	defer t.Stop()
	select {
	case <-back:
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.client.Unsubscribe(barrier)
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
		State string `json:"state"`
		Group string `json:"group"`
	}
	device := levelAfterPrefix(s.opts.TopicPrefix, msg.Topic())
	if device == "" || len(msg.Payload()) == 0 || json.Unmarshal(msg.Payload(), &st) != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, known := s.devices[device]
	// The offline will carries no group: a device stays known once it was.
	if known || (s.target.Group != "" && st.Group == s.target.Group) {
		s.devices[device] = st.State
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
		err := waitToken(ctx, s.client.Publish(topic, 1, true, payload))
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

// waitToken waits for a paho token, at most opTimeout.
func waitToken(ctx context.Context, tok paho.Token) error {
	t := time.NewTimer(opTimeout)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-t.C:
		return fmt.Errorf("no answer from the broker in %v", opTimeout)
	case <-ctx.Done():
		return ctx.Err()
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
		if err := waitToken(ctx, p.tok); err != nil {
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

// wait waits until every target device reported a final phase for this deployment,
// the timeout passed or ctx ended, and fills in res.Devices. After a reconnect it
// calls republish: a broker that restarted may have lost the retained messages that
// devices still need to resume their transfers.
func (s *session) wait(ctx context.Context, res *Result, republish func(context.Context) error) {
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
	for device, status := range s.devices {
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
		res.Devices = append(res.Devices, r)
	}
	slices.SortFunc(res.Devices, func(a, b DeviceResult) int { return strings.Compare(a.Device, b.Device) })
}

func (s *session) allFinal() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.devices) == 0 {
		return false
	}
	for device := range s.devices {
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
