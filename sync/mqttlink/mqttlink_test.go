package mqttlink_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/mqttlink"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
	"github.com/vigil-edge/vigil/sync/outbox"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const device = "dev-1"

func newOutbox(t testing.TB) *outbox.Outbox {
	t.Helper()
	ob, err := outbox.Open(outbox.Options{
		Path: filepath.Join(t.TempDir(), "outbox"), Device: device, Fsync: outbox.FsyncInterval, MaxBytes: 256 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ob.Close() })
	return ob
}

func enqueue(t testing.TB, ob *outbox.Outbox, n int) {
	t.Helper()
	for i := range n {
		class, kind := outbox.ClassEvent, "detection"
		if i%3 == 0 {
			class, kind = outbox.ClassTelemetry, "telemetry"
		}
		if _, err := ob.Enqueue(context.Background(), kind, class, map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
}

// startLink runs a link until the test ends.
func startLink(t testing.TB, ob *outbox.Outbox, opts mqttlink.Options) *mqttlink.Link {
	t.Helper()
	opts.Device = device
	if opts.BackoffMin == 0 {
		opts.BackoffMin, opts.BackoffMax = 20*time.Millisecond, 200*time.Millisecond
	}
	opts.ConnectTimeout = 3 * time.Second
	opts.Online = func() map[string]any { return map[string]any{"version": "test"} }
	l, err := mqttlink.New(ob, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return l
}

// checkAll asserts that every seq from 1 to n arrived, and reports duplicates and
// reorderings (allowed after an outage: delivery is at-least-once).
func checkAll(t *testing.T, seqs []uint64, n int) (dups, inversions int) {
	t.Helper()
	seen := map[uint64]bool{}
	var prev uint64
	for _, s := range seqs {
		if seen[s] {
			dups++
		}
		seen[s] = true
		if s < prev {
			inversions++
		}
		prev = s
	}
	var missing []uint64
	for s := uint64(1); s <= uint64(n); s++ {
		if !seen[s] {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d seqs never arrived, first %v", len(missing), n, missing[:min(10, len(missing))])
	}
	return dups, inversions
}

func delivered(sub *brokertest.Subscriber, n int) func() bool {
	return func() bool {
		seen := map[uint64]bool{}
		for _, s := range sub.Seqs() {
			seen[s] = true
		}
		return len(seen) >= n
	}
}

// 10,000 messages queued while the broker is down all arrive, in seq order, once it
// is back, and leave the outbox only as they are acknowledged.
func TestBacklogAfterOutageArrivesInOrder(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Persistent: true})
	sub := b.Subscribe(t, "cloud", "vigil/"+device+"/+")
	ob := newOutbox(t)
	l := startLink(t, ob, mqttlink.Options{Brokers: []string{b.URL}, Window: 128})
	testkit.WaitFor(t, 10*time.Second, "the link to connect", func() bool { return l.State().State == mqttlink.StateConnected })

	b.StopGraceful()
	testkit.WaitFor(t, 10*time.Second, "the link to notice the outage", func() bool { return l.State().State != mqttlink.StateConnected })
	const n = 10000
	enqueue(t, ob, n)
	if d := ob.Stats().Depth; d != n {
		t.Fatalf("outbox depth %d during the outage, want %d", d, n)
	}
	b.Restart()
	testkit.WaitFor(t, 60*time.Second, "all messages at the subscriber", delivered(sub, n))
	dups, inversions := checkAll(t, sub.Seqs(), n)
	if inversions != 0 {
		t.Errorf("%d messages arrived out of seq order", inversions)
	}
	t.Logf("%d duplicates", dups)
	testkit.WaitFor(t, 10*time.Second, "the outbox to drain", func() bool { return ob.Stats().Depth == 0 })
	st := l.State()
	if st.Acked < n || st.Connects < 2 {
		t.Errorf("link state %+v", st)
	}
	// Topics: telemetry and events apart.
	var tele, events int
	for _, m := range sub.Messages() {
		switch m.Topic {
		case "vigil/" + device + "/telemetry":
			tele++
		case "vigil/" + device + "/events":
			events++
		}
	}
	if tele == 0 || events == 0 || tele+events < n {
		t.Errorf("telemetry %d, events %d", tele, events)
	}
}

// A broker killed mid-drain and restarted: everything arrives at least once.
func TestBrokerRestartMidDrain(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Persistent: true})
	sub := b.Subscribe(t, "cloud", "vigil/"+device+"/+")
	ob := newOutbox(t)
	const n = 20000
	enqueue(t, ob, n)
	l := startLink(t, ob, mqttlink.Options{Brokers: []string{b.URL}, Window: 64})
	testkit.WaitFor(t, 30*time.Second, "the drain to be under way", func() bool { return l.State().Acked > 1000 })
	b.StopGraceful()
	testkit.WaitFor(t, 10*time.Second, "the link to notice", func() bool { return l.State().State != mqttlink.StateConnected })
	if depth := ob.Stats().Depth; depth == 0 || depth == n {
		t.Logf("outbox depth at the outage: %d", depth)
	}
	b.Restart()
	testkit.WaitFor(t, 60*time.Second, "all messages at the subscriber", delivered(sub, n))
	dups, _ := checkAll(t, sub.Seqs(), n)
	t.Logf("%d duplicates after a broker restart mid-drain", dups)
	testkit.WaitFor(t, 10*time.Second, "the outbox to drain", func() bool { return ob.Stats().Depth == 0 })
}

