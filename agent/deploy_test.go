package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/internal/mqttdial"
	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/deploy"
	"github.com/vigil-edge/vigil/sync/deploy/push"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// testBundle copies the bundled model into a new directory as version, with edit
// applied to its model.yaml, and signs it with priv.
func testBundle(t testing.TB, version string, priv ed25519.PrivateKey, edit func(yaml string) string) string {
	t.Helper()
	src := filepath.Join("..", "assets", "models", "yolox-nano")
	dir := filepath.Join(t.TempDir(), "bundle")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"model.onnx", "model.yaml", "LICENSE", "NOTICE"} {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		if name == "model.yaml" {
			s := strings.Replace(string(b), "version: 0.1.1", "version: "+version, 1)
			if edit != nil {
				s = edit(s)
			}
			b = []byte(s)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := deploy.SignBundle(dir, priv); err != nil {
		t.Fatal(err)
	}
	return dir
}

// goldenBundle is testBundle with golden/dog.jpg, expecting label at the dog's place.
func goldenBundle(t testing.TB, version string, priv ed25519.PrivateKey, label string) string {
	dir := testBundle(t, version, priv, nil)
	img, err := os.ReadFile(filepath.Join("..", "infer", "detector", "testdata", "dog.jpg"))
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "golden"), 0o755)
	os.WriteFile(filepath.Join(dir, "golden", "dog.jpg"), img, 0o644)
	spec := fmt.Sprintf(`{"detections": [{"label": %q, "box": [132.8, 206.6, 325.7, 543.1], "min_score": 0.5}]}`, label)
	os.WriteFile(filepath.Join(dir, "golden", "dog.json"), []byte(spec), 0o644)
	if _, err := deploy.SignBundle(dir, priv); err != nil {
		t.Fatal(err)
	}
	return dir
}

// evalBundle is goldenBundle whose model.yaml asks for a minimum recall on it.
func evalBundle(t testing.TB, version string, priv ed25519.PrivateKey, label string, minRecall float64) string {
	dir := goldenBundle(t, version, priv, label)
	y := filepath.Join(dir, "model.yaml")
	b, _ := os.ReadFile(y)
	os.WriteFile(y, append(b, []byte(fmt.Sprintf("eval: {min_recall: %v}\n", minRecall))...), 0o644)
	if _, err := deploy.SignBundle(dir, priv); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pusher plays the operator's side on a real broker: chunks then the manifest, retained.
type pusher struct {
	t      testing.TB
	client paho.Client
}

func newPusher(t testing.TB, url string) *pusher {
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("operator-%d", time.Now().UnixNano())))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("operator connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return &pusher{t: t, client: c}
}

