package push_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/sync/deploy"
	"github.com/vigil-edge/vigil/sync/deploy/push"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// manifestWatch records every non-empty manifest published on any deploy topic while
// a test runs, and whether any chunk was published.
type manifestWatch struct {
	t      *testing.T
	client paho.Client
	back   chan struct{}

	mu        sync.Mutex
	manifests []string // deploy topics, in order
	chunks    int
}

func watchManifests(t *testing.T, b *brokertest.Broker) *manifestWatch {
	w := &manifestWatch{t: t, back: make(chan struct{}, 1)}
	w.client = paho.NewClient(paho.NewClientOptions().AddBroker(b.URL).SetClientID("watch-" + t.Name()))
	if tok := w.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { w.client.Disconnect(50) })
	for _, filter := range []string{"vigil/+/models/#", "vigil/group/+/models/#"} {
		tok := w.client.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
			if len(m.Payload()) == 0 {
				return // a retained message cleared
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			switch {
			case strings.HasSuffix(m.Topic(), "/models/deploy"):
				w.manifests = append(w.manifests, m.Topic())
			case strings.Contains(m.Topic(), "/models/chunks/"):
				w.chunks++
			}
		})
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe: %v", tok.Error())
		}
	}
	if tok := w.client.Subscribe("test/watch-barrier", 1, func(paho.Client, paho.Message) { w.back <- struct{}{} }); !tok.WaitTimeout(10 * time.Second) {
		t.Fatal("subscribe barrier")
	}
	return w
}

// seen returns what was published up to now: a message to the watcher's own topic,
// echoed after what the broker had already accepted from others, marks the point.
func (w *manifestWatch) seen() (manifests []string, chunks int) {
	w.t.Helper()
	w.client.Publish("test/watch-barrier", 1, false, "x").WaitTimeout(10 * time.Second)
	select {
	case <-w.back:
	case <-time.After(10 * time.Second):
		w.t.Fatal("barrier message did not come back")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.manifests), w.chunks
}

// announce publishes a retained status for a device that is not running, as the
// agent would (state, group and its models).
func announce(t *testing.T, b *brokertest.Broker, device, payload string) {
	c := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL).SetClientID("announce-" + device))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(50)
	if tok := c.Publish(deploy.StatusTopic("vigil", device), 1, true, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish status: %v", tok.Error())
	}
}

func rowsOf(res *push.Result) map[string]push.DeviceResult {
	out := map[string]push.DeviceResult{}
	for _, d := range res.Devices {
		out[d.Device] = d
	}
	return out
}

func tableOf(res *push.Result) string {
	var b strings.Builder
	res.WriteTable(&b)
	return b.String()
}

