package fleetload

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/agent"
	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/assets"
	"github.com/vigil-edge/vigil/internal/mqttdial"
	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/deploy"
	"github.com/vigil-edge/vigil/sync/deploy/push"
	"github.com/vigil-edge/vigil/sync/fleet"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
	"github.com/vigil-edge/vigil/sync/outbox"
)

var (
	flagDevices   = flag.Int("fleet.devices", 0, "simulated devices for TestFleetLoad (0: skip it)")
	flagTelemetry = flag.Duration("fleet.telemetry", 2*time.Second, "each device's mqtt.telemetry_interval")
	flagWindow    = flag.Duration("fleet.window", 20*time.Second, "steady-traffic window measured before the push")
	flagChunk     = flag.Int("fleet.chunk", 1024, "chunk size of the push, bytes")
	flagJSON      = flag.String("fleet.json", "", "also write the report as JSON to this file")
	flagDir       = flag.String("fleet.dir", "", "parent of the devices' state directories (default: a temporary directory)")
	flagCanary    = flag.String("fleet.canary", "", "push as a staged rollout: canary N or P% first (vigil model push --canary)")
	flagWave      = flag.String("fleet.wave", "", "with -fleet.canary: waves of N or P% after it (--wave)")
)

// The small fleet of the ordinary test run: every device goes active and no seq is
// lost.
func TestFleetSmall(t *testing.T) {
	rep := runFleet(t, fleetOptions{devices: 24, telemetry: time.Second, window: 3 * time.Second, chunk: 512})
	var text strings.Builder
	rep.WriteText(&text)
	t.Log("\n" + text.String())
	checkReport(t, rep)
}

// TestFleetLoad is the load test proper, at -fleet.devices devices.
func TestFleetLoad(t *testing.T) {
	if *flagDevices == 0 {
		t.Skip("the fleet load test needs -fleet.devices=N (e.g. go test ./internal/fleetload -run FleetLoad -fleet.devices=1000 -timeout 30m -v, or scripts/fleet-load 1000); TestFleetSmall runs a small fleet")
	}
	rep := runFleet(t, fleetOptions{devices: *flagDevices, telemetry: *flagTelemetry, window: *flagWindow, chunk: *flagChunk, dir: *flagDir,
		canary: *flagCanary, wave: *flagWave})
	var text strings.Builder
	rep.WriteText(&text)
	fmt.Print("\n" + text.String())
	if *flagJSON != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(*flagJSON, append(b, '\n'), 0o644); err != nil {
			t.Error(err)
		}
	}
	checkReport(t, rep)
}

func checkReport(t *testing.T, rep *Report) {
	t.Helper()
	if rep.Push.Active != rep.Devices {
		t.Errorf("%d of %d devices active; the others: %v", rep.Push.Active, rep.Devices, rep.Push.Rejected)
	}
	if rep.Seq.Lost > 0 || rep.Seq.Malformed > 0 {
		t.Errorf("%d seqs lost, %d malformed envelopes: %+v", rep.Seq.Lost, rep.Seq.Malformed, rep.Seq.LostOn)
	}
	// Each device sent at least its deployment events and some telemetry.
	if rep.Seq.Kinds["telemetry"] < rep.Devices || rep.Seq.Kinds["deployment"] < rep.Devices {
		t.Errorf("too little traffic to judge: %v", rep.Seq.Kinds)
	}
}

type fleetOptions struct {
	devices   int
	telemetry time.Duration
	window    time.Duration
	chunk     int
	dir       string
	// canary and wave make the push a staged rollout (push.Options.Canary, Wave).
	canary, wave string
}

// device is one simulated device.
type device struct {
	id, state string
	agent     *agent.Agent
	done      chan error
}

const (
	group  = "fleet"
	prefix = "vigil"
)

