package push_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/infer/modelfile"
	"github.com/vigil-edge/vigil/internal/mqttdial"
	"github.com/vigil-edge/vigil/sync/deploy"
	"github.com/vigil-edge/vigil/sync/deploy/push"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// signedBundle copies the bundled YOLOX-Nano and signs it; it returns the directory
// and the key line to trust.
func signedBundle(t testing.TB) (string, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "yolox-nano")
	if err := os.CopyFS(dir, os.DirFS("../../../assets/models/yolox-nano")); err != nil {
		t.Fatal(err)
	}
	pub, priv, err := deploy.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := deploy.SignBundle(dir, priv); err != nil {
		t.Fatal(err)
	}
	return dir, deploy.PublicKeyString(pub)
}

func otherKey(t testing.TB) string {
	pub, _, _ := ed25519.GenerateKey(nil)
	return deploy.PublicKeyString(pub)
}

// retained returns the retained messages under filter (topic -> payload), read by a
// fresh client; a message to its own topic, echoed after them, says all have come.
func retained(t testing.TB, b *brokertest.Broker, filter string) map[string][]byte {
	t.Helper()
	var mu sync.Mutex
	got := map[string][]byte{}
	back := make(chan struct{})
	c := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL).SetClientID("inspect-" + filepath.Base(t.TempDir())))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(50)
	c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		if m.Retained() {
			mu.Lock()
			got[m.Topic()] = append([]byte(nil), m.Payload()...)
			mu.Unlock()
		}
	}).WaitTimeout(10 * time.Second)
	c.Subscribe("test/barrier", 1, func(paho.Client, paho.Message) { close(back) }).WaitTimeout(10 * time.Second)
	c.Publish("test/barrier", 1, false, "x").WaitTimeout(10 * time.Second)
	select {
	case <-back:
	case <-time.After(10 * time.Second):
		t.Fatal("barrier message did not come back")
	}
	mu.Lock()
	defer mu.Unlock()
	return got
}

// deploymentTopics are the retained deploy and chunk topics left on the broker.
func deploymentTopics(t testing.TB, b *brokertest.Broker) []string {
	var out []string
	for topic := range retained(t, b, "vigil/#") {
		if strings.Contains(topic, "/models/deploy") || strings.Contains(topic, "/models/chunks/") {
			out = append(out, topic)
		}
	}
	slices.Sort(out)
	return out
}

func opts(b *brokertest.Broker) push.Options {
	return push.Options{Broker: mqttdial.Broker{URL: b.URL}, Timeout: time.Minute}
}