func (p *pusher) publish(topic string, payload []byte) {
	p.t.Helper()
	if tok := p.client.Publish(topic, 1, true, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		p.t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// manifest packs and describes dir for target as deployment id, in chunks of 512 KiB.
func (p *pusher) manifest(dir, id string) (*deploy.Manifest, []byte) {
	p.t.Helper()
	var archive bytes.Buffer
	size, sha, err := deploy.Pack(dir, &archive)
	if err != nil {
		p.t.Fatal(err)
	}
	sig, err := deploy.ReadSignature(dir)
	if err != nil {
		p.t.Fatal(err)
	}
	const chunk = 512 << 10
	m := &deploy.Manifest{
		Deployment: id, Action: deploy.ActionDeploy, Model: "default", Issued: time.Now().UTC(),
		Bundle: &deploy.BundleRef{Name: "yolox-nano", Version: versionOf(p.t, dir)},
		Size:   size, SHA256: sha, Key: sig.Key, Signature: sig.Signature,
		Transfer: &deploy.TransferSpec{Via: deploy.ViaChunks, Chunks: int((size + chunk - 1) / chunk), ChunkSize: chunk},
	}
	return m, archive.Bytes()
}

func versionOf(t testing.TB, dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "model.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "version: "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatal("no version in model.yaml")
	return ""
}

// chunks publishes chunks [from, to) of archive; then manifest publishes the manifest.
func (p *pusher) chunks(target deploy.Target, m *deploy.Manifest, archive []byte, from, to int) {
	p.t.Helper()
	for i := from; i < to; i++ {
		end := min((i+1)*m.Transfer.ChunkSize, len(archive))
		p.publish(target.ChunkTopic("vigil", m.Deployment, i), archive[i*m.Transfer.ChunkSize:end])
	}
}

func (p *pusher) send(target deploy.Target, m *deploy.Manifest) {
	p.t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		p.t.Fatal(err)
	}
	p.publish(target.DeployTopic("vigil"), b)
}

// deployConfig is testConfig with MQTT on the broker and pub trusted.
func deployConfig(t *testing.T, state, url string, pub ed25519.PublicKey) *config.Config {
	cfg := testConfig(t, state, fmt.Sprintf("  enabled: true\n  brokers: [%q]\n  backoff: {min: 50ms, max: 500ms}\n", url))
	cfg.Trust.Keys = []string{deploy.PublicKeyString(pub)}
	cfg.Deploy.Watch = 0
	return cfg
}

// waitPhase waits until the agent reports a final phase for the deployment.
func waitPhase(t *testing.T, r *running, id string) deploy.State {
	t.Helper()
	var st *deploy.State
	testkit.WaitFor(t, 60*time.Second, "deployment "+id+" to end", func() bool {
		st = r.agent.parts().deployer.LastState()
		return st != nil && st.Deployment == id && st.Phase.Final()
	})
	return *st
}

func runningVersion(r *running) string {
	return r.agent.parts().models["default"].detector().Manifest().Version
}

// A signed bundle pushed in chunks goes live while the camera keeps being detected;
// the retained state says active; the status page shows the new version and the
// deployment; the previous bundle stays for a rollback, which a rollback manifest does.
func TestDeployGoesLiveAndRollsBack(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	pub, priv, _ := deploy.GenerateKey()
	state := t.TempDir()
	r := start(t, deployConfig(t, state, b.URL, pub))
	testkit.WaitFor(t, 30*time.Second, "detections", func() bool { return r.agent.parts().cameras[0].stats.status().Frames > 5 })

	p := newPusher(t, b.URL)
	target := deploy.Target{Device: "test-01"}
	m, archive := p.manifest(evalBundle(t, "0.2.0", priv, "dog", 1), "d-live-1")
	// Out of order, with a duplicate: the transfer sorts it out.
	for i := m.Transfer.Chunks - 1; i >= 0; i-- {
		p.chunks(target, m, archive, i, i+1)
	}
	p.chunks(target, m, archive, 0, 1)
	before := r.agent.parts().cameras[0].stats.status().Frames
	p.send(target, m)
	st := waitPhase(t, r, "d-live-1")
	if st.Phase != deploy.PhaseActive || st.Version != "0.2.0" || st.Progress != 1 {
		t.Fatalf("final state %+v", st)
	}
	if v := runningVersion(r); v != "0.2.0" {
		t.Errorf("running version %s", v)
	}
	testkit.WaitFor(t, 10*time.Second, "detections on the new model", func() bool {
		return r.agent.parts().cameras[0].stats.status().Frames > before+5
	})
	status := r.status(t)
	if ms := status.Models[0]; ms.Version != "0.2.0" || ms.Deployment != "d-live-1" || status.Deployment == nil || status.Deployment.Phase != deploy.PhaseActive {
		t.Errorf("status: %+v %+v", ms, status.Deployment)
	}
	state1 := b.Subscribe(t, "cloud", "vigil/test-01/models/state")
	testkit.WaitFor(t, 10*time.Second, "the retained state", func() bool {
		msgs := state1.Messages()
		return len(msgs) > 0 && strings.Contains(string(msgs[len(msgs)-1].Payload), `"phase":"active"`)
	})

	// The same manifest again (a reconnect redelivers it), and one issued before it under
	// a new id (a replay), change nothing: the rollback sent after them is the next
	// thing the device does.
	p.send(target, m)
	old := *m
	old.Deployment, old.Issued = "d-replayed", m.Issued.Add(-time.Hour)
	p.send(target, &old)
	rb := &deploy.Manifest{Deployment: "d-back-1", Action: deploy.ActionRollback, Model: "default", Issued: time.Now().UTC()}
	p.send(target, rb)
	if st := waitPhase(t, r, "d-back-1"); st.Phase != deploy.PhaseRolledBack || st.Error != "" || st.Version != "0.1.1" {
		t.Fatalf("rollback: %+v", st)
	}
	if v := runningVersion(r); v != "0.1.1" {
		t.Errorf("after the rollback: running %s", v)
	}
	history, _ := r.agent.store.State("default")
	for _, h := range history.History {
		if h.Deployment == "d-replayed" {
			t.Errorf("a replayed deployment was acted on: %+v", h)
		}
	}
	for _, e := range r.status(t).Events {
		if e.Kind == "deployment" && strings.Contains(string(e.Body), "d-replayed") {
			t.Errorf("a replayed deployment was reported: %s", e.Body)
		}
	}
}

// What must be refused is refused with the reason, and the running model keeps running.
func TestDeployRejections(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	pub, priv, _ := deploy.GenerateKey()
	_, stranger, _ := deploy.GenerateKey()
	r := start(t, deployConfig(t, t.TempDir(), b.URL, pub))
	p := newPusher(t, b.URL)
	target := deploy.Target{Device: "test-01"}

	for _, tc := range []struct {
		name   string
		bundle func() string
		mangle func(m *deploy.Manifest, archive []byte)
		phase  deploy.Phase
		reason string
	}{
		{"untrusted key", func() string { return testBundle(t, "0.3.0", stranger, nil) }, nil, deploy.PhaseRejected, "trust"},
		{"bad signature", func() string { return testBundle(t, "0.3.1", priv, nil) },
			func(m *deploy.Manifest, _ []byte) {
				m.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(priv, []byte("another message")))
			},
			deploy.PhaseRejected, "signature"},
		{"corrupted chunk", func() string { return testBundle(t, "0.3.2", priv, nil) },
			func(_ *deploy.Manifest, archive []byte) { archive[len(archive)/2] ^= 0xff }, deploy.PhaseRejected, "match"},
		{"wrong sha256", func() string { return testBundle(t, "0.3.3", priv, nil) },
			// The signature is over the SHA-256: another digest is caught as a bad signature.
			func(m *deploy.Manifest, _ []byte) { m.SHA256 = strings.Repeat("ab", 32) }, deploy.PhaseRejected, "bad signature"},
		{"bundle that does not fit its model", func() string {
			return testBundle(t, "0.3.4", priv, func(y string) string { return strings.Replace(y, "width: 416", "width: 320", 1) })
		}, nil, deploy.PhaseRejected, "input.width"},
		{"model that misses its golden image", func() string { return goldenBundle(t, "0.3.6", priv, "horse") }, nil, deploy.PhaseRolledBack, "golden image dog: no horse"},
		{"model under its bundle eval minimum", func() string { return evalBundle(t, "0.3.7", priv, "horse", 0.5) }, nil, deploy.PhaseRolledBack, "recall 0.000 is under the bundle's minimum 0.500"},
	} {
		id := "d-" + strings.ReplaceAll(tc.name, " ", "-")
		m, archive := p.manifest(tc.bundle(), id)
		if tc.mangle != nil {
			tc.mangle(m, archive)
		}
		p.chunks(target, m, archive, 0, m.Transfer.Chunks)
		p.send(target, m)
		st := waitPhase(t, r, id)
		if st.Phase != tc.phase || !strings.Contains(st.Error, tc.reason) {
			t.Errorf("%s: %s %q, want %s with %q", tc.name, st.Phase, st.Error, tc.phase, tc.reason)
		}
		if v := runningVersion(r); v != "0.1.1" {
			t.Fatalf("%s: the running model changed to %s", tc.name, v)
		}
	}
	// A manifest that does not parse is rejected by name.
	p.publish(target.DeployTopic("vigil"), []byte(`{"deployment":"d-junk","action":"deploy","model":"default"}`))
	testkit.WaitFor(t, 10*time.Second, "the junk manifest's rejection", func() bool {
		st := r.agent.parts().deployer.LastState()
		return st != nil && st.Deployment == "d-junk" && st.Phase == deploy.PhaseRejected
	})
	testkit.WaitFor(t, 10*time.Second, "detection to go on", func() bool { return r.agent.parts().cameras[0].stats.status().Frames > 0 })
}

