package main

// The benchmark harness behind `vigil bench` (bench.go is the command: flags and
// output). It sits beside the command that runs it, as Prometheus keeps its benchmarks
// in cmd/promtool, and measures the agent from outside: the decode and inference
// stages need no agent (capture opens the source, infer/backends loads the model as
// the agent would), and the pipeline stage runs a private agent through its public
// API (New, Run, and the measuring views of agent/measure.go).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/agent"
	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/assets"
	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/capture/camurl"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/backends"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/internal/redact"
	"github.com/vigil-edge/vigil/internal/sysstat"
	"github.com/vigil-edge/vigil/internal/window"
)

// errUnknownCamera is returned by runBench when benchOptions.Camera names no camera of
// the config: a usage error.
var errUnknownCamera = errors.New("no such camera")

// benchOptions say what runBench measures.
type benchOptions struct {
	// Camera is the camera to measure; "" is the config's first.
	Camera string
	// Duration is how long each stage is measured; 0 means 10 s.
	Duration time.Duration
	// Logger receives the agent's log during the pipeline stage; nil discards it.
	Logger *slog.Logger
	// Progress, if set, is told when each stage starts (for people waiting on a
	// terminal).
	Progress func(stage string, d time.Duration)
	// Monitoring adds what drift monitoring, samples and a shadow model cost: the
	// pipeline is measured four more times, each on a fresh agent: without them, with
	// them, with them, without them (so a steady drift of the machine's speed falls
	// on both sides equally), and the two configurations compared.
	Monitoring bool
}

// benchMonitoring compares the pipeline with the monitoring the config asks for
// (drift, samples, a shadow model) and without any.
type benchMonitoring struct {
	// OnFPS and OffFPS are the means of the runs with and without monitoring.
	OnFPS  float64   `json:"on_fps"`
	OffFPS float64   `json:"off_fps"`
	On     []float64 `json:"on_runs"`
	Off    []float64 `json:"off_runs"`
	// Cost is 1 - on/off: the share of throughput monitoring takes (negative: less
	// than the runs' spread).
	Cost float64 `json:"cost"`
	// What the config monitors: drift, samples, shadow.
	Monitors []string `json:"monitors"`
}

// benchReport is what `vigil bench --json` prints. Its field names are a contract
// (docs/benchmarks.md): scripts read them. Rates are frames per second, times are
// milliseconds.
type benchReport struct {
	Camera      string  `json:"camera"`
	Source      string  `json:"source"` // the camera's URL in the config, password redacted
	FrameWidth  int     `json:"frame_width"`
	FrameHeight int     `json:"frame_height"`
	Model       string  `json:"model"`   // the config's model name
	Bundle      string  `json:"bundle"`  // model.yaml name and version
	Backend     string  `json:"backend"` // inference backend
	Seconds     float64 `json:"seconds"` // measured per stage

	Decode    benchDecodeStage    `json:"decode"`
	Inference benchInferenceStage `json:"inference"`
	Pipeline  benchPipelineStage  `json:"pipeline"`

	// LimitFPS is min(decode.fps, inference.fps): what a pipeline that overlaps
	// decoding and inference perfectly would reach.
	LimitFPS float64 `json:"limit_fps"`
	// PipelineRatio is pipeline.fps / limit_fps; the goal is >= 0.9.
	PipelineRatio float64 `json:"pipeline_ratio"`
	// PeakRSSBytes is the process's peak resident set size (VmHWM) at the end.
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
	// Monitoring is set with benchOptions.Monitoring.
	Monitoring *benchMonitoring `json:"monitoring,omitempty"`
}

// benchDecodeStage is the source read as fast as it decodes, with nothing else running.
type benchDecodeStage struct {
	Frames int     `json:"frames"`
	FPS    float64 `json:"fps"`
}