func runFleet(t *testing.T, o fleetOptions) *Report {
	n := o.devices
	rep := &Report{Devices: n, GoMaxProc: runtime.GOMAXPROCS(0), Telemetry: o.telemetry.String()}
	b := brokertest.Start(t, brokertest.Options{SysInterval: time.Second, Clients: n + 16})
	sys, err := WatchSys(b.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	tracker := NewTracker(prefix)
	cloud := newCloud(t, b.URL, tracker)

	root := o.dir
	if root == "" {
		root = t.TempDir()
	} else {
		var err error
		if root, err = os.MkdirTemp(root, "fleetload-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(root) })
	}
	pub, priv, err := deploy.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	base, next := filepath.Join(root, "bundle-1.0.0"), filepath.Join(root, "bundle-1.1.0")
	if err := WriteBundle(base, "1.0.0"); err != nil {
		t.Fatal(err)
	}
	if err := WriteBundle(next, "1.1.0"); err != nil {
		t.Fatal(err)
	}
	sig, err := deploy.SignBundle(next, priv)
	if err != nil {
		t.Fatal(err)
	}
	rep.Bundle = Bundle{Bytes: sig.Size, ChunkSize: o.chunk, Chunks: int((sig.Size + int64(o.chunk) - 1) / int64(o.chunk))}
	// One copy of the embedded files for all agents (they run the fleet bundle anyway).
	bundled, err := assets.Extract(filepath.Join(root, "bundled"))
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(root, "agents.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	logger := slog.New(slog.NewTextHandler(logFile, &slog.HandlerOptions{Level: slog.LevelWarn}))
	defer func() {
		if t.Failed() {
			t.Logf("agents' warnings and errors (last lines of %s):\n%s", logPath, tail(logPath, 40))
		}
	}()

	heap0, rss0, fds0, gor0 := memNow()
	ctx, cancel := context.WithCancel(context.Background())
	devices := make([]*device, 0, n)
	stopped := false
	stopAll := func() []error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		var errs []error
		deadline := time.After(2*time.Minute + time.Duration(n)*20*time.Millisecond)
		for _, d := range devices {
			select {
			case err := <-d.done:
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", d.id, err))
				}
			case <-deadline:
				errs = append(errs, fmt.Errorf("%s: did not stop", d.id))
			}
		}
		return errs
	}
	defer stopAll()

	start := time.Now()
	for i := range n {
		d := &device{id: fmt.Sprintf("dev-%04d", i), done: make(chan error, 1)}
		d.state = filepath.Join(root, d.id)
		cfg := deviceConfig(t, d, b.URL, pub, o.telemetry)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("%s: HTTP listener: %v", d.id, err)
		}
		d.agent, err = agent.New(cfg, agent.Options{Version: "fleetload", Logger: logger.With("device", d.id), Listener: ln, Bundled: bundled})
		if err != nil {
			t.Fatalf("%s: %v", d.id, err)
		}
		devices = append(devices, d)
		go func() { d.done <- d.agent.Run(ctx) }()
	}
	rep.StartS = time.Since(start).Seconds()
	testkit.WaitFor(t, time.Minute+time.Duration(n)*50*time.Millisecond, "every device online", func() bool { return cloud.online() == n })
	rep.OnlineS = time.Since(start).Seconds()
	for _, d := range devices {
		if m := d.agent.Status(false).Models; len(m) != 1 || m[0].State != "loaded" || m[0].Version != "1.0.0" {
			t.Fatalf("%s: model %+v, want 1.0.0 loaded", d.id, m)
		}
	}

	heap1, rss1, fds1, gor1 := memNow()
	rep.Memory = Memory{
		HeapPerDeviceB: (heap1 - heap0) / int64(n), RSSPerDeviceB: (rss1 - rss0) / int64(n),
		GoroutinesPerDev: float64(gor1-gor0) / float64(n), FDsPerDevice: float64(fds1-fds0) / float64(n),
	}

	if o.window > 0 {
		w := startWindow(sys, b.PID(), tracker)
		time.Sleep(o.window) // a measuring window, not a synchronisation
		rep.Steady = w.end(t, sys)
	}

	// The push: the real operator's code, to the group.
	w := startWindow(sys, b.PID(), tracker)
	var mu sync.Mutex
	var activeAfter []time.Duration
	pushStart := time.Now()
	res, err := push.Push(context.Background(), next, push.Options{
		Broker: mqttdial.Broker{URL: b.URL}, Group: group, ChunkSize: o.chunk, Timeout: 3*time.Minute + time.Duration(n)*30*time.Millisecond,
		Canary: o.canary, Wave: o.wave,
		OnState: func(_ string, st deploy.State) {
			if st.Phase == deploy.PhaseActive {
				mu.Lock()
				activeAfter = append(activeAfter, time.Since(pushStart))
				mu.Unlock()
			}
		},
	})
	rep.Push.TookS = time.Since(pushStart).Seconds()
	if err != nil && res == nil {
		t.Fatalf("push: %v", err)
	}
	if err != nil {
		t.Errorf("push: %v", err)
	}
	rep.During = w.end(t, sys)
	rep.Push.Deployment = res.Deployment
	rep.Push.Canary, rep.Push.Wave = o.canary, o.wave
	for _, d := range res.Devices {
		rep.Push.Waves = max(rep.Push.Waves, d.Wave)
	}
	rep.Push.Rejected = map[string]string{}
	for _, d := range res.Devices {
		if d.Phase == deploy.PhaseActive {
			rep.Push.Active++
			continue
		}
		phase := string(d.Phase)
		if phase == "" {
			phase = "no answer"
		}
		rep.Push.Rejected[d.Device] = phase + ": " + d.Reason
	}
	if len(res.Devices) != n {
		t.Errorf("the push found %d devices of group %s, want %d", len(res.Devices), group, n)
	}
	mu.Lock()
	rep.Push.ActiveP50S, rep.Push.ActiveP90S, rep.Push.ActiveMaxS = Quantile(activeAfter, 0.5), Quantile(activeAfter, 0.9), Quantile(activeAfter, 1)
	mu.Unlock()
	rep.Push.Phases = map[string][2]float64{}
	for _, ph := range []string{"received", "downloading", "verifying", "staging", "warming", "active"} {
		var ds []time.Duration
		for _, d := range devices {
			if at := tracker.PhaseAt(d.id, ph); !at.IsZero() {
				ds = append(ds, at.Sub(pushStart))
			}
		}
		rep.Push.Phases[ph] = [2]float64{Quantile(ds, 0.5), Quantile(ds, 1)}
		if ph == "active" {
			rep.Push.DeviceActiveP50S, rep.Push.DeviceActiveP90S, rep.Push.DeviceActiveMaxS = Quantile(ds, 0.5), Quantile(ds, 0.9), Quantile(ds, 1)
		}
	}
	if rep.Push.Active < n {
		// Where the devices that did not finish are stuck, for the report.
		path := filepath.Join(os.TempDir(), fmt.Sprintf("fleetload-%d-goroutines.txt", n))
		if f, err := os.Create(path); err == nil {
			pprof.Lookup("goroutine").WriteTo(f, 1)
			f.Close()
			t.Logf("%d devices not active; goroutines (grouped by stack) written to %s", n-rep.Push.Active, path)
		}
	}
	for _, d := range devices {
		if _, rejected := rep.Push.Rejected[d.id]; rejected {
			continue
		}
		if m := d.agent.Status(false).Models; len(m) != 1 || m[0].Version != "1.1.0" {
			t.Errorf("%s reported active but runs %+v", d.id, m)
		}
	}

	// The operator's view: what `vigil fleet status --group` shows, from the retained
	// messages alone.
	fleetStart := time.Now()
	view, err := fleet.Snapshot(context.Background(), fleet.Options{Broker: mqttdial.Broker{URL: b.URL}, Group: group})
	rep.FleetStatus.Seconds = time.Since(fleetStart).Seconds()
	if err != nil {
		t.Errorf("fleet status: %v", err)
	}
	rep.FleetStatus.Devices = len(view)
	for _, d := range view {
		if d.State == "online" {
			rep.FleetStatus.Online++
		}
		if d.Deployment != nil && d.Deployment.ID == res.Deployment && d.Deployment.Phase == deploy.PhaseActive {
			rep.FleetStatus.Active++
		}
	}
	if f := rep.FleetStatus; f.Devices != n || f.Online != n || f.Active != rep.Push.Active {
		t.Errorf("fleet status lists %d devices, %d online, %d showing the push active; want %d, %d, %d", f.Devices, f.Online, f.Active, n, n, rep.Push.Active)
	}

	// The broker's view at its fullest, before the devices go.
	if p, err := ReadProc(b.PID()); err == nil {
		rep.Memory.BrokerRSSB = p.RSS
	}
	sample := sys.Sample()
	rep.Memory.BrokerRetained = sample.Values["retained messages/count"]
	rep.Memory.BrokerConnections = sample.Values["clients/connected"]

	for _, err := range stopAll() {
		t.Errorf("agent stopped with an error: %v", err)
	}
	rep.Seq = account(t, devices, tracker)
	lat := tracker.Latencies()
	rep.Seq.LatencyP50S, rep.Seq.LatencyP99S, rep.Seq.LatencyMaxS = Quantile(lat, 0.5), Quantile(lat, 0.99), Quantile(lat, 1)
	return rep
}