func TestRetainedStatus(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	ob := newOutbox(t)
	sub := b.Subscribe(t, "cloud", "vigil/"+device+"/status")
	ctx, cancel := context.WithCancel(context.Background())
	l, _ := mqttlink.New(ob, mqttlink.Options{Brokers: []string{b.URL}, Device: device,
		Online: func() map[string]any { return map[string]any{"version": "1.2.3", "models": []string{"m"}} }})
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	status := func() map[string]any {
		msgs := sub.Messages()
		if len(msgs) == 0 {
			return nil
		}
		var m map[string]any
		json.Unmarshal(msgs[len(msgs)-1].Payload, &m)
		return m
	}
	testkit.WaitFor(t, 10*time.Second, "the online status", func() bool { return status()["state"] == "online" })
	if s := status(); s["version"] != "1.2.3" || s["device"] != device {
		t.Errorf("online status %v", s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "the offline status", func() bool { return status()["state"] == "offline" })
	// Retained: a subscriber that comes later still sees it.
	late := b.Subscribe(t, "late", "vigil/"+device+"/status")
	testkit.WaitFor(t, 10*time.Second, "the retained status", func() bool {
		m := late.Messages()
		return len(m) == 1 && m[0].Retained && strings.Contains(string(m[0].Payload), "offline")
	})
}

func TestWrongPasswordIsReportedAndNothingIsLost(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{Users: map[string]string{"vigil": "right"}})
	ob := newOutbox(t)
	enqueue(t, ob, 10)
	l := startLink(t, ob, mqttlink.Options{Brokers: []string{b.URL}, Username: "vigil", Password: "wrong"})
	testkit.WaitFor(t, 10*time.Second, "a failed attempt", func() bool { return l.State().LastError != "" })
	st := l.State()
	if !strings.Contains(st.LastError, "not Authorized") || st.State == mqttlink.StateConnected {
		t.Errorf("state with a wrong password: %+v", st)
	}
	if d := ob.Stats().Depth; d != 10 {
		t.Errorf("outbox depth %d, want 10 kept", d)
	}
	// The right password delivers them.
	ok := startLink(t, ob, mqttlink.Options{Brokers: []string{b.URL}, Username: "vigil", Password: "right"})
	_ = ok
	testkit.WaitFor(t, 10*time.Second, "the backlog to drain with the right password", func() bool { return ob.Stats().Depth == 0 })
}

func TestTLS(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{TLS: true})
	pool := func(file string) *tls.Config {
		pem, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		p := x509.NewCertPool()
		p.AppendCertsFromPEM(pem)
		return &tls.Config{RootCAs: p}
	}
	t.Run("wrong CA", func(t *testing.T) {
		ob := newOutbox(t)
		enqueue(t, ob, 5)
		l := startLink(t, ob, mqttlink.Options{Brokers: []string{b.URL}, TLS: pool(brokertest.WriteOtherCA(t))})
		testkit.WaitFor(t, 10*time.Second, "a failed attempt", func() bool { return l.State().LastError != "" })
		if st := l.State(); !strings.Contains(st.LastError, "certificate") || st.State == mqttlink.StateConnected {
			t.Errorf("state with the wrong CA: %+v", st)
		}
		if d := ob.Stats().Depth; d != 5 {
			t.Errorf("outbox depth %d, want 5 kept", d)
		}
	})
	t.Run("right CA", func(t *testing.T) {
		sub := b.Subscribe(t, "cloud-tls", "vigil/"+device+"/+")
		ob := newOutbox(t)
		enqueue(t, ob, 50)
		startLink(t, ob, mqttlink.Options{Brokers: []string{b.URL}, TLS: pool(b.CAFile)})
		testkit.WaitFor(t, 10*time.Second, "delivery over TLS", delivered(sub, 50))
	})
}

// Brokers are tried in order: a dead first broker fails over to the second.
func TestFailover(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	dead := brokertest.Start(t, brokertest.Options{})
	deadURL := dead.URL
	dead.Stop()
	ob := newOutbox(t)
	enqueue(t, ob, 20)
	l := startLink(t, ob, mqttlink.Options{Brokers: []string{deadURL, b.URL}})
	testkit.WaitFor(t, 15*time.Second, "the backlog to drain through the second broker", func() bool { return ob.Stats().Depth == 0 })
	if st := l.State(); st.Broker != b.URL {
		t.Errorf("connected to %q, want %q", st.Broker, b.URL)
	}
}