// benchInferenceStage is the detector run in a loop on one frame read before: FPS and
// latency include pre-processing and output decoding; the engine_ fields are the
// runtime's Run alone.
type benchInferenceStage struct {
	Runs       int     `json:"runs"`
	FPS        float64 `json:"fps"`
	LatencyP50 float64 `json:"latency_ms_p50"`
	LatencyP99 float64 `json:"latency_ms_p99"`
	EngineFPS  float64 `json:"engine_fps"`
	EngineP50  float64 `json:"engine_ms_p50"`
	EngineP99  float64 `json:"engine_ms_p99"`
	PreP50     float64 `json:"preprocess_ms_p50"`
	PostP50    float64 `json:"postprocess_ms_p50"`
}

// benchPipelineStage is the agent's own pipeline (capture goroutine, latest-frame slot,
// detect loop) with no detect_fps limit, measured after its first detection.
type benchPipelineStage struct {
	// Frames were detected in the window; Captured were read from the source.
	Frames   uint64  `json:"frames"`
	Captured uint64  `json:"captured"`
	FPS      float64 `json:"fps"`
	// LatencyP50 and LatencyP99 are capture to detection (the frame's read time to
	// its detections), over every frame detected in the window.
	LatencyP50 float64 `json:"latency_ms_p50"`
	LatencyP99 float64 `json:"latency_ms_p99"`
	// Dropped frames were replaced in the slot before the detector took them. A file
	// read as fast as it decodes is lossless (the reader waits for the detector), so
	// it drops none; a live camera drops what the detector cannot keep up with.
	Dropped  uint64 `json:"dropped"`
	Lossless bool   `json:"lossless"`
}

// firstDetectionWait bounds the wait for the pipeline's first detection.
const firstDetectionWait = time.Minute

// runBench measures one camera of cfg with its model, in sequence: the source alone,
// the detector alone, then the agent's whole pipeline, each for opts.Duration. Nothing
// it runs touches cfg's state directory: the bundled files are extracted into a
// temporary one, where the private agent keeps its state (so a running daemon's outbox
// and state are untouched); that agent has only the chosen camera and its model, no
// actuators, rules or MQTT, and HTTP on a loopback port. A file camera is read in a loop
// as fast as it decodes, so the pipeline is bounded by decoding and inference, not by
// the file's frame rate.
func runBench(ctx context.Context, cfg *config.Config, opts benchOptions) (benchReport, error) {
	var rep benchReport
	if opts.Duration <= 0 {
		opts.Duration = 10 * time.Second
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string, time.Duration) {}
	}
	cc, err := benchCamera(cfg, opts.Camera)
	if err != nil {
		return rep, err
	}
	rep.Camera, rep.Source, rep.Model, rep.Seconds = cc.Name, redact.URL(cc.URL), cc.Model, opts.Duration.Seconds()

	state, err := os.MkdirTemp("", "vigil-bench-")
	if err != nil {
		return rep, fmt.Errorf("bench: create a temporary state directory: %w", err)
	}
	defer os.RemoveAll(state)
	bc, err := benchConfig(cfg, cc, state)
	if err != nil {
		return rep, err
	}
	cc = bc.Cameras[0]
	u, err := camurl.Parse(cc.URL)
	if err != nil {
		return rep, fmt.Errorf("camera %s: %w", cc.Name, err)
	}
	spec := capture.SpecFor(u, cc.RTSPTransport, cc.StallTimeout)
	// Extracted once for every agent of the run, and before the decode stage, which may
	// play the bundled clip.
	bundled, err := assets.Extract(filepath.Join(state, "bundled"))
	if err != nil {
		return rep, err
	}
	agentOpts := agent.Options{Version: "bench", Logger: opts.Logger, Bundled: bundled}

	det, backend, err := benchModel(bc, cc, bundled)
	if err != nil {
		return rep, err
	}
	man := det.Manifest()
	rep.Bundle, rep.Backend = man.Name+" "+man.Version, backend

	progress("decode-only", opts.Duration)
	frame, err := benchDecode(ctx, spec, opts.Duration, &rep.Decode)
	if err != nil {
		det.Close()
		return rep, fmt.Errorf("camera %s: %w", cc.Name, err)
	}
	rep.FrameWidth, rep.FrameHeight = frame.Cols(), frame.Rows()

	progress("inference-only", opts.Duration)
	err = benchInference(ctx, det, cc.Model, frame, opts.Duration, &rep.Inference)
	frame.Close()
	// Freed before the pipeline's agent loads its own copy: the two would compete for
	// memory and the peak RSS would count both.
	det.Close()
	if err != nil {
		return rep, err
	}

	progress("pipeline", opts.Duration)
	rep.Pipeline.Lossless = spec.Kind == "file"
	if err := benchPipeline(ctx, bc, agentOpts, opts.Duration, &rep.Pipeline); err != nil {
		return rep, err
	}

	rep.LimitFPS = min(rep.Decode.FPS, rep.Inference.FPS)
	if rep.LimitFPS > 0 {
		rep.PipelineRatio = round(rep.Pipeline.FPS/rep.LimitFPS, 3)
	}
	if opts.Monitoring {
		if rep.Monitoring, err = benchMonitor(ctx, bc, agentOpts, opts.Duration, progress); err != nil {
			return rep, err
		}
	}
	rep.PeakRSSBytes, err = sysstat.PeakRSSBytes()
	return rep, err
}