// A model slower than deploy.warmup_budget never goes live.
func TestDeployWarmupBudget(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	pub, priv, _ := deploy.GenerateKey()
	cfg := deployConfig(t, t.TempDir(), b.URL, pub)
	cfg.Deploy.WarmupBudget = time.Millisecond // no inference of this model is that fast here
	r := start(t, cfg)
	p := newPusher(t, b.URL)
	target := deploy.Target{Device: "test-01"}
	m, archive := p.manifest(testBundle(t, "0.3.5", priv, nil), "d-slow")
	p.chunks(target, m, archive, 0, m.Transfer.Chunks)
	p.send(target, m)
	st := waitPhase(t, r, "d-slow")
	if st.Phase != deploy.PhaseRolledBack || !strings.Contains(st.Error, "over deploy.warmup_budget 1ms") || runningVersion(r) != "0.1.1" {
		t.Fatalf("%+v, running %s", st, runningVersion(r))
	}
}

// A deployment that arrives while another is under way waits for it; one over
// deploy.max_bytes is refused before anything is downloaded.
func TestDeployQueueAndSizeLimit(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	pub, priv, _ := deploy.GenerateKey()
	cfg := deployConfig(t, t.TempDir(), b.URL, pub)
	r := start(t, cfg)
	p := newPusher(t, b.URL)
	target := deploy.Target{Device: "test-01"}

	first, a1 := p.manifest(testBundle(t, "0.7.0", priv, nil), "d-first")
	second, a2 := p.manifest(testBundle(t, "0.7.1", priv, nil), "d-second")
	second.Issued = first.Issued.Add(time.Second)
	p.chunks(target, first, a1, 0, 1)
	p.send(target, first)
	testkit.WaitFor(t, 30*time.Second, "the first deployment downloading", func() bool {
		st := r.agent.parts().deployer.LastState()
		return st != nil && st.Deployment == "d-first" && st.Phase == deploy.PhaseDownloading
	})
	p.chunks(target, second, a2, 0, second.Transfer.Chunks)
	p.send(target, second)
	testkit.WaitFor(t, 30*time.Second, "the second deployment queued", func() bool {
		st := r.agent.parts().deployer.LastState()
		return st != nil && st.Deployment == "d-second" && st.Phase == deploy.PhaseReceived && strings.Contains(st.Error, "queued behind deployment d-first")
	})
	p.chunks(target, first, a1, 1, first.Transfer.Chunks)
	if st := waitPhase(t, r, "d-second"); st.Phase != deploy.PhaseActive || runningVersion(r) != "0.7.1" {
		t.Fatalf("second: %+v, running %s", st, runningVersion(r))
	}

	r.stop()
	cfg.Deploy.MaxBytes = 1 << 20
	r = start(t, cfg)
	big, a3 := p.manifest(testBundle(t, "0.8.0", priv, nil), "d-big")
	big.Issued = time.Now().UTC()
	p.chunks(target, big, a3, 0, 1)
	p.send(target, big)
	testkit.WaitFor(t, 30*time.Second, "the oversized deployment's rejection", func() bool {
		st := r.agent.parts().deployer.LastState()
		return st != nil && st.Deployment == "d-big" && st.Phase == deploy.PhaseRejected && strings.Contains(st.Error, "size")
	})
}

