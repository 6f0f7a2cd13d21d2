package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/capture/rtsptest"
	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/mqttlink"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
	"github.com/vigil-edge/vigil/sync/outbox"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var clip, _ = filepath.Abs(filepath.Join("..", "assets", "footage", "people.mp4"))

// testConfig writes a config for the bundled clip and model into a temp dir and loads it.
func testConfig(t testing.TB, stateDir, extra string) *config.Config {
	t.Helper()
	yaml := fmt.Sprintf(`
device: {id: test-01, state_dir: %q}
log: {level: debug}
http: {token: s3cret}
cameras:
  - {name: door, url: "file://%s", detect_fps: 10}
actuators:
  - {name: line-stop, driver: sim, safe: low}
rules:
  - name: stop-on-person
    camera: door
    labels: [person]
    min_score: 0.5
    cooldown: 1h
    action: {actuator: line-stop, pulse: 200ms}
outbox: {fsync: always}
mqtt:
  telemetry_interval: 1h
%s`, stateDir, clip, extra)
	return loadYAML(t, yaml)
}

// loadYAML writes a config file into a temp dir and loads it, as `vigil run` would.
func loadYAML(t testing.TB, yaml string) *config.Config {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vigil.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatalf("test config rejected:\n%v", err)
	}
	return cfg
}

type running struct {
	agent *Agent
	base  string
	stop  func() error
}