// benchCamera is the camera of cfg named name, or its first for "".
func benchCamera(cfg *config.Config, name string) (config.Camera, error) {
	if len(cfg.Cameras) == 0 {
		return config.Camera{}, fmt.Errorf("%w: the config has no cameras", errUnknownCamera)
	}
	if name == "" {
		return cfg.Cameras[0], nil
	}
	i := slices.IndexFunc(cfg.Cameras, func(c config.Camera) bool { return c.Name == name })
	if i < 0 {
		names := make([]string, len(cfg.Cameras))
		for j, c := range cfg.Cameras {
			names[j] = c.Name
		}
		return config.Camera{}, fmt.Errorf("%w: camera %q is not in the config (it has %s)", errUnknownCamera, name, strings.Join(names, ", "))
	}
	return cfg.Cameras[i], nil
}

// benchModel loads camera cc's model of bc as the private agent will: its bundle (the
// bundled one, extracted under bundled, for ""), on the backend infer/backends picks
// with the config's runtime settings. The caller closes the detector.
func benchModel(bc *config.Config, cc config.Camera, bundled string) (*detector.Detector, string, error) {
	mc := bc.ModelNamed(cc.Model)
	if mc == nil {
		return nil, "", fmt.Errorf("camera %s has no model to measure (cameras[].model)", cc.Name)
	}
	dir := mc.Bundle
	if dir == "" {
		dir = filepath.Join(bundled, assets.DefaultBundleDir)
	}
	rt := bc.Runtimes
	reg := backends.New(backends.Libraries{ONNXRuntime: rt.ONNXRuntime, TFLite: rt.TFLite, OpenVINO: rt.OpenVINO})
	det, backend, err := backends.Load(reg, dir, mc.Backend, infer.LoadOptions{Device: mc.Device, Threads: mc.Threads, Optimization: mc.Optimization})
	if err != nil {
		return nil, "", fmt.Errorf("model %s did not load: %w", mc.Name, err)
	}
	return det, backend, nil
}

// benchMonitor runs the pipeline of bc without monitoring, with it twice, and without
// it again, each on a new private agent.
func benchMonitor(ctx context.Context, bc *config.Config, opts agent.Options, d time.Duration, progress func(string, time.Duration)) (*benchMonitoring, error) {
	r := &benchMonitoring{}
	if bc.Drift.Enabled {
		r.Monitors = append(r.Monitors, "drift")
	}
	if bc.Samples.MaxBytes > 0 {
		r.Monitors = append(r.Monitors, "samples")
	}
	if len(bc.Models) > 0 && bc.Models[0].Shadow.Bundle != "" {
		r.Monitors = append(r.Monitors, "shadow")
	}
	off := *bc
	off.Drift.Enabled = false
	off.Samples.MaxBytes = 0
	off.Models = slices.Clone(bc.Models)
	for i := range off.Models {
		off.Models[i].Shadow = config.Shadow{}
	}
	for i, monitored := range []bool{false, true, true, false} {
		cfg, stage := &off, "pipeline without monitoring"
		if monitored {
			cfg, stage = bc, "pipeline with monitoring"
		}
		progress(fmt.Sprintf("%s (%d of 4)", stage, i+1), d)
		var p benchPipelineStage
		if err := benchPipeline(ctx, cfg, opts, d, &p); err != nil {
			return nil, err
		}
		if monitored {
			r.On = append(r.On, p.FPS)
		} else {
			r.Off = append(r.Off, p.FPS)
		}
	}
	mean := func(v []float64) float64 {
		var sum float64
		for _, x := range v {
			sum += x
		}
		return sum / float64(len(v))
	}
	r.OnFPS, r.OffFPS = round(mean(r.On), 2), round(mean(r.Off), 2)
	if r.OffFPS > 0 {
		r.Cost = round(1-r.OnFPS/r.OffFPS, 4)
	}
	return r, nil
}