func BenchmarkDrain(b *testing.B) {
	broker := brokertest.Start(b, brokertest.Options{})
	for _, window := range []int{1, 64, 256} {
		b.Run(fmt.Sprintf("window=%d", window), func(b *testing.B) {
			ob := newOutbox(b)
			enqueue(b, ob, b.N)
			start := time.Now()
			startLink(b, ob, mqttlink.Options{Brokers: []string{broker.URL}, Window: window})
			testkit.WaitFor(b, 10*time.Minute, "the drain", func() bool { return ob.Stats().Depth == 0 })
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}

// A first broker that accepts TCP connections but never answers MQTT: paho tries it
// for the connect timeout, then the next broker, and the link must wait for both.
func TestFailoverPastASilentBroker(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	b := brokertest.Start(t, brokertest.Options{})
	ob := newOutbox(t)
	enqueue(t, ob, 5)
	l := startLink(t, ob, mqttlink.Options{Brokers: []string{"tcp://" + silent.Addr().String(), b.URL}})
	testkit.WaitFor(t, 30*time.Second, "delivery through the second broker", func() bool { return ob.Stats().Depth == 0 })
	if st := l.State(); st.Broker != b.URL {
		t.Errorf("connected to %q, want %q", st.Broker, b.URL)
	}
}

// A message the broker refuses (larger than its max_packet_size) is named in the
// link's error, and stays in the outbox: nothing is dropped behind the operator's back.
func TestRefusedMessageIsNamed(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{MaxPacketSize: 4096})
	ob := newOutbox(t)
	if _, err := ob.Enqueue(context.Background(), "detection", outbox.ClassEvent, map[string]string{"blob": strings.Repeat("x", 10000)}); err != nil {
		t.Fatal(err)
	}
	l := startLink(t, ob, mqttlink.Options{Brokers: []string{b.URL}})
	testkit.WaitFor(t, 20*time.Second, "the refused message to be named", func() bool {
		return strings.Contains(l.State().LastError, "oldest unacknowledged: seq 1")
	})
	if d := ob.Stats().Depth; d != 1 {
		t.Errorf("outbox depth %d, want the refused message kept", d)
	}
}

// publishRetained puts a retained message on the broker as the cloud would.
func publishRetained(t *testing.T, url, topic, payload string) {
	t.Helper()
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("cloud-pub"))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect publisher: %v", tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Publish(topic, 1, true, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

// Subscriptions and retained snapshots outlive the connection: after the broker
// restarts (forgetting everything), the link subscribes again and publishes its
// retained state again, so a deployment manifest still arrives and the cloud still
// sees the device's model state.
func TestSubscribeAndRetainAcrossReconnect(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	ob := newOutbox(t)
	l := startLink(t, ob, mqttlink.Options{Brokers: []string{b.URL}, BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond})

	var mu sync.Mutex
	var got []string
	l.Subscribe("vigil/"+device+"/models/deploy", func(topic string, payload []byte) {
		mu.Lock()
		got = append(got, topic+"="+string(payload))
		mu.Unlock()
	})
	received := func(n int) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= n }
	}
	l.Retain("models/state", []byte(`{"phase":"active"}`))

	publishRetained(t, b.URL, "vigil/"+device+"/models/deploy", "m1")
	testkit.WaitFor(t, 10*time.Second, "the manifest", received(1))
	state := b.Subscribe(t, "cloud", "vigil/"+device+"/models/state")
	testkit.WaitFor(t, 10*time.Second, "the retained model state", func() bool { return len(state.Messages()) == 1 })

	b.Stop() // a broker without persistence forgets subscriptions and retained messages
	testkit.WaitFor(t, 10*time.Second, "the link to notice", func() bool { return l.State().State != mqttlink.StateConnected })
	b.Restart()
	testkit.WaitFor(t, 30*time.Second, "the link to reconnect", func() bool { return l.State().Connects >= 2 })
	later := b.Subscribe(t, "cloud-2", "vigil/"+device+"/models/state")
	testkit.WaitFor(t, 10*time.Second, "the model state published again", func() bool {
		m := later.Messages()
		return len(m) == 1 && m[0].Retained && string(m[0].Payload) == `{"phase":"active"}`
	})
	publishRetained(t, b.URL, "vigil/"+device+"/models/deploy", "m2")
	testkit.WaitFor(t, 10*time.Second, "a manifest after the reconnect", received(2))
	mu.Lock()
	defer mu.Unlock()
	if got[0] != "vigil/"+device+"/models/deploy=m1" || got[len(got)-1] != "vigil/"+device+"/models/deploy=m2" {
		t.Errorf("received %q", got)
	}

	l.Unsubscribe("vigil/" + device + "/models/deploy")
}