func start(t testing.TB, cfg *config.Config) *running {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	a, err := New(cfg, Options{Version: "test", Logger: logger, Listener: ln})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	r := &running{agent: a, base: "http://" + ln.Addr().String()}
	stopped := false
	r.stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatal("agent did not stop within 10s of cancellation")
			return nil
		}
	}
	t.Cleanup(func() { r.stop() })
	return r
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (r *running) get(t testing.TB, path string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(r.base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (r *running) status(t testing.TB) Status {
	t.Helper()
	code, b := r.get(t, "/api/status")
	if code != http.StatusOK {
		t.Fatalf("/api/status: %d %s", code, b)
	}
	var st Status
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("/api/status is not the Status shape: %v\n%s", err, b)
	}
	return st
}

// The walking skeleton end to end: the bundled clip through the real detector, a rule
// pulses the sim relay, the event lands in the outbox on disk, and the status API and
// metrics show it all.
func TestEndToEnd(t *testing.T) {
	mats := matCount()
	state := t.TempDir()
	r := start(t, testConfig(t, state, ""))

	var st Status
	testkit.WaitFor(t, 30*time.Second, "a detection event and the end of the relay pulse", func() bool {
		st = r.status(t)
		return eventOfKind(st.Events, "detection") != nil && len(st.Actuators) == 1 && st.Actuators[0].Transitions >= 2
	})

	// The contract shape of /api/status (DESIGN.md), with the figures of this run.
	if st.Device != "test-01" || st.Version != "test" || !st.Ready {
		t.Errorf("status header: %+v", st)
	}
	cam := st.Cameras[0]
	if cam.Name != "door" || cam.State != "streaming" || cam.Frames == 0 || cam.FPS <= 0 || cam.Detect.Frames == 0 || cam.Detect.InferenceP50 <= 0 {
		t.Errorf("camera status: %+v", cam)
	}
	if cam.Drift == nil {
		t.Error("no drift status for the camera (drift.enabled is on by default)")
	}
	if m := st.Models[0]; m.Model != "yolox-nano" || m.Backend != "onnxruntime" || m.State != "loaded" {
		t.Errorf("model status: %+v", m)
	}
	relay := st.Actuators[0]
	if relay.Name != "line-stop" || relay.Driver != "sim" || len(relay.History) < 3 ||
		relay.History[0].Level != "low" || relay.History[1].Level != "high" || relay.History[2].Level != "low" {
		t.Errorf("relay did not pulse from its safe level: %+v", relay)
	} else {
		hi, _ := time.Parse(time.RFC3339Nano, relay.History[1].At.Format(time.RFC3339Nano))
		lo := relay.History[2].At
		if w := lo.Sub(hi); w < 200*time.Millisecond {
			t.Errorf("pulse lasted %v, configured 200ms", w)
		}
	}
	if st.Outbox.Depth < 1 || st.Outbox.Bytes <= 0 || st.MQTT.State != "disabled" {
		t.Errorf("outbox/mqtt: %+v %+v", st.Outbox, st.MQTT)
	}
	ev := *eventOfKind(st.Events, "detection")
	checkDetectionEvent(t, ev)
	if cam := eventOfKind(st.Events, "camera"); cam == nil || bodyField(*cam, "state") != "streaming" {
		t.Errorf("no camera streaming event: %+v", st.Events)
	}

	// Snapshot, metrics, health.
	code, jpeg := r.get(t, "/api/cameras/door/snapshot.jpg")
	if code != http.StatusOK || len(jpeg) < 1000 || jpeg[0] != 0xFF || jpeg[1] != 0xD8 {
		t.Errorf("snapshot: %d, %d bytes", code, len(jpeg))
	}
	if code, _ := r.get(t, "/api/cameras/nope/snapshot.jpg"); code != http.StatusNotFound {
		t.Errorf("unknown camera snapshot: %d", code)
	}
	_, metrics := r.get(t, "/metrics")
	for _, want := range []string{
		`vigil_detections_total{camera="door",label="person"}`,
		`vigil_camera_frames_total{camera="door"}`,
		`vigil_actuator_transitions_total{actuator="line-stop",driver="sim"}`,
		`vigil_rule_firings_total{rule="stop-on-person"}`,
		`vigil_outbox_depth`,
		`vigil_inference_seconds_count{model="default"}`,
		`vigil_actuate_latency_seconds_count{rule="stop-on-person"}`,
	} {
		if v := metricValue(t, metrics, want); v <= 0 {
			t.Errorf("metric %s = %v, want > 0", want, v)
		}
	}
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/": 200} {
		if code, _ := r.get(t, path); code != want {
			t.Errorf("%s: %d", path, code)
		}
	}

	if err := r.stop(); err != nil {
		t.Fatalf("Run returned %v on a clean shutdown", err)
	}
	if s := r.agent.parts().actuators["line-stop"].State(); s.State != "low" {
		t.Errorf("actuator not safe after shutdown: %+v", s)
	}

	// The event is on disk with the same envelope.
	ob, err := outbox.Open(outbox.Options{Path: filepath.Join(state, "outbox"), Device: "test-01"})
	if err != nil {
		t.Fatal(err)
	}
	stored, err := ob.Peek(0, 10)
	ob.Close()
	if got := eventOfKind(stored, "detection"); err != nil || got == nil || got.ID != ev.ID || got.Seq != ev.Seq {
		t.Fatalf("outbox on disk: %v %+v, want the event %s", err, stored, ev.ID)
	}
	if n := matCount(); n != mats {
		t.Errorf("gocv Mats: %d before, %d after the agent stopped", mats, n)
	}
}

// bodyField is a string field of an event's body.
func bodyField(e outbox.Envelope, key string) string {
	var m map[string]any
	json.Unmarshal(e.Body, &m)
	s, _ := m[key].(string)
	return s
}

// eventOfKind is the first event of that kind, or nil.
func eventOfKind(events []outbox.Envelope, kind string) *outbox.Envelope {
	for i := range events {
		if events[i].Kind == kind {
			return &events[i]
		}
	}
	return nil
}

