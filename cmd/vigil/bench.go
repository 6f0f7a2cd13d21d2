package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// benchGoal is the pipeline_ratio the pipeline should reach: decoding and inference
// overlap, so the pipeline runs at nearly the slower of the two.
const benchGoal = 0.9

func bench(args []string, stdout, stderr io.Writer) int {
	fs, path := newFlags("bench [--config FILE] [--camera NAME] [--seconds N] [--monitoring] [--json]",
		"Measures one camera of the config with its model, each stage for --seconds: the source\n"+
			"decoded alone, the detector alone (one frame in a loop), then the agent's pipeline with\n"+
			"no detect_fps limit; prints the rates, latencies, pipeline / min(decode, inference) and\n"+
			"the peak RSS. A file camera is read in a loop as fast as it decodes. It runs a private\n"+
			"agent (temporary state directory, no actuators, rules or MQTT), so a running daemon is\n"+
			"not disturbed, though it competes for the CPU. --monitoring then runs the pipeline four\n"+
			"more times, without drift monitoring, samples and shadow model, with them twice, without\n"+
			"them, and prints what they cost.", stderr)
	camera := fs.String("camera", "", "camera to measure (default the config's first)")
	seconds := fs.Float64("seconds", 10, "how long each stage is measured")
	monitoring := fs.Bool("monitoring", false, "also measure the pipeline without drift monitoring, samples and shadow model, and compare")
	asJSON := fs.Bool("json", false, "print JSON (field names in docs/benchmarks.md) instead of a table")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "vigil bench: unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return exitUsage
	}
	if *seconds <= 0 {
		fmt.Fprintf(stderr, "vigil bench: --seconds %v must be greater than 0\n", *seconds)
		return exitUsage
	}
	cfg, ok := loadConfig(configPath(*path), stderr)
	if !ok {
		return exitUsage
	}
	// The agent's routine log (model loaded, camera streaming) would bury the figures.
	if cfg.Log.Level != "debug" {
		cfg.Log.Level = "warn"
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := runBench(ctx, cfg, benchOptions{
		Camera:     *camera,
		Duration:   time.Duration(*seconds * float64(time.Second)),
		Logger:     newLogger(cfg.Log, stderr),
		Monitoring: *monitoring,
		Progress: func(stage string, d time.Duration) {
			fmt.Fprintf(stderr, "vigil bench: measuring %s for %v\n", stage, d)
		},
	})
	if err != nil {
		fmt.Fprintf(stderr, "vigil bench: %v\n", err)
		if errors.Is(err, errUnknownCamera) {
			return exitUsage
		}
		return exitFailed
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(stderr, "vigil bench: %v\n", err)
			return exitFailed
		}
		return exitOK
	}
	printBench(stdout, rep)
	return exitOK
}

// printBench prints the report as a table for people.
func printBench(w io.Writer, r benchReport) {
	fmt.Fprintf(w, "camera %s: %s (%dx%d)\nmodel %s: %s on %s\n%g s per stage\n\n",
		r.Camera, r.Source, r.FrameWidth, r.FrameHeight, r.Model, r.Bundle, r.Backend, r.Seconds)
	row := func(cols ...any) {
		line := fmt.Sprintf("%-16s %7s %8s %8s %8s  %s", cols...)
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	row("stage", "frames", "fps", "p50 ms", "p99 ms", "")
	row("decode-only", fmt.Sprint(r.Decode.Frames), f1(r.Decode.FPS), "", "", "")
	in := r.Inference
	row("inference-only", fmt.Sprint(in.Runs), f1(in.FPS), f2(in.LatencyP50), f2(in.LatencyP99),
		"pre-processing + model + decoding")
	row("  engine only", "", f1(in.EngineFPS), f2(in.EngineP50), f2(in.EngineP99),
		fmt.Sprintf("the model alone; pre-processing %.2f ms, decoding %.2f ms (p50)", in.PreP50, in.PostP50))
	p := r.Pipeline
	mode := "latest frame"
	if p.Lossless {
		mode = "lossless"
	}
	row("pipeline", fmt.Sprint(p.Frames), f1(p.FPS), f2(p.LatencyP50), f2(p.LatencyP99),
		fmt.Sprintf("capture->detection; %d captured, %d dropped (%s)", p.Captured, p.Dropped, mode))
	verdict := "met"
	if r.PipelineRatio < benchGoal {
		verdict = "NOT met"
	}
	fmt.Fprintf(w, "\npipeline / min(decode-only, inference-only) = %.1f / %.1f = %.3f (goal >= %.1f: %s)\n",
		p.FPS, r.LimitFPS, r.PipelineRatio, benchGoal, verdict)
	if m := r.Monitoring; m != nil {
		fmt.Fprintf(w, "monitoring (%s): pipeline %.1f fps with it %v, %.1f fps without %v: costs %.1f %% of throughput (goal <= 3 %%)\n",
			strings.Join(m.Monitors, ", "), m.OnFPS, m.On, m.OffFPS, m.Off, 100*m.Cost)
	}
	fmt.Fprintf(w, "peak RSS %.1f MiB\n", float64(r.PeakRSSBytes)/(1<<20))
}

func f1(v float64) string { return fmt.Sprintf("%.1f", v) }
func f2(v float64) string { return fmt.Sprintf("%.2f", v) }