// The canary rejects the bundle: no other device is attempted, the table lists them
// as skipped, the result is not OK, and nothing stays on the broker.
func TestStagedCanaryRejectsStopsRollout(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, key := signedBundle(t)
	canary := startDevice(t, b, "cam-a", "line-3", []string{otherKey(t)}) // does not trust the signer
	var rest []*fakeDevice
	for _, id := range []string{"cam-b", "cam-c", "cam-d"} {
		rest = append(rest, startDevice(t, b, id, "line-3", []string{key}))
	}
	w := watchManifests(t, b)

	o := opts(b)
	o.Group = "line-3"
	o.Canary = "1"
	var events []push.WaveEvent
	o.OnWave = func(e push.WaveEvent) { events = append(events, e) }
	res, err := push.Push(context.Background(), bundle, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK() || !res.Staged || res.Failures() != 1 || !strings.Contains(res.Stopped, "1 failed by wave 1, over --max-failures 0") {
		t.Fatalf("result OK=%v stopped %q:\n%s", res.OK(), res.Stopped, tableOf(res))
	}
	rows := rowsOf(res)
	if r := rows["cam-a"]; r.Wave != 1 || r.Phase != deploy.PhaseRejected || !strings.Contains(r.Reason, "untrusted key") {
		t.Errorf("canary row %+v", r)
	}
	for _, d := range rest {
		if r := rows[d.id]; !r.Skipped || r.Wave != 2 || r.Phase != "" || !strings.Contains(r.Reason, "not attempted") {
			t.Errorf("%s: row %+v, want skipped in wave 2", d.id, r)
		}
		if got := d.Phases(res.Deployment); len(got) != 0 {
			t.Errorf("%s took part although the canary failed: %v", d.id, got)
		}
	}
	if got := canary.Phases(res.Deployment); !slices.Equal(got, []deploy.Phase{deploy.PhaseReceived, deploy.PhaseRejected}) {
		t.Errorf("canary went through %v", got)
	}
	table := tableOf(res)
	if !regexpMatch(`(?m)^WAVE\s+DEVICE\s+PHASE`, table) ||
		!regexpMatch(`(?m)^1 \(canary\)\s+cam-a\s+rejected\s+0\.1\.1\s+verify deployment`, table) ||
		!regexpMatch(`(?m)^2\s+cam-d\s+skipped\s+-\s+not attempted: 1 failed by wave 1`, table) {
		t.Errorf("table:\n%s", table)
	}
	// Only the canary's own deploy topic ever carried the manifest.
	if manifests, _ := w.seen(); !slices.Equal(manifests, []string{"vigil/cam-a/models/deploy"}) {
		t.Errorf("manifests published on %v", manifests)
	}
	if len(events) != 2 || events[0].Wave != 1 || events[0].Waves != 2 || !events[0].PerDevice ||
		!slices.Equal(events[0].Devices, []string{"cam-a"}) || !events[1].Done || events[1].Failed != 1 {
		t.Errorf("wave events %+v", events)
	}
	if left := deploymentTopics(t, b); len(left) != 0 {
		t.Errorf("retained deployment messages left: %v", left)
	}
}

// The canary (25% of 4: one device) goes active, then the rest get the deployment
// once on the group topics; a device retained as offline is skipped and not waited
// for; the canary does not take the group manifest a second time.
func TestStagedCanaryThenRest(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, key := signedBundle(t)
	devs := map[string]*fakeDevice{}
	for _, id := range []string{"cam-d", "cam-b", "cam-a", "cam-c"} {
		devs[id] = startDevice(t, b, id, "line-3", []string{key})
	}
	announce(t, b, "cam-z", `{"state":"offline","group":"line-3"}`)
	w := watchManifests(t, b)

	o := opts(b)
	o.Group = "line-3"
	o.Canary = "25%"
	o.ChunkSize = 512 << 10
	var events []push.WaveEvent
	o.OnWave = func(e push.WaveEvent) { events = append(events, e) }
	res, err := push.Push(context.Background(), bundle, o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() || res.Stopped != "" || res.Failures() != 0 {
		t.Fatalf("result OK=%v stopped %q:\n%s", res.OK(), res.Stopped, tableOf(res))
	}
	var order []string
	for _, d := range res.Devices {
		order = append(order, d.Device)
	}
	if !slices.Equal(order, []string{"cam-a", "cam-b", "cam-c", "cam-d", "cam-z"}) {
		t.Errorf("rows in order %v, want by wave then device, the skipped last", order)
	}
	rows := rowsOf(res)
	for id, d := range devs {
		want := 2
		if id == "cam-a" {
			want = 1
		}
		if r := rows[id]; r.Wave != want || r.Phase != deploy.PhaseActive || r.Skipped {
			t.Errorf("%s: row %+v, want active in wave %d", id, r, want)
		}
		if d.Active("default") == "" {
			t.Errorf("%s has no active bundle", id)
		}
	}
	// The group manifest reached the canary too; it had seen the deployment.
	wantPhases := []deploy.Phase{deploy.PhaseReceived, deploy.PhaseDownloading, deploy.PhaseVerifying, deploy.PhaseStaging, deploy.PhaseWarming, deploy.PhaseActive}
	if got := devs["cam-a"].Phases(res.Deployment); !slices.Equal(got, wantPhases) {
		t.Errorf("canary went through %v", got)
	}
	if r := rows["cam-z"]; !r.Skipped || r.Wave != 0 || !strings.Contains(r.Reason, "offline") {
		t.Errorf("offline device row %+v", r)
	}
	if !regexpMatch(`(?m)^-\s+cam-z\s+skipped\s+-\s+offline when the rollout was planned`, tableOf(res)) {
		t.Errorf("table:\n%s", tableOf(res))
	}
	// The canary's manifest on its own topic, then one on the group's; the chunks
	// twice (per device for the canary, once for the group).
	manifests, chunks := w.seen()
	if !slices.Equal(manifests, []string{"vigil/cam-a/models/deploy", "vigil/group/line-3/models/deploy"}) {
		t.Errorf("manifests published on %v", manifests)
	}
	sig, _ := deploy.ReadSignature(bundle)
	if n := int((sig.Size + 512<<10 - 1) / (512 << 10)); chunks != 2*n {
		t.Errorf("%d chunk messages, want %d (%d chunks, twice)", chunks, 2*n, n)
	}
	if len(events) != 4 || events[2].PerDevice || !slices.Equal(events[2].Devices, []string{"cam-b", "cam-c", "cam-d"}) {
		t.Errorf("wave events %+v", events)
	}
	if left := deploymentTopics(t, b); len(left) != 0 {
		t.Errorf("retained deployment messages left: %v", left)
	}
}

// With --max-failures 1, one device rolling back in the second wave does not stop
// the rollout: the third wave runs and the result is OK with one failure. With 0 the
// rollout stops after the second wave.
func TestStagedMaxFailures(t *testing.T) {
	type row struct {
		wave    int
		phase   deploy.Phase
		skipped bool
	}
	active, rolledBack := deploy.PhaseActive, deploy.PhaseRolledBack
	for _, tc := range []struct {
		maxFailures int
		ok          bool
		want        map[string]row
	}{
		{1, true, map[string]row{
			"cam-a": {1, active, false}, "cam-b": {2, active, false}, "cam-c": {2, rolledBack, false},
			"cam-d": {3, active, false}, "cam-e": {3, active, false},
		}},
		{0, false, map[string]row{
			"cam-a": {1, active, false}, "cam-b": {2, active, false}, "cam-c": {2, rolledBack, false},
			"cam-d": {3, "", true}, "cam-e": {3, "", true},
		}},
	} {
		b := brokertest.Start(t, brokertest.Options{})
		bundle, key := signedBundle(t)
		devs := map[string]*fakeDevice{}
		for _, id := range []string{"cam-a", "cam-b", "cam-c", "cam-d", "cam-e"} {
			devs[id] = startDevice(t, b, id, "line-3", []string{key}, func(d *fakeDevice) { d.failWarmup = d.id == "cam-c" })
		}
		o := opts(b)
		o.Group = "line-3"
		o.Canary = "1"
		o.Wave = "2"
		o.MaxFailures = tc.maxFailures
		res, err := push.Push(context.Background(), bundle, o)
		if err != nil {
			t.Fatal(err)
		}
		if res.OK() != tc.ok || res.Failures() != 1 || (res.Stopped == "") != tc.ok {
			t.Errorf("--max-failures %d: OK=%v failures %d stopped %q:\n%s", tc.maxFailures, res.OK(), res.Failures(), res.Stopped, tableOf(res))
		}
		for id, r := range rowsOf(res) {
			if w := tc.want[id]; r.Wave != w.wave || r.Phase != w.phase || r.Skipped != w.skipped {
				t.Errorf("--max-failures %d: %s: row %+v, want %+v", tc.maxFailures, id, r, w)
			}
		}
		if got := devs["cam-e"].Active("default") != ""; got != tc.ok {
			t.Errorf("--max-failures %d: the third wave ran: %v", tc.maxFailures, got)
		}
	}
}

// A dry run prints the plan (percentages rounded up, the offline device skipped, the
// model's version from the status) and publishes no manifest and no chunk.
func TestStagedDryRunPublishesNothing(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, key := signedBundle(t)
	var devs []*fakeDevice
	for _, id := range []string{"cam-a", "cam-b", "cam-c", "cam-d", "cam-e", "cam-f"} {
		devs = append(devs, startDevice(t, b, id, "line-3", []string{key}))
	}
	announce(t, b, "cam-g", `{"state":"online","group":"line-3","models":[{"name":"default","version":"0.1.0"},{"name":"other","version":"9"}]}`)
	announce(t, b, "cam-z", `{"state":"offline","group":"line-3"}`)
	w := watchManifests(t, b)

	o := opts(b)
	o.Group = "line-3"
	o.Canary = "10%" // of 7 online: 0.7, rounded up to 1
	o.Wave = "30%"   // of 7: 2.1, rounded up to 3
	plan, err := push.DryRun(context.Background(), bundle, o)
	if err != nil {
		t.Fatal(err)
	}
	var waves [][]string
	for _, w := range plan.Waves {
		var ids []string
		for _, d := range w.Devices {
			ids = append(ids, d.Device)
		}
		waves = append(waves, ids)
	}
	want := [][]string{{"cam-a"}, {"cam-b", "cam-c", "cam-d"}, {"cam-e", "cam-f", "cam-g"}}
	if !slices.EqualFunc(waves, want, slices.Equal) {
		t.Errorf("waves %v, want %v", waves, want)
	}
	if !plan.Waves[0].PerDevice || !plan.Waves[1].PerDevice || plan.Waves[2].PerDevice {
		t.Errorf("every wave but the last per device: %+v", plan.Waves)
	}
	if len(plan.Skipped) != 1 || plan.Skipped[0].Device != "cam-z" {
		t.Errorf("skipped %+v", plan.Skipped)
	}
	var out strings.Builder
	plan.Write(&out)
	for _, re := range []string{
		`(?m)^WAVE\s+DEVICE\s+STATUS\s+VERSION\s+NOTE$`,
		`(?m)^1 \(canary\)\s+cam-a\s+online\s+-\s+-$`,
		`(?m)^3\s+cam-g\s+online\s+0\.1\.0\s+-$`,
		`(?m)^-\s+cam-z\s+offline\s+-\s+skipped: offline, not waited for$`,
		`(?m)^wave 1 \(canary\): 1 device\(s\); published as a manifest and the chunks on each device's topics \(1 x 3\.\d MB\)$`,
		`(?m)^wave 3: 3 device\(s\); published as the manifest and the chunks once on the group line-3 topics \(3\.\d MB\)$`,
	} {
		if !regexpMatch(re, out.String()) {
			t.Errorf("plan does not match %s:\n%s", re, out.String())
		}
	}
	if manifests, chunks := w.seen(); len(manifests) != 0 || chunks != 0 {
		t.Errorf("a dry run published %v and %d chunks", manifests, chunks)
	}
	for _, d := range devs {
		d.mu.Lock()
		if len(d.states) != 0 {
			t.Errorf("%s reported %v during a dry run", d.id, d.states)
		}
		d.mu.Unlock()
	}
}

func TestStagedRefusesBadOptions(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, key := signedBundle(t)
	startDevice(t, b, "cam-a", "line-3", []string{key})
	announce(t, b, "cam-z", `{"state":"offline","group":"line-3"}`)
	for name, tc := range map[string]struct {
		mod  func(*push.Options)
		want string
	}{
		"device target":   {func(o *push.Options) { o.Group, o.Device = "", "cam-a" }, "needs --group"},
		"both canaries":   {func(o *push.Options) { o.CanaryDevices = []string{"cam-a"} }, "one of --canary and --canary-devices"},
		"zero":            {func(o *push.Options) { o.Canary = "0" }, `--canary "0"`},
		"over 100%":       {func(o *push.Options) { o.Canary = "150%" }, `--canary "150%"`},
		"not a number":    {func(o *push.Options) { o.Canary = "a few" }, `--canary "a few"`},
		"bad wave":        {func(o *push.Options) { o.Wave = "-1" }, `--wave "-1"`},
		"negative max":    {func(o *push.Options) { o.MaxFailures = -1 }, "negative"},
		"wave alone":      {func(o *push.Options) { o.Canary = ""; o.Wave = "2" }, "go with --canary"},
		"unknown canary":  {func(o *push.Options) { o.Canary = ""; o.CanaryDevices = []string{"cam-q"} }, "cam-q is not a device of group line-3"},
		"offline canary":  {func(o *push.Options) { o.Canary = ""; o.CanaryDevices = []string{"cam-z"} }, "cam-z is offline"},
		"wildcard canary": {func(o *push.Options) { o.Canary = ""; o.CanaryDevices = []string{"+"} }, "cannot be a device id"},
	} {
		o := opts(b)
		o.Group = "line-3"
		o.Canary = "1"
		tc.mod(&o)
		if res, err := push.Push(context.Background(), bundle, o); err == nil || res != nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %+v, %v; want an error saying %q", name, res, err, tc.want)
		}
	}
	if left := deploymentTopics(t, b); len(left) != 0 {
		t.Errorf("published with bad options: %v", left)
	}
}
