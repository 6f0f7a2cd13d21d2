package agent

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/deploy"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// fleetStatus is the retained status as a fleet view reads it.
type fleetStatus struct {
	State   string `json:"state"`
	Device  string `json:"device"`
	Group   string `json:"group"`
	Version string `json:"version"`
	Reason  string `json:"reason"`
	Since   string `json:"since"`
	Models  []struct {
		Name, Version, State string
	} `json:"models"`
	Cameras []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"cameras"`
	Outbox *struct {
		Depth int `json:"depth"`
	} `json:"outbox"`
	Deployment *struct {
		ID    string `json:"id"`
		Phase string `json:"phase"`
	} `json:"deployment"`
}

// The retained status carries what a fleet view shows (cameras with their state, the
// outbox backlog, the last deployment) and is refreshed while connected when that
// changes; the offline status after a stop keeps the group and version.
func TestFleetRetainedStatus(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	sub := b.Subscribe(t, "cloud", "vigil/test-01/status")
	pub, _, _ := deploy.GenerateKey()
	cfg := deployConfig(t, t.TempDir(), b.URL, pub)
	cfg.Device.Group = "line-a"
	cfg.MQTT.TelemetryInterval = 50 * time.Millisecond
	r := start(t, cfg)
	last := func() (st fleetStatus) {
		msgs := sub.Messages()
		if len(msgs) > 0 {
			json.Unmarshal(msgs[len(msgs)-1].Payload, &st)
		}
		return st
	}
	testkit.WaitFor(t, 30*time.Second, "an online status with the door camera streaming", func() bool {
		st := last()
		return st.State == "online" && len(st.Cameras) == 1 && st.Cameras[0].Name == "door" && st.Cameras[0].State == "streaming"
	})
	st := last()
	if st.Device != "test-01" || st.Group != "line-a" || st.Version != "test" || st.Outbox == nil ||
		len(st.Models) != 1 || st.Models[0].Name != "default" || st.Models[0].Version != "0.1.1" || st.Deployment != nil {
		t.Errorf("online status %+v", st)
	}

	// A deployment (here a rollback with nothing to roll back to) shows at the next refresh.
	p := newPusher(t, b.URL)
	p.send(deploy.Target{Device: "test-01"}, &deploy.Manifest{Deployment: "d-fleet", Action: deploy.ActionRollback, Model: "default", Issued: time.Now().UTC()})
	final := waitPhase(t, r, "d-fleet")
	testkit.WaitFor(t, 10*time.Second, "the deployment in the retained status", func() bool {
		st := last()
		return st.State == "online" && st.Deployment != nil && st.Deployment.ID == "d-fleet" && st.Deployment.Phase == string(final.Phase)
	})
	// Unchanged, it is not published again and again: the telemetry interval is 50ms,
	// so a refresh every tick would show here.
	n := len(sub.Messages())
	testkit.WaitFor(t, 10*time.Second, "ten more telemetry messages", func() bool { return r.status(t).Outbox.NextSeq > 20 })
	before := r.status(t).Outbox.NextSeq
	testkit.WaitFor(t, 10*time.Second, "ten more telemetry messages", func() bool { return r.status(t).Outbox.NextSeq >= before+10 })
	extra := len(sub.Messages()) - n
	t.Logf("%d status messages over ten telemetry intervals", extra)
	if extra > 5 {
		t.Errorf("%d status messages over ten telemetry intervals with nothing changed: not refreshed on change only", extra)
	}

	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the offline status", func() bool { return last().State == "offline" })
	if st := last(); st.Device != "test-01" || st.Group != "line-a" || st.Version != "test" || st.Reason != "stopped" || st.Since == "" {
		t.Errorf("offline status %+v", st)
	}
}
