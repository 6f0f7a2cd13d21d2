package agent

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/internal/testkit"
)

func (r *running) post(t testing.TB, path, token, body string) (int, string) {
	t.Helper()
	return testkit.Request(t, http.MethodPost, r.base+path, token, []byte(body))
}

func levelsOf(st Status, actuator string) []string {
	for _, a := range st.Actuators {
		if a.Name == actuator {
			var out []string
			for _, h := range a.History {
				out = append(out, h.Level)
			}
			return out
		}
	}
	return nil
}

// The weld-robot case on the bundled clip: a person seen latches the output high, with
// the frame saved and referenced by the event; it stays high whatever the frames show
// until an operator acknowledges over the API; then it returns to its normal level.
func TestLatchUntilAcknowledge(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	cfg.Rules[0].Action = config.Action{Actuator: "line-stop", State: "high", Until: "ack"}
	r := start(t, cfg)

	var st Status
	testkit.WaitFor(t, 30*time.Second, "the rule to latch the output high", func() bool {
		st = r.status(t)
		return len(st.Rules) == 1 && st.Rules[0].Latched && eventOfKind(st.Events, "detection") != nil
	})
	if s := r.agent.parts().actuators["line-stop"].State(); s.State != "high" || s.LastReason != "rule stop-on-person" {
		t.Fatalf("latched output: %+v", s)
	}
	rule := st.Rules[0]
	if rule.Firings != 1 || rule.Until != "ack" || rule.ActuateP50 <= 0 || rule.LastMS <= 0 {
		t.Errorf("rule status: %+v", rule)
	}

	// The event names the saved frame, which the API serves as a JPEG.
	var body detectionEvent
	if err := json.Unmarshal(eventOfKind(st.Events, "detection").Body, &body); err != nil {
		t.Fatal(err)
	}
	if body.Snapshot == "" || body.SnapshotError != "" || body.Action["until"] != "ack" || body.LatencyMS.Actuate <= 0 {
		t.Fatalf("detection event: %+v", body)
	}
	code, jpeg := r.get(t, "/api/snapshots/"+body.Snapshot)
	if code != http.StatusOK || len(jpeg) < 1000 || jpeg[0] != 0xFF || jpeg[1] != 0xD8 {
		t.Errorf("saved snapshot: %d, %d bytes", code, len(jpeg))
	}
	if code, _ := r.get(t, "/api/snapshots/..%2Fvigil.yaml"); code != http.StatusNotFound {
		t.Errorf("a path outside the snapshots: %d", code)
	}

	// Acknowledge needs the token; then the output returns to normal, once.
	if code, _ := r.post(t, "/api/rules/stop-on-person/ack", "", ""); code != http.StatusUnauthorized {
		t.Errorf("ack without token: %d", code)
	}
	if code, _ := r.post(t, "/api/rules/nope/ack", "s3cret", ""); code != http.StatusNotFound {
		t.Errorf("ack of an unknown rule: %d", code)
	}
	if code, msg := r.post(t, "/api/rules/stop-on-person/ack", "s3cret", ""); code != http.StatusOK {
		t.Fatalf("ack: %d %s", code, msg)
	}
	if s := r.agent.parts().actuators["line-stop"].State(); s.State != "low" || !strings.Contains(s.LastReason, "released: acknowledged over http") {
		t.Errorf("after the ack: %+v", s)
	}
	if code, _ := r.post(t, "/api/rules/stop-on-person/ack", "s3cret", ""); code != http.StatusConflict {
		t.Errorf("second ack: %d, want 409", code)
	}
	st = r.status(t)
	if rel := eventOfKind(st.Events, "release"); rel == nil || bodyField(*rel, "rule") != "stop-on-person" {
		t.Errorf("no release event: %+v", st.Events)
	}
	// cooldown: 1h, so the person still in view does not latch it again.
	if got := levelsOf(st, "line-stop"); strings.Join(got, ",") != "low,high,low" {
		t.Errorf("transitions %v, want low,high,low", got)
	}
}

