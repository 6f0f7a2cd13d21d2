package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/agent"
	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/capture/camurl"
	"github.com/vigil-edge/vigil/capture/rtsptest"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/onnxrt"
	"github.com/vigil-edge/vigil/internal/sysstat"
	"github.com/vigil-edge/vigil/internal/testkit"
)

var clip, _ = filepath.Abs(filepath.Join("..", "..", "assets", "footage", "people.mp4"))

// benchAgentConfig writes a config with one camera, door, on the bundled clip, and a sim
// actuator but no rules, and loads it.
func benchAgentConfig(b *testing.B, url string, detectFPS float64) *config.Config {
	b.Helper()
	yaml := fmt.Sprintf(`
device: {id: test-01, state_dir: %q}
log: {level: warn}
cameras:
  - {name: door, url: %q, detect_fps: %g}
actuators:
  - {name: line-stop, driver: sim, safe: low}
outbox: {fsync: always}
mqtt:
  telemetry_interval: 1h
`, b.TempDir(), url, detectFPS)
	p := filepath.Join(b.TempDir(), "vigil.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		b.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		b.Fatalf("test config rejected:\n%v", err)
	}
	return cfg
}

// startAgent runs an agent of cfg with HTTP on a loopback port, its warnings in the
// benchmark's log; the returned stop (also run at cleanup) ends it and waits.
func startAgent(b *testing.B, cfg *config.Config) (*agent.Agent, func()) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(benchLog{b}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a, err := agent.New(cfg, agent.Options{Version: "test", Logger: logger, Listener: ln})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("agent: %v", err)
			}
		case <-time.After(10 * time.Second):
			b.Fatal("agent did not stop within 10s of cancellation")
		}
	}
	b.Cleanup(stop)
	return a, stop
}

type benchLog struct{ b *testing.B }