func checkDetectionEvent(t *testing.T, ev outbox.Envelope) {
	t.Helper()
	if ev.ID == "" || ev.Seq < 1 || ev.TS.IsZero() || ev.Device != "test-01" || ev.Kind != "detection" {
		t.Errorf("envelope: %+v", ev)
	}
	var body detectionEvent
	if err := json.Unmarshal(ev.Body, &body); err != nil {
		t.Fatalf("event body: %v", err)
	}
	if body.Rule != "stop-on-person" || body.Camera != "door" || len(body.Detections) == 0 ||
		body.Detections[0].Label != "person" || body.Detections[0].Score < 0.5 || body.Action["actuator"] != "line-stop" {
		t.Errorf("event body: %+v", body)
	}
	if body.LatencyMS.Detect <= 0 || body.LatencyMS.Actuate < body.LatencyMS.Detect {
		t.Errorf("latencies: %+v", body.LatencyMS)
	}
}

// metricValue sums the samples of a series whose line starts with prefix.
func metricValue(t *testing.T, exposition []byte, prefix string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(prefix) + `(?:\{[^}]*\})? ([0-9.e+-]+)$`)
	var sum float64
	for _, m := range re.FindAllSubmatch(exposition, -1) {
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		sum += v
	}
	return sum
}

// Events survive a restart and seq continues from where it was.
func TestRestartKeepsEventsAndSeq(t *testing.T) {
	state := t.TempDir()
	first := start(t, testConfig(t, state, ""))
	testkit.WaitFor(t, 30*time.Second, "the first event", func() bool { return len(first.status(t).Events) > 0 })
	if err := first.stop(); err != nil {
		t.Fatal(err)
	}
	ob, _ := outbox.Open(outbox.Options{Path: filepath.Join(state, "outbox"), Device: "test-01"})
	before, _ := ob.Peek(0, 100)
	ob.Close()
	if len(before) == 0 {
		t.Fatal("no event stored by the first run")
	}
	last := before[len(before)-1].Seq

	second := start(t, testConfig(t, state, ""))
	var st Status
	testkit.WaitFor(t, 30*time.Second, "an event after the restart", func() bool {
		st = second.status(t)
		return len(st.Events) > 0
	})
	if got := st.Events[len(st.Events)-1].Seq; got != last+1 {
		t.Errorf("first event after restart has seq %d, want %d", got, last+1)
	}
	if st.Outbox.Depth != len(before)+len(st.Events) {
		t.Errorf("outbox depth %d after restart, want the %d old messages plus %d new", st.Outbox.Depth, len(before), len(st.Events))
	}
}

func TestActuatorAPI(t *testing.T) {
	r := start(t, testConfig(t, t.TempDir(), ""))
	post := func(token, body string) int {
		code, _ := r.post(t, "/api/actuators/line-stop", token, body)
		return code
	}
	for name, tc := range map[string]struct {
		token, body string
		want        int
	}{
		"no token":      {"", `{"state":"high"}`, 401},
		"wrong token":   {"guess", `{"state":"high"}`, 401},
		"bad level":     {"s3cret", `{"state":"on"}`, 400},
		"two commands":  {"s3cret", `{"state":"high","pulse":"1s"}`, 400},
		"unknown field": {"s3cret", `{"level":"high"}`, 400},
	} {
		if got := post(tc.token, tc.body); got != tc.want {
			t.Errorf("%s: %d, want %d", name, got, tc.want)
		}
	}
	if got := post("s3cret", `{"state":"high"}`); got != 200 {
		t.Fatalf("set high: %d", got)
	}
	if s := r.agent.parts().actuators["line-stop"].State(); s.State != "high" || s.LastReason != "http api" {
		t.Errorf("after API set: %+v", s)
	}
	if got := post("s3cret", `{"safe":true}`); got != 200 {
		t.Fatalf("safe: %d", got)
	}
	if s := r.agent.parts().actuators["line-stop"].State(); s.State != "low" {
		t.Errorf("after API safe: %+v", s)
	}
}