// benchConfig is the private agent's config: cfg's settings with only camera cc and
// its model, no outputs, the state in dir. A file camera loops and is read as fast as
// it decodes; one that plays a bundled file plays the copy extracted under dir.
func benchConfig(cfg *config.Config, cc config.Camera, dir string) (*config.Config, error) {
	bc := *cfg
	bc.Device.StateDir = dir
	bc.Actuators, bc.Inputs, bc.Rules = nil, nil, nil
	bc.MQTT.Enabled = false
	bc.Models = nil
	if m := cfg.ModelNamed(cc.Model); m != nil {
		bc.Models = []config.Model{*m}
	}
	// Every frame goes to the detector: the pacer's interval becomes 1 ns.
	cc.DetectFPS = 1e9
	u, err := camurl.Parse(cc.URL)
	if err != nil {
		return nil, fmt.Errorf("camera %s: %w", cc.Name, err)
	}
	if u.Kind == "file" {
		target, err := filepath.Abs(u.Target)
		if err != nil {
			return nil, fmt.Errorf("camera %s: %w", cc.Name, err)
		}
		bundled, err := filepath.Abs(filepath.Join(cfg.Device.StateDir, "bundled"))
		if err != nil {
			return nil, fmt.Errorf("device.state_dir: %w", err)
		}
		if rel, err := filepath.Rel(bundled, target); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			target = filepath.Join(dir, "bundled", rel)
		}
		cc.URL = (&url.URL{Scheme: "file", Path: target, RawQuery: "loop=true&realtime=false"}).String()
	}
	bc.Cameras = []config.Camera{cc}
	return &bc, nil
}

// benchDecode reads the source as fast as it delivers for d and returns its first
// frame, which is not counted (it pays for opening the source).
func benchDecode(ctx context.Context, spec capture.Spec, d time.Duration, r *benchDecodeStage) (gocv.Mat, error) {
	src, err := capture.Open(ctx, spec)
	if err != nil {
		return gocv.Mat{}, fmt.Errorf("open: %w", err)
	}
	defer src.Close()
	first, err := src.Read(ctx)
	if err != nil {
		return gocv.Mat{}, fmt.Errorf("read: %w", err)
	}
	start := time.Now()
	for time.Since(start) < d {
		m, err := src.Read(ctx)
		if err != nil {
			first.Close()
			return gocv.Mat{}, fmt.Errorf("read: %w", err)
		}
		m.Close()
		r.Frames++
	}
	r.FPS = round(float64(r.Frames)/time.Since(start).Seconds(), 2)
	return first, nil
}

// benchWarmup calls are left out of the inference figures: the runtime's first runs
// allocate and tune.
const benchWarmup = 3

