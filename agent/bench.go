package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/capture/camurl"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/internal/redact"
)

// ErrUnknownCamera is returned by Bench when BenchOptions.Camera names no camera of
// the config.
var ErrUnknownCamera = errors.New("no such camera")

// BenchOptions say what Bench measures.
type BenchOptions struct {
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

// BenchMonitoring compares the pipeline with the monitoring the config asks for
// (drift, samples, a shadow model) and without any.
type BenchMonitoring struct {
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

// BenchReport is what `vigil bench --json` prints. Its field names are a contract
// (docs/benchmarks.md): scripts read them. Rates are frames per second, times are
// milliseconds.
type BenchReport struct {
	Camera      string  `json:"camera"`
	Source      string  `json:"source"` // the camera's URL in the config, password redacted
	FrameWidth  int     `json:"frame_width"`
	FrameHeight int     `json:"frame_height"`
	Model       string  `json:"model"`   // the config's model name
	Bundle      string  `json:"bundle"`  // model.yaml name and version
	Backend     string  `json:"backend"` // inference backend
	Seconds     float64 `json:"seconds"` // measured per stage

	Decode    BenchDecode    `json:"decode"`
	Inference BenchInference `json:"inference"`
	Pipeline  BenchPipeline  `json:"pipeline"`

	// LimitFPS is min(decode.fps, inference.fps): what a pipeline that overlaps
	// decoding and inference perfectly would reach.
	LimitFPS float64 `json:"limit_fps"`
	// PipelineRatio is pipeline.fps / limit_fps; the goal is >= 0.9.
	PipelineRatio float64 `json:"pipeline_ratio"`
	// PeakRSSBytes is the process's peak resident set size (VmHWM) at the end.
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
	// Monitoring is set with BenchOptions.Monitoring.
	Monitoring *BenchMonitoring `json:"monitoring,omitempty"`
}

// BenchDecode is the source read as fast as it decodes, with nothing else running.
type BenchDecode struct {
	Frames int     `json:"frames"`
	FPS    float64 `json:"fps"`
}

// BenchInference is the detector run in a loop on one frame read before: FPS and
// latency include pre-processing and output decoding; the engine_ fields are the
// runtime's Run alone.
type BenchInference struct {
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

// BenchPipeline is the agent's own pipeline (capture goroutine, latest-frame slot,
// detect loop) with no detect_fps limit, measured after its first detection.
type BenchPipeline struct {
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

// Bench measures one camera of cfg with its model, in sequence: the source alone, the
// detector alone, then the agent's whole pipeline, each for opts.Duration. It runs a
// private agent: a temporary state directory (so a running daemon's outbox and state
// are untouched), only the chosen camera and its model, no actuators, rules or MQTT,
// HTTP on a loopback port. A file camera is read in a loop as fast as it decodes, so
// the pipeline is bounded by decoding and inference, not by the file's frame rate.
func Bench(ctx context.Context, cfg *config.Config, opts BenchOptions) (BenchReport, error) {
	var rep BenchReport
	if opts.Duration <= 0 {
		opts.Duration = 10 * time.Second
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string, time.Duration) {}
	}
	if len(cfg.Cameras) == 0 {
		return rep, fmt.Errorf("%w: the config has no cameras", ErrUnknownCamera)
	}
	cc := cfg.Cameras[0]
	if opts.Camera != "" {
		i := slices.IndexFunc(cfg.Cameras, func(c config.Camera) bool { return c.Name == opts.Camera })
		if i < 0 {
			names := make([]string, len(cfg.Cameras))
			for j, c := range cfg.Cameras {
				names[j] = c.Name
			}
			return rep, fmt.Errorf("%w: camera %q is not in the config (it has %s)", ErrUnknownCamera, opts.Camera, strings.Join(names, ", "))
		}
		cc = cfg.Cameras[i]
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
	spec, err := cameraSpec(cc)
	if err != nil {
		return rep, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return rep, fmt.Errorf("bench: listen on loopback: %w", err)
	}
	a, err := New(bc, Options{Version: "bench", Logger: opts.Logger, Listener: ln})
	if err != nil {
		return rep, err // New has closed what it opened
	}
	ran := false
	defer func() {
		if !ran {
			a.Close()
		}
	}()
	cam := a.parts().cameras[0]
	if cam.model() == nil {
		return rep, fmt.Errorf("camera %s has no model to measure (cameras[].model)", cc.Name)
	}
	if cam.model().err != nil {
		return rep, fmt.Errorf("model %s did not load: %w", cam.model().name, cam.model().err)
	}
	run := cam.model().running.Load()
	man := run.detector.Manifest()
	rep.Bundle, rep.Backend = man.Name+" "+man.Version, run.backend

	progress("decode-only", opts.Duration)
	frame, err := benchDecode(ctx, spec, opts.Duration, &rep.Decode)
	if err != nil {
		return rep, fmt.Errorf("camera %s: %w", cc.Name, err)
	}
	rep.FrameWidth, rep.FrameHeight = frame.Cols(), frame.Rows()

	progress("inference-only", opts.Duration)
	err = benchInference(ctx, cam, frame, opts.Duration, &rep.Inference)
	frame.Close()
	if err != nil {
		return rep, err
	}

	progress("pipeline", opts.Duration)
	ran = true // Run closes the agent
	rep.Pipeline.Lossless = spec.Kind == "file"
	if err := benchPipeline(ctx, a, opts.Duration, &rep.Pipeline); err != nil {
		return rep, err
	}

	rep.LimitFPS = min(rep.Decode.FPS, rep.Inference.FPS)
	if rep.LimitFPS > 0 {
		rep.PipelineRatio = round(rep.Pipeline.FPS/rep.LimitFPS, 3)
	}
	if opts.Monitoring {
		if rep.Monitoring, err = benchMonitoring(ctx, bc, opts, progress); err != nil {
			return rep, err
		}
	}
	rep.PeakRSSBytes, err = peakRSS()
	return rep, err
}

// benchMonitoring runs the pipeline of bc without monitoring, with it twice, and
// without it again, each on a new private agent.
func benchMonitoring(ctx context.Context, bc *config.Config, opts BenchOptions, progress func(string, time.Duration)) (*BenchMonitoring, error) {
	r := &BenchMonitoring{}
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
		progress(fmt.Sprintf("%s (%d of 4)", stage, i+1), opts.Duration)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("bench: listen on loopback: %w", err)
		}
		a, err := New(cfg, Options{Version: "bench", Logger: opts.Logger, Listener: ln})
		if err != nil {
			return nil, err
		}
		var p BenchPipeline
		if err := benchPipeline(ctx, a, opts.Duration, &p); err != nil {
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
func benchDecode(ctx context.Context, spec capture.Spec, d time.Duration, r *BenchDecode) (gocv.Mat, error) {
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

// benchInference runs the camera's detector on frame for d.
func benchInference(ctx context.Context, cam *camera, frame gocv.Mat, d time.Duration, r *BenchInference) error {
	det := cam.model().detector()
	var dets []infer.Detection // reused, as the pipeline does
	var err error
	for range benchWarmup {
		if dets, _, err = det.Detect(frame, dets[:0]); err != nil {
			return fmt.Errorf("model %s: detect: %w", cam.model().name, err)
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
			return fmt.Errorf("model %s: detect: %w", cam.model().name, err)
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
	r.LatencyP50, r.LatencyP99 = percentiles(calls)
	r.EngineP50, r.EngineP99 = percentiles(engine)
	r.PreP50, _ = percentiles(pre)
	r.PostP50, _ = percentiles(post)
	return nil
}

// benchPoll is how often the pipeline's figures are read.
const benchPoll = 50 * time.Millisecond

// benchPipeline runs the agent, waits for its first detection, then measures its one
// camera for d. It returns once the agent has stopped.
func benchPipeline(ctx context.Context, a *Agent, d time.Duration, r *BenchPipeline) (err error) {
	cam := a.parts().cameras[0]
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
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
	for cam.stats.status().Frames == 0 {
		if time.Now().After(deadline) {
			st, ds := cam.cap.Status(), cam.stats.status()
			return fmt.Errorf("pipeline: no detection within %v (camera %s: %s %s; detection: %s)",
				firstDetectionWait, cam.cfg().Name, st.State, st.LastError, ds.LastError)
		}
		if err := wait(); err != nil {
			return err
		}
	}

	cap0, dropped0, st0 := cam.cap.Status(), cam.cap.Slot().Dropped(), cam.stats.status()
	var latencies []time.Duration
	seen := st0.Frames
	start := time.Now()
	for time.Since(start) < d {
		if err := wait(); err != nil {
			return err
		}
		seen = cam.stats.collect(seen, &latencies)
	}
	elapsed := time.Since(start)
	r.Frames = cam.stats.collect(seen, &latencies) - st0.Frames
	r.Captured = cam.cap.Status().Frames - cap0.Frames
	r.Dropped = cam.cap.Slot().Dropped() - dropped0 + cam.stats.status().Skipped - st0.Skipped
	r.FPS = round(float64(r.Frames)/elapsed.Seconds(), 2)
	r.LatencyP50, r.LatencyP99 = percentiles(latencies)
	return nil
}

// collect appends to out the capture-to-detection latencies of the detections after
// the first `seen` and returns how many detections there are now. Detections that
// have already left the ring are missed; polling every benchPoll keeps that from
// happening below statsWindow / benchPoll detections a second.
func (s *detectStats) collect(seen uint64, out *[]time.Duration) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := int(min(s.frames-seen, uint64(len(s.latency))))
	// The newest entry is just before pos once the ring is full, else the last one.
	end := len(s.latency)
	if len(s.latency) == statsWindow {
		end = s.pos
	}
	for i := n; i > 0; i-- {
		*out = append(*out, s.latency[(end-i+statsWindow)%statsWindow])
	}
	return s.frames
}

// peakRSS is the process's peak resident set size, VmHWM in /proc/self/status.
func peakRSS() (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("peak RSS: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("peak RSS: VmHWM %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("peak RSS: no VmHWM in /proc/self/status")
}
