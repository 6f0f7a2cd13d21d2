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
	waitFor(t, 30*time.Second, "a detection event", func() bool { return eventOfKind(r.status(t).Events, "detection") != nil })
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
	waitFor(t, 30*time.Second, "the new camera streaming and the old one still detecting", func() bool {
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
	waitFor(t, 30*time.Second, "the agent running", func() bool { return r.status(t).Cameras[0].Detect.Frames > 0 })
	rewrite(t, cfg.Source, "cooldown: 1h", "cooldown: 2h")
	waitFor(t, 30*time.Second, "the file change to be applied", func() bool {
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
	waitFor(t, 30*time.Second, "a detection event in the outbox", func() bool { return r.status(t).Outbox.Depth > 1 })
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
	waitFor(t, 30*time.Second, "the backlog at the broker", func() bool {
		st := r.status(t)
		return st.MQTT.State == "connected" && st.Outbox.Depth == 0 && len(sub.Messages()) > 1
	})
}
