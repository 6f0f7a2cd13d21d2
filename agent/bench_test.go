package agent

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/capture"
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
			if _, _, err := d.Detect(frame); err != nil {
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