// benchInference runs det (model, as the config names it) on frame for d.
func benchInference(ctx context.Context, det *detector.Detector, model string, frame gocv.Mat, d time.Duration, r *benchInferenceStage) error {
	var dets []infer.Detection // reused, as the pipeline does
	var err error
	for range benchWarmup {
		if dets, _, err = det.Detect(frame, dets[:0]); err != nil {
			return fmt.Errorf("model %s: detect: %w", model, err)
		}
	}
	var calls, engine, pre, post []time.Duration
	var engineSum time.Duration
	start := time.Now()
	for time.Since(start) < d && ctx.Err() == nil {
		t0 := time.Now()
		var timing detector.Timing
		dets, timing, err = det.Detect(frame, dets[:0])
		if err != nil {
			return fmt.Errorf("model %s: detect: %w", model, err)
		}
		calls = append(calls, time.Since(t0))
		engine, pre, post = append(engine, timing.Infer), append(pre, timing.Pre), append(post, timing.Post)
		engineSum += timing.Infer
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	r.Runs = len(calls)
	r.FPS = round(float64(r.Runs)/time.Since(start).Seconds(), 2)
	if engineSum > 0 {
		r.EngineFPS = round(float64(r.Runs)/engineSum.Seconds(), 2)
	}
	r.LatencyP50, r.LatencyP99 = window.MillisP50P99(calls)
	r.EngineP50, r.EngineP99 = window.MillisP50P99(engine)
	r.PreP50, _ = window.MillisP50P99(pre)
	r.PostP50, _ = window.MillisP50P99(post)
	return nil
}

// benchPoll is how often the pipeline's figures are read: often enough that no
// detection leaves the agent's ring of recent latencies unread (agent.DetectLatencies).
const benchPoll = 50 * time.Millisecond

// benchPipeline runs a private agent of bc, waits for its first detection, then
// measures its one camera for d. It returns once the agent has stopped.
func benchPipeline(ctx context.Context, bc *config.Config, opts agent.Options, d time.Duration, r *benchPipelineStage) (err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("bench: listen on loopback: %w", err)
	}
	opts.Listener = ln
	a, err := agent.New(bc, opts)
	if err != nil {
		return err // New has closed what it opened, the listener too
	}
	name := bc.Cameras[0].Name
	counters := func() agent.CameraCounters {
		c, _ := a.CameraCounters(name) // the agent's one camera, from bc
		return c
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }() // Run closes the agent
	stopped := false
	defer func() {
		cancel()
		if !stopped {
			err = errors.Join(err, <-done)
		}
	}()

	tick := time.NewTicker(benchPoll)
	defer tick.Stop()
	wait := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-done:
			stopped = true
			if err == nil {
				err = errors.New("the agent stopped")
			}
			return fmt.Errorf("pipeline: %w", err)
		case <-tick.C:
			return nil
		}
	}
	deadline := time.Now().Add(firstDetectionWait)
	for counters().Detected == 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("pipeline: no detection within %v (%s)", firstDetectionWait, cameraState(a, name))
		}
		if err := wait(); err != nil {
			return err
		}
	}

	c0 := counters()
	var latencies []time.Duration
	seen := c0.Detected
	start := time.Now()
	for time.Since(start) < d {
		if err := wait(); err != nil {
			return err
		}
		latencies, seen = a.DetectLatencies(name, seen, latencies)
	}
	elapsed := time.Since(start)
	latencies, seen = a.DetectLatencies(name, seen, latencies)
	c1 := counters()
	r.Frames = seen - c0.Detected
	r.Captured = c1.Captured - c0.Captured
	r.Dropped = c1.Dropped - c0.Dropped + c1.Skipped - c0.Skipped
	r.FPS = round(float64(r.Frames)/elapsed.Seconds(), 2)
	r.LatencyP50, r.LatencyP99 = window.MillisP50P99(latencies)
	return nil
}

// cameraState says why a camera may not be detecting: its capture state and last
// errors, from the agent's status (read once, when the wait for a detection gives up).
func cameraState(a *agent.Agent, name string) string {
	for _, c := range a.Status(false).Cameras {
		if c.Name == name {
			return fmt.Sprintf("camera %s: %s %s; detection: %s", name, c.State, c.LastError, c.Detect.LastError)
		}
	}
	return "camera " + name + " is not running"
}

// round rounds v (>= 0) to digits decimals, as the agent's figures are.
func round(v float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	return float64(int64(v*p+0.5)) / p
}