func TestPushToDeviceGoesActive(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, key := signedBundle(t)
	dev := startDevice(t, b, "gate-07", "", []string{otherKey(t), key})

	o := opts(b)
	o.Device = "gate-07"
	o.ChunkSize = 64 << 10 // many chunks
	var progress []int64
	var total int64
	o.Progress = func(sent, tot int64) { progress = append(progress, sent); total = tot }
	var seen []deploy.Phase
	o.OnState = func(device string, s deploy.State) {
		if device != "gate-07" {
			t.Errorf("state of %s reported", device)
		}
		seen = append(seen, s.Phase)
	}
	res, err := push.Push(context.Background(), bundle, o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() || len(res.Devices) != 1 {
		t.Fatalf("result %+v", res)
	}
	if d := res.Devices[0]; d.Device != "gate-07" || d.Phase != deploy.PhaseActive || d.Version != "0.1.1" || d.Reason != "" {
		t.Fatalf("row %+v", d)
	}
	sig, _ := deploy.ReadSignature(bundle)
	if total != sig.Size || len(progress) != int((sig.Size+64<<10-1)/(64<<10)) || progress[len(progress)-1] != sig.Size || !slices.IsSorted(progress) {
		t.Errorf("progress %v of %d, want one call per chunk up to %d", progress, total, sig.Size)
	}
	if seen[len(seen)-1] != deploy.PhaseActive {
		t.Errorf("OnState saw %v", seen)
	}
	want := []deploy.Phase{deploy.PhaseReceived, deploy.PhaseDownloading, deploy.PhaseVerifying, deploy.PhaseStaging, deploy.PhaseWarming, deploy.PhaseActive}
	if got := dev.Phases(res.Deployment); !slices.Equal(got, want) {
		t.Errorf("device went through %v, want %v", got, want)
	}
	// The device holds the very bundle that was signed, and it fits its model.
	active := dev.Active("default")
	if active == "" {
		t.Fatal("no active bundle on the device")
	}
	var buf bytes.Buffer
	if _, sha, err := deploy.Pack(active, &buf); err != nil || sha != sig.SHA256 {
		t.Errorf("device's bundle packs to %s (%v), signed %s", sha, err, sig.SHA256)
	}
	if _, _, err := modelfile.CheckBundle(active); err != nil {
		t.Errorf("device's bundle: %v", err)
	}
	var table strings.Builder
	res.WriteTable(&table)
	if !strings.Contains(table.String(), "DEVICE") || !regexpMatch(`gate-07\s+active\s+0\.1\.1\s+-`, table.String()) {
		t.Errorf("table:\n%s", table.String())
	}
	// Retained chunks and manifest are cleared; the device's retained state stays.
	if left := deploymentTopics(t, b); len(left) != 0 {
		t.Errorf("retained deployment messages left: %v", left)
	}
	if _, ok := retained(t, b, "vigil/gate-07/models/state")["vigil/gate-07/models/state"]; !ok {
		t.Error("the device's retained state is gone")
	}
}

func TestPushRejectedByUntrustingDevice(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, _ := signedBundle(t)
	dev := startDevice(t, b, "gate-07", "", []string{otherKey(t)})
	o := opts(b)
	o.Device = "gate-07"
	res, err := push.Push(context.Background(), bundle, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK() {
		t.Fatal("OK although the device rejected the bundle")
	}
	d := res.Devices[0]
	if d.Phase != deploy.PhaseRejected || !strings.Contains(d.Reason, "untrusted key") {
		t.Fatalf("row %+v", d)
	}
	if dev.Active("default") != "" {
		t.Error("a rejected bundle became active")
	}
	var table strings.Builder
	res.WriteTable(&table)
	if !regexpMatch(`gate-07\s+rejected\s+0\.1\.1\s+verify deployment .*untrusted key`, table.String()) {
		t.Errorf("table:\n%s", table.String())
	}
	if left := deploymentTopics(t, b); len(left) != 0 {
		t.Errorf("retained deployment messages left: %v", left)
	}
}

func TestPushTimesOutWithoutAnswer(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, _ := signedBundle(t)
	o := opts(b)
	o.Device = "nobody"
	o.Timeout = 500 * time.Millisecond
	res, err := push.Push(context.Background(), bundle, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK() {
		t.Fatal("OK without any answer")
	}
	if d := res.Devices[0]; d.Device != "nobody" || d.Phase != "" || !strings.Contains(d.Reason, "no final phase within 500ms") {
		t.Fatalf("row %+v", d)
	}
	var table strings.Builder
	res.WriteTable(&table)
	if !regexpMatch(`nobody\s+no answer\s+-\s+no final phase within 500ms`, table.String()) {
		t.Errorf("table:\n%s", table.String())
	}
	if left := deploymentTopics(t, b); len(left) != 0 {
		t.Errorf("retained deployment messages left after a timeout: %v", left)
	}
}

// TestPushToGroup: the group's devices are found by their retained status; a device
// of another group takes no part.
func TestPushToGroup(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, key := signedBundle(t)
	trusted := []string{key}
	a := startDevice(t, b, "cam-a", "line-3", trusted)
	c := startDevice(t, b, "cam-c", "line-3", trusted, func(d *fakeDevice) { d.failWarmup = true })
	other := startDevice(t, b, "cam-x", "line-4", trusted)
	bDev := startDevice(t, b, "cam-b", "line-3", trusted)

	o := opts(b)
	o.Group = "line-3"
	res, err := push.Push(context.Background(), bundle, o)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range res.Devices {
		names = append(names, d.Device)
	}
	if !slices.Equal(names, []string{"cam-a", "cam-b", "cam-c"}) {
		t.Fatalf("devices %v, want cam-a, cam-b, cam-c", names)
	}
	if res.OK() {
		t.Error("OK although cam-c rolled back")
	}
	for _, d := range res.Devices {
		want := deploy.PhaseActive
		if d.Device == "cam-c" {
			want = deploy.PhaseRolledBack
		}
		if d.Phase != want {
			t.Errorf("%s: %+v, want %s", d.Device, d, want)
		}
	}
	if !strings.Contains(res.Devices[2].Reason, "warm-up") {
		t.Errorf("cam-c's reason %q", res.Devices[2].Reason)
	}
	if a.Active("default") == "" || bDev.Active("default") == "" || c.Active("default") != "" {
		t.Error("active bundles do not match the phases")
	}
	if got := other.Phases(res.Deployment); len(got) != 0 {
		t.Errorf("a device of another group took part: %v", got)
	}
	if left := deploymentTopics(t, b); len(left) != 0 {
		t.Errorf("retained deployment messages left: %v", left)
	}
}

// A group's device whose retained status is offline (its last will, or a clean stop)
// is listed as skipped and not waited for: one powered-off device does not hold the
// push for its timeout, and does not make it fail. A group with none online is refused.
func TestPushToGroupSkipsOfflineDevices(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, key := signedBundle(t)
	startDevice(t, b, "cam-a", "line-3", []string{key})
	announce(t, b, "cam-z", `{"state":"offline","group":"line-3","version":"1.0.0"}`)
	o := opts(b)
	o.Group, o.Timeout = "line-3", 5*time.Minute
	res, err := push.Push(context.Background(), bundle, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Devices) != 2 || res.Devices[0].Phase != deploy.PhaseActive || !res.OK() {
		t.Fatalf("rows %+v, OK %v", res.Devices, res.OK())
	}
	if z := res.Devices[1]; z.Device != "cam-z" || !z.Skipped || !strings.Contains(z.Reason, "offline when the push started") {
		t.Errorf("offline device row %+v", z)
	}

	b2 := brokertest.Start(t, brokertest.Options{})
	announce(t, b2, "cam-y", `{"state":"offline","group":"line-9"}`)
	o = opts(b2)
	o.Group = "line-9"
	if res, err := push.Push(context.Background(), bundle, o); err == nil || !strings.Contains(err.Error(), "no device of group line-9 is online") {
		t.Errorf("push to a group all offline: %+v, %v", res, err)
	}
}

func TestPushToEmptyGroup(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, key := signedBundle(t)
	startDevice(t, b, "cam-x", "line-4", []string{key})
	o := opts(b)
	o.Group = "line-3"
	res, err := push.Push(context.Background(), bundle, o)
	if err == nil || !strings.Contains(err.Error(), "no device of group line-3") || res != nil {
		t.Fatalf("push to a group without devices: %+v, %v", res, err)
	}
	if left := deploymentTopics(t, b); len(left) != 0 {
		t.Errorf("published although nothing could answer: %v", left)
	}
}

// TestPushResumesAfterDeviceRestart: the device stops halfway through the chunks and
// starts again from its state directory; the retained chunks come again and the
// transfer completes from what it had on disk.
func TestPushResumesAfterDeviceRestart(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, key := signedBundle(t)
	dev := startDevice(t, b, "gate-07", "", []string{key}, func(d *fakeDevice) { d.restartAfter = 20 })
	o := opts(b)
	o.Device = "gate-07"
	o.ChunkSize = 64 << 10
	res, err := push.Push(context.Background(), bundle, o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() {
		t.Fatalf("result %+v", res.Devices)
	}
	dev.mu.Lock()
	stored := dev.stored
	dev.mu.Unlock()
	sig, _ := deploy.ReadSignature(bundle)
	chunks := int((sig.Size + 64<<10 - 1) / (64 << 10))
	// 20 before the restart, then every chunk again (the 20 as duplicates, ignored).
	if stored < chunks+20 {
		t.Errorf("device stored %d chunk messages for %d chunks: the restart did not happen halfway", stored, chunks)
	}
}

func TestPushRollback(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, key := signedBundle(t)
	dev := startDevice(t, b, "gate-07", "", []string{key})
	o := opts(b)
	o.Device = "gate-07"
	if res, err := push.Push(context.Background(), bundle, o); err != nil || !res.OK() {
		t.Fatalf("deploy: %+v, %v", res, err)
	}
	o.Rollback = true
	res, err := push.Push(context.Background(), "", o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() || res.Devices[0].Phase != deploy.PhaseRolledBack {
		t.Fatalf("rollback: %+v", res.Devices)
	}
	if dev.Active("default") != "" {
		t.Error("after the rollback the device still has the pushed bundle active")
	}
	if left := deploymentTopics(t, b); len(left) != 0 {
		t.Errorf("retained deployment messages left: %v", left)
	}
}

func TestPushViaURL(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, key := signedBundle(t)
	var archive bytes.Buffer
	if _, _, err := deploy.Pack(bundle, &archive); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/good.tar":
			w.Write(archive.Bytes())
		case "/stale.tar":
			w.Write(archive.Bytes()[:archive.Len()-512])
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	dev := startDevice(t, b, "gate-07", "", []string{key})

	o := opts(b)
	o.Device = "gate-07"
	o.Via = deploy.ViaURL
	for _, bad := range []struct{ path, want string }{
		{"/stale.tar", "not the signed archive"},
		{"/missing.tar", "404"},
	} {
		o.URL = srv.URL + bad.path
		if res, err := push.Push(context.Background(), bundle, o); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("push with --url %s: %+v, %v; want an error saying %q", bad.path, res, err, bad.want)
		}
	}
	if left := deploymentTopics(t, b); len(left) != 0 {
		t.Errorf("published although the URL was wrong: %v", left)
	}
	o.URL = srv.URL + "/good.tar"
	res, err := push.Push(context.Background(), bundle, o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() {
		t.Fatalf("result %+v", res.Devices)
	}
	if dev.Active("default") == "" {
		t.Error("no active bundle after the URL push")
	}
}

func TestPushRefusesBadBundles(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	o := opts(b)
	o.Device = "gate-07"

	unsigned := filepath.Join(t.TempDir(), "b")
	os.CopyFS(unsigned, os.DirFS("../../../assets/models/yolox-nano"))
	if _, err := push.Push(context.Background(), unsigned, o); err == nil || !strings.Contains(err.Error(), "not signed") {
		t.Errorf("unsigned bundle: %v", err)
	}
	changed, _ := signedBundle(t)
	os.WriteFile(filepath.Join(changed, "NOTICE"), []byte("edited after signing"), 0o644)
	if _, err := push.Push(context.Background(), changed, o); err == nil || !strings.Contains(err.Error(), "changed after it was signed") {
		t.Errorf("changed bundle: %v", err)
	}
	if left := deploymentTopics(t, b); len(left) != 0 {
		t.Errorf("published a refused bundle: %v", left)
	}
	bundle, _ := signedBundle(t)
	for name, mod := range map[string]func(*push.Options){
		"no target":   func(o *push.Options) { o.Device = "" },
		"two targets": func(o *push.Options) { o.Group = "g" },
		"wildcard":    func(o *push.Options) { o.Device = "+" },
		"bad via":     func(o *push.Options) { o.Via = "ftp" },
		"url missing": func(o *push.Options) { o.Via = deploy.ViaURL },
		"bad id":      func(o *push.Options) { o.Deployment = "../x" },
		"bad model":   func(o *push.Options) { o.Model = "a b" },
	} {
		oo := o
		mod(&oo)
		if _, err := push.Push(context.Background(), bundle, oo); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	o.Broker.URL = "tcp://127.0.0.1:1"
	if _, err := push.Push(context.Background(), bundle, o); err == nil || !strings.Contains(err.Error(), "connect to tcp://127.0.0.1:1") {
		t.Errorf("unreachable broker: %v", err)
	}
}

func TestProgressPrinter(t *testing.T) {
	var plain strings.Builder
	p := push.ProgressPrinter(&plain, false)
	for sent := int64(0); sent <= 1000; sent += 50 {
		p(sent, 1000)
	}
	lines := strings.Split(strings.TrimSpace(plain.String()), "\n")
	if len(lines) != 11 || !strings.HasPrefix(lines[10], "sent 100%") {
		t.Errorf("plain progress: %q", lines)
	}
	var tty strings.Builder
	p = push.ProgressPrinter(&tty, true)
	p(500, 1000)
	p(1000, 1000)
	if out := tty.String(); !strings.Contains(out, "\rsending [###############...............]  50%") || !strings.HasSuffix(out, "100% 0.0 MB of 0.0 MB\n") {
		t.Errorf("tty progress: %q", out)
	}
}

// TestPushSurvivesBrokerRestart: the broker restarts (without persistence: its retained
// messages are gone) when the device has a few chunks. Both sides reconnect; the push
// publishes the chunks and the manifest again, and the device completes from what it
// kept on disk.
func TestPushSurvivesBrokerRestart(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	bundle, key := signedBundle(t)
	var once sync.Once
	restarted := make(chan struct{})
	dev := startDevice(t, b, "gate-07", "", []string{key}, func(d *fakeDevice) {
		d.afterChunk = func(stored int) {
			if stored == 10 {
				once.Do(func() {
					b.Stop()
					// What the broker had sent and the device not yet handled is
					// lost with the connection, as far as this test goes.
					for len(d.inbox) > 0 {
						<-d.inbox
					}
					b.Restart()
					close(restarted)
				})
			}
		}
	})
	o := opts(b)
	o.Device = "gate-07"
	o.ChunkSize = 64 << 10
	o.Timeout = 30 * time.Second
	res, err := push.Push(context.Background(), bundle, o)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-restarted:
	default:
		t.Fatal("the broker was never restarted")
	}
	if !res.OK() {
		t.Fatalf("result %+v", res.Devices)
	}
	if dev.Active("default") == "" {
		t.Error("no active bundle on the device")
	}
	if left := deploymentTopics(t, b); len(left) != 0 {
		t.Errorf("retained deployment messages left: %v", left)
	}
}