// A transfer interrupted by a broker outage resumes when the link comes back (the
// broker keeps the retained chunks on disk), and one interrupted by an agent restart
// resumes from the chunks the agent kept.
func TestDeployResumesAfterOutageAndRestart(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Persistent: true})
	pub, priv, _ := deploy.GenerateKey()
	target := deploy.Target{Device: "test-01"}
	state := t.TempDir()

	r := start(t, deployConfig(t, state, b.URL, pub))
	p := newPusher(t, b.URL)
	m, archive := p.manifest(testBundle(t, "0.4.0", priv, nil), "d-outage")
	half := m.Transfer.Chunks / 2
	p.chunks(target, m, archive, 0, half)
	p.send(target, m)
	testkit.WaitFor(t, 30*time.Second, "half the chunks", func() bool {
		st := r.agent.parts().deployer.LastState()
		return st != nil && st.Deployment == "d-outage" && st.Progress > 0.3
	})
	b.StopGraceful()
	b.Restart()
	p = newPusher(t, b.URL)
	p.chunks(target, m, archive, half, m.Transfer.Chunks)
	if st := waitPhase(t, r, "d-outage"); st.Phase != deploy.PhaseActive {
		t.Fatalf("after the outage: %+v", st)
	}

	// Now an agent restart in the middle of the next transfer.
	m2, archive2 := p.manifest(testBundle(t, "0.5.0", priv, nil), "d-restart")
	p.chunks(target, m2, archive2, 0, 1)
	p.send(target, m2)
	testkit.WaitFor(t, 30*time.Second, "the first chunk", func() bool {
		st := r.agent.parts().deployer.LastState()
		return st != nil && st.Deployment == "d-restart" && st.Progress > 0
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	r = start(t, deployConfig(t, state, b.URL, pub))
	if v := runningVersion(r); v != "0.4.0" {
		t.Errorf("after the restart the deployed 0.4.0 should run, not %s", v)
	}
	p.chunks(target, m2, archive2, 1, m2.Transfer.Chunks)
	if st := waitPhase(t, r, "d-restart"); st.Phase != deploy.PhaseActive || st.Version != "0.5.0" {
		t.Fatalf("after the restart: %+v", st)
	}
}

// startGroup starts n agents <name>-0.. in group.
func startGroup(t *testing.T, url string, pub ed25519.PublicKey, name, group string, n int) []*running {
	var agents []*running
	for i := range n {
		cfg := deployConfig(t, t.TempDir(), url, pub)
		cfg.Device.ID, cfg.Device.Group = fmt.Sprintf("%s-%d", name, i), group
		agents = append(agents, start(t, cfg))
	}
	return agents
}

// A group push reaches every agent of the group.
func TestGroupDeploy(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	pub, priv, _ := deploy.GenerateKey()
	agents := startGroup(t, b.URL, pub, "cell", "line-3", 2)
	p := newPusher(t, b.URL)
	target := deploy.Target{Group: "line-3"}
	m, archive := p.manifest(testBundle(t, "0.6.0", priv, nil), "d-group")
	p.chunks(target, m, archive, 0, m.Transfer.Chunks)
	p.send(target, m)
	for i, r := range agents {
		if st := waitPhase(t, r, "d-group"); st.Phase != deploy.PhaseActive || runningVersion(r) != "0.6.0" {
			t.Errorf("agent %d: %+v", i, st)
		}
	}
}

// BenchmarkDeploySwap pushes the 3.6 MB bundle to an agent detecting the bundled clip in
// real time (detect_fps 10) and reports the time from the manifest to active, and the
// frames detected from the push until 2 s after it went live, against the same length
// of time just before the push (target: no drop).
func BenchmarkDeploySwap(b *testing.B) {
	for i := 0; b.Loop(); i++ {
		broker := brokertest.Start(b, brokertest.Options{})
		pub, priv, _ := deploy.GenerateKey()
		cfg := testConfig(b, b.TempDir(), fmt.Sprintf("  enabled: true\n  brokers: [%q]\n", broker.URL))
		cfg.Trust.Keys = []string{deploy.PublicKeyString(pub)}
		cfg.Log.Level = "warn"
		r := start(b, cfg)
		frames := func() uint64 { return r.agent.parts().cameras[0].stats.status().Frames }
		testkit.WaitFor(b, 30*time.Second, "detection at full rate", func() bool { return frames() > 30 })

		p := newPusher(b, broker.URL)
		m, archive := p.manifest(testBundle(b, "0.9.0", priv, nil), fmt.Sprintf("d-bench-%d", i))
		target := deploy.Target{Device: "test-01"}

		// The same interval without a push, measured first.
		start0, f0 := time.Now(), frames()
		pushStart := time.Now()
		p.chunks(target, m, archive, 0, m.Transfer.Chunks)
		p.send(target, m)
		var st *deploy.State
		testkit.WaitFor(b, 2*time.Minute, "active", func() bool {
			st = r.agent.parts().deployer.LastState()
			return st != nil && st.Deployment == m.Deployment && st.Phase.Final()
		})
		toActive := time.Since(pushStart)
		if st.Phase != deploy.PhaseActive {
			b.Fatalf("deployment %+v", st)
		}
		time.Sleep(2 * time.Second) // a fixed measuring window after the swap, not synchronisation
		window := time.Since(start0)
		during := frames() - f0
		r.stop()

		// Baseline: a fresh agent, no push, the same window.
		r2 := start(b, cfg)
		testkit.WaitFor(b, 30*time.Second, "detection at full rate", func() bool { return r2.agent.parts().cameras[0].stats.status().Frames > 30 })
		g0 := r2.agent.parts().cameras[0].stats.status().Frames
		time.Sleep(window)
		baseline := r2.agent.parts().cameras[0].stats.status().Frames - g0
		r2.stop()

		b.ReportMetric(toActive.Seconds(), "s-push-to-active")
		b.ReportMetric(float64(during), "frames-with-swap")
		b.ReportMetric(float64(baseline), "frames-without")
		b.ReportMetric(float64(during)/float64(baseline), "ratio")
	}
}

// The operator's tool (what `vigil model push` runs) against running agents: a device
// push and a group push go active, the table says so, and a rollback push rolls back.
func TestPushToolAgainstRunningAgents(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	pub, priv, _ := deploy.GenerateKey()
	agents := startGroup(t, b.URL, pub, "gate", "gates", 2)
	// Both announce themselves (retained status with their group) before the push.
	status := b.Subscribe(t, "cloud", "vigil/+/status")
	testkit.WaitFor(t, 30*time.Second, "both agents online", func() bool {
		online := map[string]bool{}
		for _, m := range status.Messages() {
			online[m.Topic] = strings.Contains(string(m.Payload), `"online"`)
		}
		return online["vigil/gate-0/status"] && online["vigil/gate-1/status"]
	})
	bundle := testBundle(t, "1.0.0", priv, nil)
	ctx := context.Background()
	res, err := push.Push(ctx, bundle, push.Options{Broker: mqttdial.Broker{URL: b.URL}, Device: "gate-0", Timeout: time.Minute})
	if err != nil || !res.OK() || runningVersion(agents[0]) != "1.0.0" || runningVersion(agents[1]) != "0.1.1" {
		t.Fatalf("device push: %v %+v", err, res)
	}
	group := testBundle(t, "1.1.0", priv, nil)
	res, err = push.Push(ctx, group, push.Options{Broker: mqttdial.Broker{URL: b.URL}, Group: "gates", Timeout: time.Minute})
	var table strings.Builder
	if res != nil {
		res.WriteTable(&table)
	}
	if err != nil || !res.OK() || len(res.Devices) != 2 || !strings.Contains(table.String(), "gate-1") {
		t.Fatalf("group push: %v\n%s", err, table.String())
	}
	for i, r := range agents {
		if v := runningVersion(r); v != "1.1.0" {
			t.Errorf("agent %d runs %s after the group push", i, v)
		}
	}
	res, err = push.Push(ctx, "", push.Options{Broker: mqttdial.Broker{URL: b.URL}, Device: "gate-0", Rollback: true, Timeout: time.Minute})
	if err != nil || !res.OK() || runningVersion(agents[0]) != "1.0.0" {
		t.Fatalf("rollback push: %v %+v, running %s", err, res, runningVersion(agents[0]))
	}
}

// After going live, a model that fails a detection, or turns out slower than
// deploy.max_slowdown times the previous one, is swapped back within deploy.watch.
func TestDeployWatchRollsBack(t *testing.T) {
	for _, tc := range []struct {
		name   string
		harm   func(s *runStats)
		reason string
	}{
		{"detection error", func(s *runStats) { s.record(0, fmt.Errorf("tensor went NaN")) }, "detection failed after the swap: tensor went NaN"},
		{"slowdown", func(s *runStats) {
			for range statsWindow {
				s.record(10*time.Second, nil)
			}
		}, "over deploy.max_slowdown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := brokertest.Start(t, brokertest.Options{})
			pub, priv, _ := deploy.GenerateKey()
			cfg := deployConfig(t, t.TempDir(), b.URL, pub)
			cfg.Deploy.Watch = 3 * time.Second
			r := start(t, cfg)
			testkit.WaitFor(t, 30*time.Second, "detections on the first model", func() bool {
				_, n := r.agent.parts().models["default"].running.Load().stats.p50()
				return n > 3
			})
			p := newPusher(t, b.URL)
			target := deploy.Target{Device: "test-01"}
			id := "d-watch-" + strings.ReplaceAll(tc.name, " ", "-")
			m, archive := p.manifest(testBundle(t, "2.0.0", priv, nil), id)
			p.chunks(target, m, archive, 0, m.Transfer.Chunks)
			p.send(target, m)
			if st := waitPhase(t, r, id); st.Phase != deploy.PhaseActive {
				t.Fatalf("%+v", st)
			}
			// What the live pipeline would record on a bad model, recorded on the new one.
			tc.harm(&r.agent.parts().models["default"].running.Load().stats)
			var st *deploy.State
			testkit.WaitFor(t, 30*time.Second, "the rollback", func() bool {
				st = r.agent.parts().deployer.LastState()
				return st != nil && st.Phase == deploy.PhaseRolledBack
			})
			if !strings.Contains(st.Error, tc.reason) || runningVersion(r) != "0.1.1" {
				t.Errorf("%+v, running %s", st, runningVersion(r))
			}
			if active, _ := r.agent.store.Active("default"); active != "" {
				t.Errorf("the store still names %s active", active)
			}
		})
	}
}

