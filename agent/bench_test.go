package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/capture"
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
		cam := r.agent.cameras[0]
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