func TestMutatingEndpointsForbiddenWithoutToken(t *testing.T) {
	mutating := []string{"/api/actuators/line-stop", "/api/rules/stop-on-person/ack", "/api/inputs/ack", "/api/reload"}
	cfg := testConfig(t, t.TempDir(), "inputs: [{name: ack, driver: sim}]\n")
	r := start(t, cfg)
	for _, path := range mutating {
		for _, token := range []string{"", "guess"} {
			if code, _ := r.post(t, path, token, `{"state":"high"}`); code != http.StatusUnauthorized {
				t.Errorf("POST %s with token %q: %d, want 401", path, token, code)
			}
		}
	}
	r.stop()

	cfg.HTTP.Token = ""
	r = start(t, cfg)
	for _, path := range mutating {
		if code, _ := r.post(t, path, "s3cret", `{"state":"high"}`); code != http.StatusForbidden {
			t.Errorf("POST %s with no http.token configured: %d, want 403", path, code)
		}
	}
	if s := r.agent.parts().actuators["line-stop"].State(); s.Transitions != 0 && s.LastReason == "http api" {
		t.Errorf("a refused request moved the relay: %+v", s)
	}
}

// With http.read_token, reading needs it too (or the change token); health checks stay
// open for probes.
func TestReadToken(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	cfg.HTTP.ReadToken = "look"
	r := start(t, cfg)
	for path, want := range map[string]int{"/api/status": 401, "/": 401, "/metrics": 401, "/api/events": 401, "/healthz": 200,
		"/api/status?token=look": 200, "/?token=look": 200, "/metrics?token=s3cret": 200, "/api/status?token=nope": 401} {
		if code, _ := r.get(t, path); code != want {
			t.Errorf("GET %s: %d, want %d", path, code, want)
		}
	}
	req, _ := http.NewRequest("GET", r.base+"/api/status", nil)
	req.Header.Set("Authorization", "Bearer look")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("status with the read token in the header: %v %v", err, resp.StatusCode)
	}
	resp.Body.Close()
}

// A camera whose file is missing is retried and reported, while the agent keeps
// serving and the model stays loaded.
func TestDeadCameraIsReportedAndRetried(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	cfg.Cameras[0].URL = "file:///no/such/clip.mp4"
	cfg.Cameras[0].Backoff = config.Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	r := start(t, cfg)
	var cam CameraStatus
	testkit.WaitFor(t, 10*time.Second, "reconnect attempts", func() bool {
		cam = r.status(t).Cameras[0]
		return cam.Reconnects >= 3
	})
	if !strings.Contains(cam.LastError, "no such file") {
		t.Errorf("last_error %q", cam.LastError)
	}
	// Many retries, one event: the change from nothing to failing.
	var changes []outbox.Envelope
	for _, e := range r.status(t).Events {
		if e.Kind == "camera" {
			changes = append(changes, e)
		}
	}
	if len(changes) != 1 || bodyField(changes[0], "state") != "backoff" || !strings.Contains(bodyField(changes[0], "error"), "no such file") {
		t.Errorf("camera events for a dead camera: %+v", changes)
	}
	if code, body := r.get(t, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(string(body), "camera door has no detection yet") {
		t.Errorf("/readyz with a dead camera: %d %s", code, body)
	}
}

// A model that cannot load leaves the agent running with the error visible. ONNX
// Runtime is loaded once per process, so this runs in a child test process that has
// not loaded it.
func TestMissingRuntimeIsReported(t *testing.T) {
	if os.Getenv("AGENT_TEST_CHILD") != "1" {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestMissingRuntimeIsReported$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "AGENT_TEST_CHILD=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestMissingRuntimeIsReported") {
			t.Fatalf("child test failed: %v\n%s", err, out)
		}
		return
	}
	cfg := testConfig(t, t.TempDir(), "")
	cfg.Runtimes.ONNXRuntime = "/no/such/libonnxruntime.so"
	r := start(t, cfg)
	st := r.status(t)
	if m := st.Models[0]; m.State != "failed" || !strings.Contains(m.Error, "libonnxruntime") || !strings.Contains(m.Error, "scripts/install-deps") {
		t.Errorf("model status without the runtime: %+v", m)
	}
	if st.Ready {
		t.Error("ready without a model")
	}
}