// With --via url a device fetches the archive over HTTP(S); a server that serves other
// bytes than the signed ones gets the deployment rejected.
func TestDeployViaURL(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	pub, priv, _ := deploy.GenerateKey()
	r := start(t, deployConfig(t, t.TempDir(), b.URL, pub))
	p := newPusher(t, b.URL)
	m, archive := p.manifest(testBundle(t, "3.0.0", priv, nil), "d-url")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/bad.tar" {
			w.Write(bytes.Repeat([]byte{0}, len(archive)))
			return
		}
		w.Write(archive)
	}))
	defer srv.Close()
	target := deploy.Target{Device: "test-01"}
	m.Transfer = &deploy.TransferSpec{Via: deploy.ViaURL, URL: srv.URL + "/good.tar"}
	p.send(target, m)
	if st := waitPhase(t, r, "d-url"); st.Phase != deploy.PhaseActive || runningVersion(r) != "3.0.0" {
		t.Fatalf("%+v", st)
	}
	m.Deployment, m.Issued = "d-url-bad", time.Now().UTC()
	m.Bundle.Version = "3.0.1"
	m.Transfer.URL = srv.URL + "/bad.tar"
	p.send(target, m)
	if st := waitPhase(t, r, "d-url-bad"); st.Phase != deploy.PhaseRejected || runningVersion(r) != "3.0.0" {
		t.Fatalf("%+v", st)
	}
}

