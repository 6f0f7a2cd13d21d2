package fleet_test

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"github.com/vigil-edge/vigil/internal/mqttdial"
	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/fleet"
	"github.com/vigil-edge/vigil/sync/mqttlink"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
	"github.com/vigil-edge/vigil/sync/mqttlink/linktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// publisher puts retained messages on the broker as devices would.
func publisher(t *testing.T, url string) func(topic, payload string) {
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("devices"))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return func(topic, payload string) {
		t.Helper()
		if tok := c.Publish(topic, 1, true, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", topic, tok.Error())
		}
	}
}

func byName(devices []fleet.Device) map[string]fleet.Device {
	m := map[string]fleet.Device{}
	for _, d := range devices {
		m[d.Device] = d
	}
	return m
}

func names(devices []fleet.Device) string {
	var n []string
	for _, d := range devices {
		n = append(n, d.Device)
	}
	return strings.Join(n, " ")
}

// Fifty devices in three groups, some offline, one from an older agent, one with only
// a model state, one whose status was cleared: a snapshot has every one of them, at
// once (the barrier, not a wait), and a group filter keeps exactly that group.
func TestSnapshotAndGroupFilter(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	pub := publisher(t, b.URL)
	groups := []string{"line-a", "line-b", "dock"}
	want := map[string][]string{}
	for i := range 50 {
		dev := "cam-" + string(rune('a'+i/26)) + string(rune('a'+i%26))
		g := groups[i%3]
		want[g] = append(want[g], dev)
		if i%5 == 4 {
			pub("vigil/"+dev+"/status", `{"state":"offline","device":"`+dev+`","group":"`+g+`","version":"1.3.0","reason":"lost"}`)
			continue
		}
		pub("vigil/"+dev+"/status", `{"state":"online","device":"`+dev+`","group":"`+g+`","version":"1.4.0",`+
			`"models":[{"name":"default","model":"yolox-nano","version":"0.1.1","backend":"onnxruntime","state":"loaded"}],`+
			`"cameras":[{"name":"door","state":"streaming","drift":0.31,"drifting":true},{"name":"yard","state":"reconnecting"}],`+
			`"outbox":{"depth":12,"oldest_s":300},"drift":0.31,"started":"2025-01-02T03:04:05Z",`+
			`"deployment":{"id":"d-old","phase":"downloading","model":"default","version":"0.2.0"}}`)
	}
	pub("vigil/cam-ab/models/state", `{"deployment":"d-7","model":"default","version":"0.2.0","phase":"rejected","error":"signature","progress":1}`)
	pub("vigil/legacy/status", `{"state":"online","device":"legacy","group":"dock","version":"1.0.0","models":[],"cameras":["door"]}`)
	pub("vigil/ghost/models/state", `{"deployment":"d-1","model":"default","version":"0.1.0","phase":"active"}`)
	pub("vigil/gone/status", `{"state":"online","device":"gone","group":"dock"}`)
	pub("vigil/gone/status", ``)
	want["dock"] = append(want["dock"], "legacy")

	ctx := context.Background()
	all, err := fleet.Snapshot(ctx, fleet.Options{Broker: mqttdial.Broker{URL: b.URL}})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 52 { // 50 + legacy + ghost
		t.Fatalf("%d devices: %s", len(all), names(all))
	}
	for i := 1; i < len(all); i++ {
		if all[i-1].Device >= all[i].Device {
			t.Fatalf("not sorted: %s", names(all))
		}
	}
	m := byName(all)
	if d := m["ghost"]; d.State != "unknown" || d.Deployment == nil || d.Deployment.Phase != "active" {
		t.Errorf("device with only a model state: %+v", d)
	}
	if _, ok := m["gone"]; ok {
		t.Error("a device whose status was cleared is listed")
	}
	aa := m["cam-aa"]
	if aa.State != "online" || aa.Version != "1.4.0" || aa.Group != "line-a" || len(aa.Models) != 1 || aa.Models[0].Version != "0.1.1" ||
		aa.Outbox == nil || aa.Outbox.Depth != 12 || aa.Drift == nil || *aa.Drift != 0.31 || !aa.Drifting() || aa.Started == nil ||
		aa.Deployment == nil || aa.Deployment.ID != "d-old" || len(aa.Cameras) != 2 || aa.Cameras[1].State != "reconnecting" {
		t.Errorf("cam-aa: %+v", aa)
	}
	// The retained models/state is newer than the status's copy of the deployment.
	if d := m["cam-ab"].Deployment; d == nil || d.ID != "d-7" || d.Phase != "rejected" || d.Error != "signature" {
		t.Errorf("cam-ab deployment: %+v", d)
	}
	if d := m["cam-ae"]; d.State != "offline" || d.Version != "1.3.0" || d.Group != "line-b" || d.Reason != "lost" || d.Since != nil {
		t.Errorf("offline cam-ae: %+v", d)
	}
	if d := m["legacy"]; len(d.Cameras) != 1 || d.Cameras[0].Name != "door" {
		t.Errorf("an older agent's cameras: %+v", d.Cameras)
	}

	for _, g := range groups {
		got, err := fleet.Snapshot(ctx, fleet.Options{Broker: mqttdial.Broker{URL: b.URL}, Group: g})
		if err != nil {
			t.Fatal(err)
		}
		if names(got) != strings.Join(want[g], " ") {
			t.Errorf("group %s: %s, want %s", g, names(got), strings.Join(want[g], " "))
		}
	}
	if got, err := fleet.Snapshot(ctx, fleet.Options{Broker: mqttdial.Broker{URL: b.URL}, Group: "nobody"}); err != nil || len(got) != 0 {
		t.Errorf("an empty group: %v %v", got, err)
	}

	var table bytes.Buffer
	fleet.WriteTable(&table, all, time.Now())
	for _, re := range []string{
		`(?m)^DEVICE\s+GROUP\s+STATE\s+VERSION\s+MODELS\s+CAMERAS\s+DEPLOYMENT\s+OUTBOX\s+DRIFT$`,
		`(?m)^cam-aa\s+line-a\s+online\s+1\.4\.0\s+default:0\.1\.1\s+1/2\s+downloading 0% 0\.2\.0 \(d-old\)\s+12 \(oldest 5m\)\s+0\.31 drifting$`,
		`(?m)^cam-ab\s+line-b\s+online\s+.*rejected 0\.2\.0 \(d-7\)`,
		`(?m)^cam-ae\s+line-b\s+offline \(lost\)\s+1\.3\.0\s+-\s+-\s+-\s+-\s+-$`,
		`(?m)^ghost\s+-\s+unknown\s+-\s+-\s+-\s+active 0\.1\.0 \(d-1\)`,
	} {
		if !regexp.MustCompile(re).MatchString(table.String()) {
			t.Errorf("table lacks %s:\n%s", re, table.String())
		}
	}
}