// An actuator with an initial level different from its safe one is driven there once the
// pipeline runs, and back to safe on shutdown.
func TestInitialLevelAfterStartSafeAtStop(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	cfg.Actuators[0].Safe, cfg.Actuators[0].Initial = "high", "low"
	cfg.Rules = nil
	r := start(t, cfg)
	testkit.WaitFor(t, 10*time.Second, "the initial level", func() bool {
		return r.agent.parts().actuators["line-stop"].State().State == "low"
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(levelsOf(r.agent.Status(true), "line-stop"), ","); got != "high,low,high" {
		t.Errorf("transitions %s, want high (start), low (initial), high (stop)", got)
	}
}

// A panic in the pipeline (where a rule or decoder bug would strike) drives every
// actuator safe and stops the agent with an error, so systemd restarts it.
func TestPanicDrivesActuatorsSafeAndFails(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	cfg.Actuators[0].Safe, cfg.Actuators[0].Initial = "low", "high"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, Options{Version: "test", Listener: ln})
	if err != nil {
		t.Fatal(err)
	}
	a.beforeRules = func(camera string) { panic("rule bug on camera " + camera) }
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = a.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "panic in pipeline door: rule bug on camera door") {
		t.Fatalf("Run: %v", err)
	}
	s := a.parts().actuators["line-stop"].State()
	if s.State != "low" || !strings.HasPrefix(s.LastReason, "panic in pipeline door") {
		t.Errorf("after the panic: %+v", s)
	}
}

// A rule with no actuator records what it saw (with the frame) and moves nothing.
func TestEventOnlyRule(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	cfg.Rules[0].Action = config.Action{}
	r := start(t, cfg)
	var st Status
	testkit.WaitFor(t, 30*time.Second, "a detection event", func() bool {
		st = r.status(t)
		return eventOfKind(st.Events, "detection") != nil
	})
	var body detectionEvent
	json.Unmarshal(eventOfKind(st.Events, "detection").Body, &body)
	if body.Action != nil || body.Snapshot == "" || len(body.Detections) == 0 {
		t.Errorf("event: %+v", body)
	}
	if s := r.agent.parts().actuators["line-stop"].State(); s.Transitions != 0 {
		t.Errorf("an event-only rule moved the actuator: %+v", s)
	}
}

// An operator's button (a sim input here, set through the API) releases a rule latched
// until it; an interlock input keeps a rule disarmed while it is low.
func TestInputsReleaseLatchAndArmInterlock(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), `
inputs:
  - {name: ack-button, driver: sim, debounce: 20ms}
  - {name: robot-running, driver: sim, debounce: 0s}
`)
	cfg.Rules[0].Action = config.Action{Actuator: "line-stop", State: "high", Until: "ack-button"}
	cfg.Rules[0].Interlock = "robot-running"
	r := start(t, cfg)

	// People are in view, but the robot is not running: the rule stays disarmed.
	testkit.WaitFor(t, 30*time.Second, "detections with people", func() bool {
		return r.status(t).Cameras[0].Detect.Frames > 20
	})
	if st := r.status(t); st.Rules[0].Firings != 0 || r.agent.parts().actuators["line-stop"].State().State != "low" {
		t.Fatalf("fired with the interlock open: %+v", st.Rules[0])
	}
	if code, msg := r.post(t, "/api/inputs/robot-running", "s3cret", `{"state":"high"}`); code != http.StatusOK {
		t.Fatalf("set robot-running: %d %s", code, msg)
	}
	testkit.WaitFor(t, 30*time.Second, "the rule to latch once the robot runs", func() bool {
		return r.status(t).Rules[0].Latched
	})

	if code, msg := r.post(t, "/api/inputs/ack-button", "s3cret", `{"state":"high"}`); code != http.StatusOK {
		t.Fatalf("press: %d %s", code, msg)
	}
	testkit.WaitFor(t, 10*time.Second, "the button to release the latch", func() bool {
		return r.agent.parts().actuators["line-stop"].State().State == "low"
	})
	st := r.status(t)
	if st.Rules[0].Latched || !strings.Contains(r.agent.parts().actuators["line-stop"].State().LastReason, "released: input ack-button") {
		t.Errorf("after the button: %+v %+v", st.Rules[0], r.agent.parts().actuators["line-stop"].State())
	}
	var inputs []string
	for _, in := range st.Inputs {
		inputs = append(inputs, in.Name+"="+in.State)
	}
	if strings.Join(inputs, ",") != "ack-button=high,robot-running=high" {
		t.Errorf("inputs on the status: %v", inputs)
	}
	if ev := eventOfKind(st.Events, "input"); ev == nil {
		t.Errorf("no input event: %+v", st.Events)
	}
	if code, _ := r.post(t, "/api/inputs/nope", "s3cret", `{"state":"high"}`); code != http.StatusNotFound {
		t.Errorf("unknown input: %d", code)
	}
	if code, _ := r.post(t, "/api/inputs/ack-button", "s3cret", `{"state":"pressed"}`); code != http.StatusBadRequest {
		t.Errorf("bad state: %d", code)
	}
}

