package agent

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// rewrite replaces old with new in the agent's config file.
func rewrite(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%q is not in the config", old)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A reload that changes a rule and adds a camera while frames flow: the untouched camera
// keeps streaming (the same pipeline, its counters still rising), the new camera starts,
// the changed rule applies, and no event or outbox entry is lost.
func TestReloadAppliesOnlyWhatChanged(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	r := start(t, cfg)
	door := r.agent.parts().cameras[0]
	testkit.WaitFor(t, 30*time.Second, "a detection event", func() bool { return eventOfKind(r.status(t).Events, "detection") != nil })
	framesBefore := door.stats.status().Frames
	seqBefore := r.status(t).Outbox.NextSeq

	rewrite(t, cfg.Source, "    min_score: 0.5\n", "    min_score: 0.6\n")
	rewrite(t, cfg.Source, "cameras:\n", "cameras:\n  - {name: yard, url: \"pattern://\", detect_fps: 2}\n")
	code, body := r.post(t, "/api/reload", "s3cret", "")
	if code != http.StatusOK {
		t.Fatalf("reload: %d %s", code, body)
	}
	var res ReloadResult
	json.Unmarshal([]byte(body), &res)
	if !res.OK || !slices.Contains(res.Changed, "camera yard added") || !slices.Contains(res.Changed, "rule stop-on-person") ||
		slices.ContainsFunc(res.Changed, func(c string) bool { return strings.HasPrefix(c, "camera door") || strings.HasPrefix(c, "actuator") }) {
		t.Fatalf("reload result %+v", res)
	}
	p := r.agent.parts()
	if len(p.cameras) != 2 || !slices.Contains(p.cameras, door) {
		t.Fatalf("cameras after the reload: %d, door kept: %v", len(p.cameras), slices.Contains(p.cameras, door))
	}
	if got := p.cfg.RuleNamed("stop-on-person").MinScore; got != 0.6 {
		t.Errorf("rule min_score %v after the reload", got)
	}
	testkit.WaitFor(t, 30*time.Second, "the new camera streaming and the old one still detecting", func() bool {
		st := r.status(t)
		for _, c := range st.Cameras {
			if c.Name == "yard" && c.State != "streaming" {
				return false
			}
		}
		return len(st.Cameras) == 2 && door.stats.status().Frames > framesBefore+5
	})
	// Every message since the start is still in the outbox, in sequence: nothing lost.
	st := r.status(t)
	if st.Outbox.NextSeq <= seqBefore || st.Outbox.Depth != int(st.Outbox.NextSeq-1) || st.Outbox.Dropped != 0 {
		t.Errorf("outbox after the reload: %+v (next seq before %d)", st.Outbox, seqBefore)
	}
	var reload struct {
		OK        bool     `json:"ok"`
		AtRestart []string `json:"at_restart"`
	}
	if ev := eventOfKind(st.Events, "reload"); ev == nil || json.Unmarshal(ev.Body, &reload) != nil || !reload.OK || len(reload.AtRestart) != 0 {
		t.Errorf("reload event: %+v", reload)
	}
	if st.Reload == nil || !st.Reload.OK {
		t.Errorf("status reload: %+v", st.Reload)
	}
}

// A reload of a config with errors changes nothing; the errors are shown.
func TestBadReloadKeepsTheRunningConfig(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	r := start(t, cfg)
	door := r.agent.parts().cameras[0]
	rewrite(t, cfg.Source, "detect_fps: 10", "detect_fps: -3")
	code, body := r.post(t, "/api/reload", "s3cret", "")
	if code != http.StatusUnprocessableEntity || !strings.Contains(body, "cameras[0].detect_fps: -3 must be greater than 0") {
		t.Fatalf("bad reload: %d %s", code, body)
	}
	if p := r.agent.parts(); p.cameras[0] != door || p.cfg.Cameras[0].DetectFPS != 10 {
		t.Fatal("a refused reload changed the running config")
	}
	st := r.status(t)
	if st.Reload == nil || st.Reload.OK || len(st.Reload.Errors) == 0 {
		t.Errorf("status reload: %+v", st.Reload)
	}
	if ev := eventOfKind(st.Events, "reload"); ev == nil || !strings.Contains(string(ev.Body), "detect_fps") {
		t.Errorf("no reload event with the error: %+v", st.Events)
	}
	if code, _ := r.post(t, "/api/reload", "", ""); code != http.StatusUnauthorized {
		t.Errorf("reload without the token: %d", code)
	}
}

// Saving the config file is enough: the watch reloads it, once per save.
func TestConfigFileWatchReloads(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	r := start(t, cfg)
	// The watch starts with Run, long before the first detection.
	testkit.WaitFor(t, 30*time.Second, "the agent running", func() bool { return r.status(t).Cameras[0].Detect.Frames > 0 })
	rewrite(t, cfg.Source, "cooldown: 1h", "cooldown: 2h")
	testkit.WaitFor(t, 30*time.Second, "the file change to be applied", func() bool {
		return r.agent.parts().cfg.RuleNamed("stop-on-person").Cooldown == 2*time.Hour
	})
	if st := r.status(t); st.Reload == nil || !st.Reload.OK || !slices.Contains(st.Reload.Changed, "rule stop-on-person") {
		t.Errorf("reload %+v", st.Reload)
	}
}

// A reload that turns MQTT on starts the link (the outbox's backlog then drains to the
// broker), and one that changes an actuator replaces only that actuator.
func TestReloadMQTTAndActuators(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	sub := b.Subscribe(t, "cloud", "vigil/test-01/events")
	cfg := testConfig(t, t.TempDir(), "")
	r := start(t, cfg)
	testkit.WaitFor(t, 30*time.Second, "a detection event in the outbox", func() bool { return r.status(t).Outbox.Depth > 1 })
	rewrite(t, cfg.Source, "mqtt:\n", fmt.Sprintf("mqtt:\n  enabled: true\n  brokers: [%q]\n", b.URL))
	rewrite(t, cfg.Source, "actuators:\n", "actuators:\n  - {name: lamp, driver: sim, safe: high}\n")
	relay := r.agent.parts().actuators["line-stop"]
	res, err := r.agent.ReloadFromFile("test")
	if err != nil || !slices.Contains(res.Changed, "mqtt") || !slices.Contains(res.Changed, "actuator lamp added") {
		t.Fatalf("reload: %v %+v", err, res)
	}
	if r.agent.parts().actuators["line-stop"] != relay {
		t.Error("an unchanged actuator was replaced")
	}
	if s := r.agent.parts().actuators["lamp"].State(); s.State != "high" {
		t.Errorf("the new actuator is not at its safe level: %+v", s)
	}
	testkit.WaitFor(t, 30*time.Second, "the backlog at the broker", func() bool {
		st := r.status(t)
		return st.MQTT.State == "connected" && st.Outbox.Depth == 0 && len(sub.Messages()) > 1
	})
}

// A reload that removes an actuator while its rule's camera stalls. The stall watcher's
// failSafe walks the rules and drives their actuators safe; it works on one snapshot of
// the parts, so a reload in the middle cannot make it look a removed actuator up in the
// new parts (a nil output: a panic in the stall watcher before, which stopped the
// agent). The output that remains goes safe.
func TestReloadRemovingAnActuatorWhileItsCameraStalls(t *testing.T) {
	state := t.TempDir()
	configs := map[bool]*config.Config{}
	for _, withWeld := range []bool{true, false} {
		weld := ""
		if withWeld {
			weld = "  - {name: weld-hold, driver: sim, safe: low, initial: high}\n"
		}
		rule := func(name, act string) string {
			return fmt.Sprintf("  - {name: %s, camera: door, labels: [person], on_stall: safe, action: {actuator: %s, state: low}}\n", name, act)
		}
		rules := rule("guard-on-person", "guard")
		if withWeld {
			rules += rule("weld-on-person", "weld-hold")
		}
		yaml := fmt.Sprintf("device: {id: test-01, state_dir: %q}\nhttp: {token: s3cret}\n"+
			"cameras:\n  - {name: door, url: \"pattern://?width=64&height=48&fps=2\", detect_fps: 2}\n"+
			"actuators:\n  - {name: guard, driver: sim, safe: low, initial: high}\n%srules:\n%s", state, weld, rules)
		configs[withWeld] = loadYAML(t, yaml)
	}
	r := start(t, configs[true])
	a := r.agent
	testkit.WaitFor(t, 30*time.Second, "the outputs at their operating level", func() bool {
		p := a.parts()
		return p.actuators["guard"].State().State == "high" && p.actuators["weld-hold"].State().State == "high"
	})
	cam := a.parts().cameras[0]

	// The stall watcher's view of a camera that keeps stalling, while reloads add and
	// remove weld-hold and its rule.
	stop := make(chan struct{})
	stalls := make(chan any, 1)
	go func() {
		defer func() { stalls <- recover() }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			a.failSafe(a.parts(), cam, "camera door stalled")
		}
	}()
	for i := range 200 {
		if _, err := a.Reload(configs[i%2 == 0]); err != nil { // the last (199) removes weld-hold
			t.Fatalf("reload %d: %v", i, err)
		}
	}
	close(stop)
	if p := <-stalls; p != nil {
		t.Fatalf("the stall watcher panicked during the reloads: %v", p)
	}

	// The last config has no weld-hold; the camera still stalls: guard goes safe.
	p := a.parts()
	if _, ok := p.actuators["weld-hold"]; ok {
		t.Fatalf("weld-hold is still an actuator after the last reload removed it")
	}
	p.actuators["guard"].Set(hal.High, "test: operating level again")
	a.failSafe(p, cam, "camera door stalled")
	if st := p.actuators["guard"].State(); st.State != "low" || !strings.Contains(st.LastReason, "stalled") {
		t.Errorf("guard after the stall: %+v, want low (safe) because the camera stalled", st)
	}
}