// A model on a backend whose runtime this machine lacks (OpenVINO cannot be installed
// here) is a failed model with an error naming the library; the cameras keep running and
// the outputs stay safe.
func TestBackendWithoutRuntimeIsReported(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	cfg.Models[0].Backend = "openvino"
	cfg.Actuators[0].Initial = "high" // its normal level, which a blind rule must not get
	r := start(t, cfg)
	st := r.status(t)
	if m := st.Models[0]; m.State != "failed" || m.Backend != "openvino" || !strings.Contains(m.Error, "libopenvino_c.so") {
		t.Errorf("model status: %+v", m)
	}
	testkit.WaitFor(t, 10*time.Second, "the camera to stream without detection", func() bool {
		return r.status(t).Cameras[0].Frames > 0
	})
	if s := r.agent.parts().actuators["line-stop"].State(); s.State != "low" || s.Transitions != 0 {
		t.Errorf("with its model missing, the actuator left its safe level: %+v", s)
	}
}

// With MQTT enabled, events reach a real broker as envelopes, the retained status says
// online with the version and models, and the link shows on /api/status and /metrics.
func TestEventsReachTheBroker(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	sub := b.Subscribe(t, "cloud", "vigil/test-01/#")
	cfg := testConfig(t, t.TempDir(), fmt.Sprintf("  enabled: true\n  brokers: [%q]\n  backoff: {min: 50ms, max: 500ms}\n", b.URL))
	r := start(t, cfg)
	var ev outbox.Envelope
	testkit.WaitFor(t, 30*time.Second, "a detection event at the broker", func() bool {
		for _, m := range sub.Messages() {
			if m.Topic == "vigil/test-01/events" && json.Unmarshal(m.Payload, &ev) == nil && ev.Kind == "detection" {
				return true
			}
		}
		return false
	})
	checkDetectionEvent(t, ev)
	var online map[string]any
	for _, m := range sub.Messages() {
		if m.Topic == "vigil/test-01/status" {
			json.Unmarshal(m.Payload, &online)
		}
	}
	if online["state"] != "online" || online["version"] != "test" || !strings.Contains(fmt.Sprint(online["models"]), "yolox-nano") {
		t.Errorf("retained status %v", online)
	}
	testkit.WaitFor(t, 10*time.Second, "the outbox to drain", func() bool { return r.status(t).Outbox.Depth == 0 })
	st := r.status(t)
	if st.MQTT.State != "connected" || st.MQTT.Broker != b.URL || st.MQTT.Acked == 0 {
		t.Errorf("mqtt status %+v", st.MQTT)
	}
	_, metrics := r.get(t, "/metrics")
	if metricValue(t, metrics, "vigil_mqtt_connected") != 1 || metricValue(t, metrics, "vigil_mqtt_acked_total") == 0 {
		t.Errorf("mqtt metrics missing:\n%s", regexp.MustCompile(`(?m)^vigil_mqtt.*$`).FindAll(metrics, -1))
	}
}

// A corrupt outbox at start is set aside; the daemon starts and says so with a fault
// event, on the status page and in the new outbox.
func TestCorruptOutboxIsSetAside(t *testing.T) {
	state := t.TempDir()
	dir := filepath.Join(state, "outbox")
	os.MkdirAll(filepath.Join(dir, "events"), 0o755)
	os.WriteFile(filepath.Join(dir, "events", "notes.txt"), []byte("not a segment: this is not an outbox"), 0o644)
	r := start(t, testConfig(t, state, ""))
	st := r.status(t)
	if len(st.Events) == 0 || st.Events[len(st.Events)-1].Kind != "fault" || !strings.Contains(string(st.Events[len(st.Events)-1].Body), "outbox_corrupt") {
		t.Fatalf("no outbox_corrupt fault event on the status page: %+v", st.Events)
	}
	moved, _ := filepath.Glob(filepath.Join(state, "outbox.corrupt-*"))
	if len(moved) != 1 {
		t.Errorf("corrupt outbox not moved aside: %v", moved)
	}
}