// A gpio actuator whose chip does not exist (this machine has no GPIO) is in the fault
// state with the reason, and a fault event says so; the camera, the model and the other
// actuators run.
func TestMissingGPIOChipIsAFaultNotACrash(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), `
inputs:
  - {name: ack, driver: gpio, chip: gpiochip7, line: GPIO27}
`)
	cfg.Actuators = append(cfg.Actuators, config.Actuator{Name: "weld-pause", Driver: "gpio", Chip: "gpiochip7", Line: "GPIO17", Safe: "low"})
	r := start(t, cfg)
	var st Status
	testkit.WaitFor(t, 30*time.Second, "the sim relay to pulse", func() bool {
		st = r.status(t)
		return st.Actuators[0].Transitions >= 1
	})
	weld := st.Actuators[1]
	if weld.Name != "weld-pause" || weld.State.State != "fault" || !strings.Contains(weld.LastError, "GPIO") {
		t.Errorf("gpio actuator: %+v", weld)
	}
	if in := st.Inputs[0]; in.State != "fault" || in.LastError == "" {
		t.Errorf("gpio input: %+v", in)
	}
	fault := eventOfKind(st.Events, "fault")
	if fault == nil || bodyField(*fault, "actuator") != "weld-pause" {
		t.Errorf("no fault event: %+v", st.Events)
	}
	if code, _ := r.post(t, "/api/actuators/weld-pause", "s3cret", `{"state":"high"}`); code != http.StatusInternalServerError {
		t.Errorf("command to a faulty actuator: %d", code)
	}
	if code, _ := r.post(t, "/api/inputs/ack", "s3cret", `{"state":"high"}`); code != http.StatusConflict {
		t.Errorf("setting a gpio input: %d", code)
	}
}

// The weld-robot case across a restart: a latched pause survives it (a crash, a power
// cut, systemd restarting a hung agent), so the robot does not resume without the
// operator's acknowledge.
func TestLatchSurvivesARestart(t *testing.T) {
	state := t.TempDir()
	weld := func() *config.Config {
		cfg := testConfig(t, state, "")
		cfg.Actuators[0].Safe, cfg.Actuators[0].Initial = "low", "high" // low: paused
		cfg.Rules[0].Action = config.Action{Actuator: "line-stop", State: "low", Until: "ack"}
		return cfg
	}
	r := start(t, weld())
	testkit.WaitFor(t, 30*time.Second, "the pause to latch", func() bool { return r.status(t).Rules[0].Latched })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}

	r = start(t, weld())
	if st := r.status(t).Rules[0]; !st.Latched {
		t.Fatalf("after the restart the rule is not latched: %+v", st)
	}
	testkit.WaitFor(t, 30*time.Second, "detection after the restart", func() bool { return r.status(t).Cameras[0].Detect.Frames > 3 })
	if s := r.agent.parts().actuators["line-stop"].State(); s.State != "low" {
		t.Fatalf("the robot resumed without an acknowledge: %+v", s)
	}
	if ev := eventOfKind(r.status(t).Events, "latch"); ev == nil {
		t.Error("no event says the latch was restored")
	}
	if code, msg := r.post(t, "/api/rules/stop-on-person/ack", "s3cret", ""); code != http.StatusOK {
		t.Fatalf("ack: %d %s", code, msg)
	}
	if s := r.agent.parts().actuators["line-stop"].State(); s.State != "high" {
		t.Errorf("after the acknowledge: %+v", s)
	}
}