func TestBadOptions(t *testing.T) {
	if _, err := fleet.Snapshot(context.Background(), fleet.Options{}); err == nil || !strings.Contains(err.Error(), "no broker") {
		t.Errorf("no broker: %v", err)
	}
	if _, err := fleet.Snapshot(context.Background(), fleet.Options{Broker: mqttdial.Broker{URL: "tcp://127.0.0.1:1"}, Group: "a/+"}); err == nil || !strings.Contains(err.Error(), "group") {
		t.Errorf("bad group: %v", err)
	}
	b := brokertest.Start(t, brokertest.Options{Users: map[string]string{"op": "right"}})
	_, err := fleet.Snapshot(context.Background(), fleet.Options{Broker: mqttdial.Broker{URL: strings.Replace(b.URL, "tcp://", "tcp://op:wrong@", 1), Username: "op", Password: "wrong"}})
	if err == nil || !strings.Contains(err.Error(), "not Authorized") || strings.Contains(err.Error(), "wrong") {
		t.Errorf("wrong password: %v", err)
	}
}

// device is a real mqttlink.Link announcing itself, as the agent's link does.
func device(t *testing.T, url, id, group, version string) (stop func()) {
	_, stop = linktest.Start(t, mqttlink.Options{Brokers: []string{url}, Device: id,
		Online: func() map[string]any {
			return map[string]any{"group": group, "version": version, "outbox": map[string]any{"depth": 0}}
		},
		Offline: func() map[string]any { return map[string]any{"group": group, "version": version} },
	})
	return stop
}

