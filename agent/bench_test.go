package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/capture/camurl"
	"github.com/vigil-edge/vigil/capture/rtsptest"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/onnxrt"
)

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

	d, err := detector.Load(onnxrt.New(""), filepath.Join("..", "assets", "models", "yolox-nano"), infer.LoadOptions{})
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
		cfg := testConfig(b, b.TempDir(), "")
		cfg.Cameras[0].URL = "file://" + clip + "?realtime=false"
		cfg.Cameras[0].DetectFPS = 10000
		cfg.Rules = nil
		cfg.Log.Level = "warn"
		r := start(b, cfg)
		cam := r.agent.parts().cameras[0]
		waitFor(b, time.Minute, "the first detection", func() bool { return cam.stats.status().Frames > 0 })
		first := cam.stats.status().Frames
		startT := time.Now()
		waitFor(b, 5*time.Minute, "the pipeline to detect enough frames", func() bool { return cam.stats.status().Frames >= first+frames })
		fps := float64(cam.stats.status().Frames-first) / time.Since(startT).Seconds()
		r.stop()
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
	run := func(n int) (st Status, cpuPct, rss float64) {
		cfg := testConfig(b, b.TempDir(), "")
		cam := cfg.Cameras[0]
		cfg.Cameras, cfg.Rules = nil, nil
		for i := range n {
			c := cam
			c.Name, c.URL, c.DetectFPS = fmt.Sprintf("cam%d", i), srv.URL("stream"), 5
			cfg.Cameras = append(cfg.Cameras, c)
		}
		cfg.Log.Level = "warn"
		r := start(b, cfg)
		waitFor(b, time.Minute, "every camera detecting", func() bool {
			for _, c := range r.status(b).Cameras {
				if c.Detect.Frames < 5 {
					return false
				}
			}
			return true
		})
		cpu := newCPUMeter()
		deadline := time.Now().Add(5 * time.Second)
		waitFor(b, time.Minute, "a 5 s measurement", func() bool { return time.Now().After(deadline) })
		cpuPct, st, rss = cpu.percent(), r.status(b), float64(rssBytes())
		r.stop()
		return st, cpuPct, rss
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

// collect returns each detection's latency once, in order, across the ring's wrap.
func TestCollectLatencies(t *testing.T) {
	s := newDetectStats()
	now := time.Now()
	recordN := func(from, to int) {
		for i := from; i < to; i++ {
			s.record(0, time.Duration(i), now, nil)
		}
	}
	var got []time.Duration
	recordN(0, 10)
	seen := s.collect(4, &got) // the window opened after the 4th detection
	for _, step := range []int{100, statsWindow - 7, statsWindow, 1, 3} {
		recordN(int(seen), int(seen)+step)
		seen = s.collect(seen, &got)
	}
	if seen != s.frames || len(got) != int(seen)-4 {
		t.Fatalf("collected %d latencies up to %d, want %d", len(got), seen, seen-4)
	}
	for i, d := range got {
		if d != time.Duration(i+4) {
			t.Fatalf("latency %d is %v, want %v", i, d, time.Duration(i+4))
		}
	}
}