// deviceConfig is one simulated device's config: a tiny pattern camera detected once a
// second by the fleet bundle, a rule that pulses a sim actuator when the pattern's
// orange box makes the frame "red" (events besides telemetry), MQTT to the broker.
func deviceConfig(t *testing.T, d *device, broker string, pub []byte, telemetry time.Duration) *config.Config {
	t.Helper()
	if err := os.MkdirAll(d.state, 0o755); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(filepath.Dir(d.state), "bundle-1.0.0")
	yaml := fmt.Sprintf(`device: {id: %s, group: %s, state_dir: %q}
log: {level: warn}
http: {listen: "127.0.0.1:0"}
cameras:
  - {name: cam, url: "pattern://?width=64&height=48&fps=2", detect_fps: 1, model: default}
models:
  - {name: default, bundle: %q, backend: onnxruntime, threads: 1}
actuators:
  - {name: line-stop, driver: sim, safe: low}
rules:
  - name: red-seen
    camera: cam
    labels: [red]
    min_score: 0.3
    cooldown: 10s
    action: {actuator: line-stop, pulse: 100ms}
drift: {enabled: false}
samples: {max_bytes: 0}
snapshots: {max_bytes: 0}
outbox: {fsync: interval, fsync_interval: 1s}
mqtt:
  enabled: true
  brokers: [%q]
  topic_prefix: %s
  telemetry_interval: %s
  backoff: {min: 100ms, max: 2s}
trust: {keys: [%q]}
deploy: {warmup_runs: 2, warmup_budget: 30s, watch: 0s}
`, d.id, group, d.state, base, broker, prefix, telemetry, deploy.PublicKeyString(pub))
	path := filepath.Join(d.state, "vigil.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("%s: config: %v", d.id, err)
	}
	cfg.Source = "" // no file watch per agent: a thousand inotify instances exceed the default limit of 128
	return cfg
}