// A camera whose only change is its pacing or its model is reconfigured in place, as
// mediamtx's ReloadConf does: the same pipeline keeps its stream (no reconnect, its
// frame counter keeps rising) and detects at the new rate on the new model.
func TestReloadRetunesACameraInPlace(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "models:\n  - {name: default}\n  - {name: second}\n")
	r := start(t, cfg)
	door := r.agent.parts().cameras[0]
	first := door.model()
	testkit.WaitFor(t, 30*time.Second, "detections on the first model", func() bool { return door.stats.status().Frames > 3 })
	reconnects := door.cap.Status().Reconnects

	rewrite(t, cfg.Source, `detect_fps: 10}`, `detect_fps: 4, model: second}`)
	res, err := r.agent.ReloadFromFile("test")
	if err != nil || !slices.Contains(res.Changed, "camera door reconfigured") {
		t.Fatalf("reload: %v %+v", err, res)
	}
	p := r.agent.parts()
	if p.cameras[0] != door {
		t.Fatal("the camera was replaced; only its pacing and model changed")
	}
	if door.cfg().DetectFPS != 4 || door.model() != p.models["second"] || door.model() == first {
		t.Fatalf("after the reload: detect_fps %v, model %s", door.cfg().DetectFPS, door.model().name)
	}
	second := door.model().running.Load()
	before := door.stats.status().Frames
	testkit.WaitFor(t, 30*time.Second, "detections on the second model", func() bool {
		_, n := second.stats.p50()
		return n > 3 && door.stats.status().Frames > before+3
	})
	if got := door.cap.Status().Reconnects; got != reconnects {
		t.Errorf("the camera reconnected %d times during the reload; it should have kept its stream", got-reconnects)
	}
}