// A transfer whose manifest the operator clears is withdrawn; one that stops receiving
// chunks is rejected as stalled after deploy.stall_timeout (one renewed subscription
// later); neither blocks the deployment after it.
func TestDeployWithdrawnAndStalled(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	pub, priv, _ := deploy.GenerateKey()
	cfg := deployConfig(t, t.TempDir(), b.URL, pub)
	cfg.Deploy.StallTimeout = time.Second
	r := start(t, cfg)
	p := newPusher(t, b.URL)
	device := deploy.Target{Device: "test-01"}

	m, archive := p.manifest(testBundle(t, "4.0.0", priv, nil), "d-withdrawn")
	p.chunks(device, m, archive, 0, 1)
	p.send(device, m)
	testkit.WaitFor(t, 30*time.Second, "the transfer under way", func() bool {
		st := r.agent.parts().deployer.LastState()
		return st != nil && st.Deployment == "d-withdrawn" && st.Progress > 0
	})
	p.publish(device.DeployTopic("vigil"), nil) // what `vigil model push` does when it gives up
	st := waitPhase(t, r, "d-withdrawn")
	if st.Phase != deploy.PhaseRejected || !strings.Contains(st.Error, "withdrawn") {
		t.Fatalf("withdrawn: %+v", st)
	}

	m2, archive2 := p.manifest(testBundle(t, "4.0.1", priv, nil), "d-stalled")
	p.chunks(device, m2, archive2, 0, 1)
	p.send(device, m2)
	st = waitPhase(t, r, "d-stalled")
	if st.Phase != deploy.PhaseRejected || !strings.Contains(st.Error, "stalled") {
		t.Fatalf("stalled: %+v", st)
	}

	m3, archive3 := p.manifest(testBundle(t, "4.0.2", priv, nil), "d-after")
	p.chunks(device, m3, archive3, 0, m3.Transfer.Chunks)
	p.send(device, m3)
	if st := waitPhase(t, r, "d-after"); st.Phase != deploy.PhaseActive {
		t.Fatalf("the deployment after them: %+v", st)
	}
}