// With the outbox budget reached (MQTT off, telemetry every millisecond), telemetry is
// evicted first and the events stay; the disk use never passes outbox.max_bytes.
func TestOutboxBudgetEvictsTelemetryFirst(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	cfg.MQTT.TelemetryInterval = time.Millisecond
	cfg.Outbox.MaxBytes = 1 << 20
	cfg.Outbox.Fsync = "interval"
	r := start(t, cfg)
	var st Status
	testkit.WaitFor(t, 60*time.Second, "telemetry eviction and a detection event", func() bool {
		st = r.status(t)
		if st.Outbox.DiskBytes > 1<<20 {
			t.Fatalf("outbox uses %d bytes on disk, budget 1MiB", st.Outbox.DiskBytes)
		}
		return st.Outbox.Evicted > 0 && eventOfKind(st.Events, "detection") != nil
	})
	if st.Outbox.Dropped != 0 {
		t.Errorf("events dropped while telemetry could be evicted: %+v", st.Outbox)
	}
	_, metrics := r.get(t, "/metrics")
	if metricValue(t, metrics, "vigil_outbox_evicted_telemetry_total") == 0 {
		t.Error("eviction not in the metrics")
	}
	// The detection event is still in the outbox.
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.Open(outbox.Options{Path: filepath.Join(cfg.Device.StateDir, "outbox"), Device: "test-01", MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	found := false
	for after := uint64(0); !found; {
		msgs, err := ob.Peek(after, 256)
		if err != nil || len(msgs) == 0 {
			break
		}
		for _, m := range msgs {
			found = found || m.Kind == "detection"
			after = m.Seq
		}
	}
	if !found {
		t.Error("the detection event was evicted")
	}
}

// The mqtt section's TLS keys end to end: a broker that requires client certificates,
// the CA, the client certificate and key, and the server name from the config.
func TestMQTTWithClientCertificate(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{TLS: true, ClientCerts: true})
	sub := b.Subscribe(t, "cloud", "vigil/test-01/status")
	_ = sub
	extra := fmt.Sprintf("  enabled: true\n  brokers: [%q]\n  ca_file: %q\n  cert_file: %q\n  key_file: %q\n  server_name: localhost\n",
		strings.Replace(b.URL, "localhost", "127.0.0.1", 1), b.CAFile, b.ClientCertFile, b.ClientKeyFile)
	r := start(t, testConfig(t, t.TempDir(), extra))
	testkit.WaitFor(t, 20*time.Second, "a TLS connection with a client certificate", func() bool { return r.status(t).MQTT.State == "connected" })

	// Without the client certificate the broker refuses, and the status says why.
	noCert := testConfig(t, t.TempDir(), fmt.Sprintf("  enabled: true\n  brokers: [%q]\n  ca_file: %q\n  backoff: {min: 50ms, max: 200ms}\n", b.URL, b.CAFile))
	noCert.Device.ID = "test-02"
	r2 := start(t, noCert)
	var mq mqttlink.State
	testkit.WaitFor(t, 20*time.Second, "the refusal", func() bool {
		mq = r2.status(t).MQTT
		return mq.LastError != ""
	})
	if mq.State == "connected" || !strings.Contains(mq.LastError, "connect to "+b.URL) {
		t.Errorf("link without a client certificate: %+v", mq)
	}
}

// Four cameras on one detector, one of them broken: the three others stream and are
// all detected on (none starves), and the broken one is retried and reported.
func TestFourCamerasOneBroken(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	cam := cfg.Cameras[0]
	cfg.Cameras = nil
	for i, url := range []string{"file://" + clip, "file://" + clip, "pattern://", "file:///no/such/clip.mp4"} {
		c := cam
		c.Name, c.URL = fmt.Sprintf("cam%d", i), url
		c.Backoff = config.Backoff{Min: 20 * time.Millisecond, Max: 100 * time.Millisecond}
		cfg.Cameras = append(cfg.Cameras, c)
	}
	cfg.Rules = nil
	r := start(t, cfg)
	var st Status
	testkit.WaitFor(t, 30*time.Second, "30 detected frames on each working camera", func() bool {
		st = r.status(t)
		for _, c := range st.Cameras[:3] {
			if c.Detect.Frames < 30 {
				return false
			}
		}
		return st.Cameras[3].Reconnects >= 3
	})
	var lo, hi uint64 = st.Cameras[0].Detect.Frames, 0
	for _, c := range st.Cameras[:3] {
		if c.State != "streaming" {
			t.Errorf("%s: %s", c.Name, c.State)
		}
		lo, hi = min(lo, c.Detect.Frames), max(hi, c.Detect.Frames)
	}
	// Same rates in, so nearly the same counts out; a starved camera would lag far behind.
	if lo*2 < hi {
		t.Errorf("detections per camera range from %d to %d: a camera is starved", lo, hi)
	}
	if broken := st.Cameras[3]; broken.State == "streaming" || !strings.Contains(broken.LastError, "no such file") {
		t.Errorf("broken camera: %+v", broken)
	}
}

// A camera that stops delivering frames drives the actuators of its `on_stall: safe`
// rules to their safe level, with the reason, and says so in an event.
func TestStallDrivesRuleActuatorsSafe(t *testing.T) {
	srv := rtsptest.Start(t, rtsptest.Options{Width: 640})
	cfg := testConfig(t, t.TempDir(), "")
	cfg.Cameras[0].URL = srv.URL("stream")
	cfg.Cameras[0].StallTimeout = 500 * time.Millisecond
	cfg.Rules[0].Labels = nil // anything seen latches the output high
	cfg.Rules[0].MinScore = 0.2
	cfg.Rules[0].Action = config.Action{Actuator: "line-stop", State: "high", Until: "ack"} // held until the stall
	cfg.Rules[0].OnStall = "safe"
	r := start(t, cfg)
	testkit.WaitFor(t, 30*time.Second, "the rule to set the output high", func() bool {
		return r.agent.parts().actuators["line-stop"].State().State == "high"
	})
	srv.Pause()
	testkit.WaitFor(t, 10*time.Second, "the stall to drive the output safe", func() bool {
		return r.agent.parts().actuators["line-stop"].State().State == "low"
	})
	st := r.agent.parts().actuators["line-stop"].State()
	if !strings.Contains(st.LastReason, "camera door stalled") {
		t.Errorf("reason %q", st.LastReason)
	}
	// The output moves first; its event is recorded right after.
	testkit.WaitFor(t, 10*time.Second, "the failsafe event", func() bool { return eventOfKind(r.status(t).Events, "failsafe") != nil })
	if ev := eventOfKind(r.status(t).Events, "failsafe"); bodyField(*ev, "actuator") != "line-stop" {
		t.Errorf("failsafe event for another actuator: %+v", ev)
	}
	srv.Resume()
}

// A bundle for the tflite backend (the float16 YOLOX-Nano on TFLite 2.2) runs in the
// agent like the default one.
func TestTFLiteModel(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	bundle, _ := filepath.Abs(filepath.Join("..", "infer", "testdata", "models", "yolox-nano-float16"))
	cfg.Models[0].Bundle = bundle
	r := start(t, cfg)
	testkit.WaitFor(t, 60*time.Second, "a detection event from the tflite model", func() bool {
		return eventOfKind(r.status(t).Events, "detection") != nil
	})
	if m := r.status(t).Models[0]; m.Backend != "tflite" || m.State != "loaded" {
		t.Errorf("model: %+v", m)
	}
}