// account stops nothing: the agents have stopped. It opens each device's outbox for
// its last seq and what is still queued, waits until the subscriber has the rest, and
// sums it up.
func account(t *testing.T, devices []*device, tracker *Tracker) Seq {
	type end struct {
		last   uint64
		queued []uint64
	}
	ends := map[string]end{}
	var s Seq
	for _, d := range devices {
		ob, err := outbox.Open(outbox.Options{Path: filepath.Join(d.state, "outbox"), Device: d.id})
		if err != nil {
			t.Fatalf("%s: reopen the outbox: %v", d.id, err)
		}
		st := ob.Stats()
		e := end{last: st.NextSeq - 1}
		for after := uint64(0); ; {
			msgs, err := ob.Peek(after, 256)
			if err != nil {
				t.Fatalf("%s: read the outbox: %v", d.id, err)
			}
			if len(msgs) == 0 {
				break
			}
			for _, m := range msgs {
				e.queued = append(e.queued, m.Seq)
			}
			after = msgs[len(msgs)-1].Seq
		}
		if err := ob.Close(); err != nil {
			t.Errorf("%s: close the outbox: %v", d.id, err)
		}
		if st.Dropped > 0 || st.EvictedTelemetry > 0 {
			t.Errorf("%s: the outbox dropped %d events and evicted %d telemetry", d.id, st.Dropped, st.EvictedTelemetry)
		}
		ends[d.id] = e
	}
	// Everything the broker acknowledged is on its way to the subscriber.
	complete := func() bool {
		for _, d := range devices {
			if tracker.Account(d.id, ends[d.id].last, ends[d.id].queued).Lost() {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(30*time.Second + time.Duration(len(devices))*10*time.Millisecond)
	for !complete() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, d := range devices {
		a := tracker.Account(d.id, ends[d.id].last, ends[d.id].queued)
		s.Enqueued += a.Last
		s.Delivered += a.Delivered
		s.Queued += a.Queued
		s.Lost += len(a.Missing) + a.Unexpected
		if a.Lost() && len(s.LostOn) < 10 {
			s.LostOn = append(s.LostOn, a)
		}
	}
	c := tracker.Counts()
	s.Duplicates, s.Malformed, s.Kinds = c.Dups, c.Malformed, c.Kinds
	return s
}

// cloud is the operator's side: a persistent-session QoS 1 subscriber to every
// device's telemetry and events (fed to the tracker) and retained status.
type cloud struct {
	mu     sync.Mutex
	status map[string]string // device -> "online" / "offline"
}

func newCloud(t *testing.T, broker string, tracker *Tracker) *cloud {
	c := &cloud{status: map[string]string{}}
	o := paho.NewClientOptions().AddBroker(broker).SetClientID("fleetload-cloud").
		SetCleanSession(false).SetAutoReconnect(true).SetOrderMatters(true).
		SetMaxReconnectInterval(500 * time.Millisecond)
	client := paho.NewClient(o)
	if tok := client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("cloud subscriber: connect: %v", tok.Error())
	}
	t.Cleanup(func() { client.Disconnect(100) })
	onStatus := func(_ paho.Client, m paho.Message) {
		var st struct {
			State string `json:"state"`
		}
		if json.Unmarshal(m.Payload(), &st) == nil {
			c.mu.Lock()
			c.status[deviceOf(prefix, m.Topic())] = st.State
			c.mu.Unlock()
		}
	}
	onEnvelope := func(_ paho.Client, m paho.Message) { tracker.Observe(m.Topic(), m.Payload()) }
	filters := map[string]byte{prefix + "/+/telemetry": 1, prefix + "/+/events": 1, prefix + "/+/status": 1}
	tok := client.SubscribeMultiple(filters, func(cl paho.Client, m paho.Message) {
		if strings.HasSuffix(m.Topic(), "/status") {
			onStatus(cl, m)
		} else {
			onEnvelope(cl, m)
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("cloud subscriber: subscribe: %v", tok.Error())
	}
	return c
}

func (c *cloud) online() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.status {
		if s == "online" {
			n++
		}
	}
	return n
}

// trafficWindow measures traffic and CPU between start and end.
type trafficWindow struct {
	sys         SysSample
	agents, brk ProcStat
	pid         int
	envelopes   int
	tracker     *Tracker
	at          time.Time
}

func startWindow(sys *SysMonitor, pid int, tracker *Tracker) *trafficWindow {
	w := &trafficWindow{sys: sys.Sample(), pid: pid, tracker: tracker, envelopes: tracker.Counts().Distinct, at: time.Now()}
	w.agents, _ = ReadProc(0)
	w.brk, _ = ReadProc(pid)
	return w
}

func (w *trafficWindow) end(t *testing.T, sys *SysMonitor) Traffic {
	// Wait for the broker's next $SYS publication, so the counters cover the window.
	now := time.Now()
	testkit.WaitFor(t, 10*time.Second, "the broker's $SYS counters", func() bool { return sys.Updated("messages/sent", now) })
	s := sys.Sample()
	agents, _ := ReadProc(0)
	brk, _ := ReadProc(w.pid)
	secs := time.Since(w.at).Seconds()
	return Traffic{
		Seconds:    secs,
		MsgsInPerS: Rate(w.sys, s, "messages/received"), MsgsOutPerS: Rate(w.sys, s, "messages/sent"),
		PublishInPerS: Rate(w.sys, s, "publish/messages/received"), PublishOutPerS: Rate(w.sys, s, "publish/messages/sent"),
		BytesInPerS: Rate(w.sys, s, "bytes/received"), BytesOutPerS: Rate(w.sys, s, "bytes/sent"),
		EnvelopesPerS: float64(w.tracker.Counts().Distinct-w.envelopes) / secs,
		AgentsCores:   Cores(w.agents, agents), BrokerCores: Cores(w.brk, brk),
	}
}

// memNow is the Go heap in use after a GC, the process's RSS, open descriptors and
// goroutines.
func memNow() (heap, rss int64, fds, goroutines int) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	p, _ := ReadProc(0)
	ents, _ := os.ReadDir("/proc/self/fd")
	return int64(ms.HeapInuse), p.RSS, len(ents), runtime.NumGoroutine()
}

// tail is the last n lines of a file.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