func (w benchLog) Write(p []byte) (int, error) {
	w.b.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// detected is how many frames camera door of a has detected.
func detected(a *agent.Agent) uint64 {
	c, _ := a.CameraCounters("door")
	return c.Detected
}

// BenchmarkPipeline measures, in one run, the three rates that bound the default
// pipeline on this machine: decoding the clip alone, inference alone (pre-processing,
// model, decoding), and the whole pipeline with the clip read as fast as it decodes and
// no detect_fps limit. Decoding and inference run in different goroutines, so the
// pipeline should approach the slower of the two, not their sum: pipeline/limit is
// reported as a ratio, which is steadier than the rates on a noisy machine.
func BenchmarkPipeline(b *testing.B) {
	const frames = 150

	decodeFPS := func() float64 {
		src, err := capture.OpenFile(clip, true, false)
		if err != nil {
			b.Fatal(err)
		}
		defer src.Close()
		start := time.Now()
		for range frames {
			m, err := src.Read(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			m.Close()
		}
		return frames / time.Since(start).Seconds()
	}

	d, err := detector.Load(onnxrt.New(""), filepath.Join("..", "..", "assets", "models", "yolox-nano"), infer.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	src, err := capture.OpenFile(clip, true, false)
	if err != nil {
		b.Fatal(err)
	}
	frame, _ := src.Read(context.Background())
	src.Close()
	defer frame.Close()
	inferFPS := func() float64 {
		start := time.Now()
		for range frames / 2 {
			if _, _, err := d.Detect(frame, nil); err != nil {
				b.Fatal(err)
			}
		}
		return frames / 2 / time.Since(start).Seconds()
	}

	pipelineFPS := func() float64 {
		a, stop := startAgent(b, benchAgentConfig(b, "file://"+clip+"?realtime=false", 10000))
		testkit.WaitFor(b, time.Minute, "the first detection", func() bool { return detected(a) > 0 })
		first := detected(a)
		startT := time.Now()
		testkit.WaitFor(b, 5*time.Minute, "the pipeline to detect enough frames", func() bool { return detected(a) >= first+frames })
		fps := float64(detected(a)-first) / time.Since(startT).Seconds()
		stop()
		return fps
	}

	for b.Loop() {
		dec, inf, pipe := decodeFPS(), inferFPS(), pipelineFPS()
		b.ReportMetric(dec, "decode-fps")
		b.ReportMetric(inf, "infer-fps")
		b.ReportMetric(pipe, "pipeline-fps")
		b.ReportMetric(pipe/min(dec, inf), "pipeline/limit")
	}
}

// BenchmarkFourRTSPCameras runs the agent with 1 and then 4 RTSP cameras (the clip at
// 768 px, 25 fps, from one in-process server) at detect_fps 5 each for a few seconds,
// and reports per-camera capture and detection rates, dropped frames, the process's
// CPU per camera and the RSS each extra camera adds.
func BenchmarkFourRTSPCameras(b *testing.B) {
	srv := rtsptest.Start(b, rtsptest.Options{Width: 768, FPS: 25})
	run := func(n int) (st agent.Status, cpuPct, rss float64) {
		cfg := benchAgentConfig(b, srv.URL("stream"), 5)
		cam := cfg.Cameras[0]
		cfg.Cameras = nil
		for i := range n {
			c := cam
			c.Name = fmt.Sprintf("cam%d", i)
			cfg.Cameras = append(cfg.Cameras, c)
		}
		a, stop := startAgent(b, cfg)
		testkit.WaitFor(b, time.Minute, "every camera detecting", func() bool {
			for _, c := range a.Status(false).Cameras {
				if c.Detect.Frames < 5 {
					return false
				}
			}
			return true
		})
		cpu := sysstat.NewCPUMeter()
		deadline := time.Now().Add(5 * time.Second)
		testkit.WaitFor(b, time.Minute, "a 5 s measurement", func() bool { return time.Now().After(deadline) })
		cpuPct = cpu.Percent()
		st = a.Status(false)
		vmRSS := sysstat.RSSBytes()
		stop()
		return st, cpuPct, float64(vmRSS)
	}
	for b.Loop() {
		_, cpu1, rss1 := run(1)
		st, cpu4, rss4 := run(4)
		var capFPS, detFPS, dropped float64
		for _, c := range st.Cameras {
			capFPS += c.FPS
			detFPS += c.Detect.FPS
			dropped += float64(c.Dropped)
		}
		b.ReportMetric(capFPS/4, "capture-fps/camera")
		b.ReportMetric(detFPS/4, "detect-fps/camera")
		b.ReportMetric(dropped/4, "dropped/camera")
		b.ReportMetric(cpu4/4, "cpu-%/camera")
		b.ReportMetric((cpu4-cpu1)/3, "cpu-%/extra-camera")
		b.ReportMetric((rss4-rss1)/3/(1<<20), "MiB/extra-camera")
	}
}

// The bench's private config keeps only the chosen camera and its model, drops every
// output, reads a file camera in a loop as fast as it decodes, and plays a bundled
// file from its own state directory.
func TestBenchConfig(t *testing.T) {
	cfg := &config.Config{
		Device: config.Device{StateDir: "var"},
		Cameras: []config.Camera{
			{Name: "door", URL: "rtsp://u:p@10.0.0.5/s", DetectFPS: 5, Model: "big"},
			{Name: "sample", URL: "file://./var/bundled/footage/people.mp4", DetectFPS: 10, Model: "default"},
			{Name: "bench", URL: "file:///srv/clips/a%20b.mp4?realtime=true&loop=false", DetectFPS: 2, Model: "default"},
		},
		Models:    []config.Model{{Name: "big", Bundle: "/models/big"}, {Name: "default"}},
		Actuators: []config.Actuator{{Name: "relay", Driver: "sim"}},
		Rules:     []config.Rule{{Name: "r", Camera: "door"}},
		MQTT:      config.MQTT{Enabled: true},
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		cam, url, model string
	}{
		{"door", "rtsp://u:p@10.0.0.5/s", "big"},
		{"sample", "file://" + filepath.Join(dir, "bundled", "footage", "people.mp4") + "?loop=true&realtime=false", "default"},
		{"bench", "file:///srv/clips/a%20b.mp4?loop=true&realtime=false", "default"},
	} {
		i := slices.IndexFunc(cfg.Cameras, func(c config.Camera) bool { return c.Name == tc.cam })
		bc, err := benchConfig(cfg, cfg.Cameras[i], dir)
		if err != nil {
			t.Fatalf("%s: %v", tc.cam, err)
		}
		if len(bc.Cameras) != 1 || bc.Cameras[0].URL != tc.url || bc.Cameras[0].DetectFPS < 1e6 {
			t.Errorf("%s: cameras %+v, want only it, url %s, detect_fps unlimited", tc.cam, bc.Cameras, tc.url)
		}
		if len(bc.Models) != 1 || bc.Models[0].Name != tc.model {
			t.Errorf("%s: models %+v, want only %s", tc.cam, bc.Models, tc.model)
		}
		if bc.Device.StateDir != dir || bc.Actuators != nil || bc.Rules != nil || bc.MQTT.Enabled {
			t.Errorf("%s: state %s, actuators %v, rules %v, mqtt %v: want %s and no outputs", tc.cam, bc.Device.StateDir, bc.Actuators, bc.Rules, bc.MQTT.Enabled, dir)
		}
		if u, err := camurl.Parse(bc.Cameras[0].URL); err != nil || (u.Kind == "file" && (u.Realtime || !u.Loop)) {
			t.Errorf("%s: %s -> %+v, %v", tc.cam, bc.Cameras[0].URL, u, err)
		}
	}
	if len(cfg.Cameras) != 3 || cfg.Cameras[1].DetectFPS != 10 || cfg.Device.StateDir != "var" || !cfg.MQTT.Enabled {
		t.Errorf("benchConfig changed the caller's config: %+v", cfg)
	}
}