// A url transfer withdrawn in the middle of its download is dropped, never installed.
func TestDeployURLWithdrawnMidDownload(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	pub, priv, _ := deploy.GenerateKey()
	r := start(t, deployConfig(t, t.TempDir(), b.URL, pub))
	p := newPusher(t, b.URL)
	m, archive := p.manifest(testBundle(t, "5.0.0", priv, nil), "d-url-withdrawn")
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Write(archive[:len(archive)/2])
		w.(http.Flusher).Flush()
		select { // the rest only after the withdrawal, or never
		case <-release:
			w.Write(archive[len(archive)/2:])
		case <-req.Context().Done():
		}
	}))
	defer srv.Close()
	target := deploy.Target{Device: "test-01"}
	m.Transfer = &deploy.TransferSpec{Via: deploy.ViaURL, URL: srv.URL + "/bundle.tar"}
	p.send(target, m)
	testkit.WaitFor(t, 30*time.Second, "the download under way", func() bool {
		st := r.agent.parts().deployer.LastState()
		return st != nil && st.Deployment == m.Deployment && st.Phase == deploy.PhaseDownloading
	})
	p.publish(target.DeployTopic("vigil"), nil)
	if st := waitPhase(t, r, m.Deployment); st.Phase != deploy.PhaseRejected || !strings.Contains(st.Error, "withdrawn") {
		t.Fatalf("%+v", st)
	}
	close(release)
	// The next deployment is processed after anything the withdrawn one could still do.
	m2, a2 := p.manifest(testBundle(t, "5.0.1", priv, nil), "d-next")
	p.chunks(target, m2, a2, 0, m2.Transfer.Chunks)
	p.send(target, m2)
	if st := waitPhase(t, r, "d-next"); st.Phase != deploy.PhaseActive || runningVersion(r) != "5.0.1" {
		t.Fatalf("%+v, running %s", st, runningVersion(r))
	}
	history, _ := r.agent.store.State("default")
	for _, h := range history.History {
		if h.Deployment == m.Deployment && h.Phase != deploy.PhaseRejected {
			t.Errorf("the withdrawn deployment went on to %s", h.Phase)
		}
	}
}