// Watch gives the fleet at once, then each change: a device coming online, another
// stopping (offline, its version kept), a deployment's phase, a group filter applied
// to all of them.
func TestWatch(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	stopA := device(t, b.URL, "gate-a", "line-a", "1.4.0")
	pub := publisher(t, b.URL)
	pub("vigil/other/status", `{"state":"online","device":"other","group":"line-b","version":"1.4.0"}`)
	// gate-a online before the watch starts.
	testkit.WaitFor(t, 20*time.Second, "gate-a online in a snapshot", func() bool {
		d, err := fleet.Snapshot(context.Background(), fleet.Options{Broker: mqttdial.Broker{URL: b.URL}, Group: "line-a"})
		return err == nil && len(d) == 1 && d[0].State == "online"
	})

	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var updates [][]fleet.Device
	done := make(chan error, 1)
	go func() {
		done <- fleet.Watch(ctx, fleet.Options{Broker: mqttdial.Broker{URL: b.URL}, Group: "line-a", Interval: 20 * time.Millisecond}, func(d []fleet.Device) {
			mu.Lock()
			updates = append(updates, d)
			mu.Unlock()
		})
	}()
	latest := func() map[string]fleet.Device {
		mu.Lock()
		defer mu.Unlock()
		if len(updates) == 0 {
			return nil
		}
		return byName(updates[len(updates)-1])
	}
	testkit.WaitFor(t, 20*time.Second, "the first update", func() bool { return latest() != nil })
	if m := latest(); len(m) != 1 || m["gate-a"].State != "online" {
		t.Fatalf("first update: %+v", m)
	}

	device(t, b.URL, "gate-b", "line-a", "1.5.0")
	testkit.WaitFor(t, 20*time.Second, "gate-b online", func() bool { return latest()["gate-b"].State == "online" })
	stopA()
	testkit.WaitFor(t, 20*time.Second, "gate-a offline", func() bool { return latest()["gate-a"].State == "offline" })
	if a := latest()["gate-a"]; a.Version != "1.4.0" || a.Reason != "stopped" || a.Since == nil || time.Since(*a.Since) > time.Minute {
		t.Errorf("gate-a after its stop: %+v", a)
	}
	pub("vigil/gate-b/models/state", `{"deployment":"d-9","model":"default","version":"0.2.0","phase":"active","progress":1}`)
	testkit.WaitFor(t, 20*time.Second, "gate-b's deployment active", func() bool { d := latest()["gate-b"].Deployment; return d != nil && d.Phase == "active" })
	pub("vigil/other/status", `{"state":"offline","device":"other","group":"line-b"}`)
	// A last will seen arriving: offline since about now.
	pub("vigil/gate-c/status", `{"state":"offline","device":"gate-c","group":"line-a","version":"1.4.0","reason":"lost"}`)
	testkit.WaitFor(t, 20*time.Second, "gate-c offline", func() bool { return latest()["gate-c"].State == "offline" })
	if c := latest()["gate-c"]; c.Since == nil || time.Since(*c.Since) > time.Minute || c.Reason != "lost" {
		t.Errorf("a will seen arriving: %+v", c)
	}
	pub("vigil/gate-b/models/state", `{"deployment":"d-10","model":"default","version":"0.3.0","phase":"downloading","progress":0.5}`)
	testkit.WaitFor(t, 20*time.Second, "deployment d-10", func() bool { d := latest()["gate-b"].Deployment; return d != nil && d.ID == "d-10" })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, u := range updates {
		if _, ok := byName(u)["other"]; ok {
			t.Errorf("update %d shows a device of another group", i)
		}
	}
}
