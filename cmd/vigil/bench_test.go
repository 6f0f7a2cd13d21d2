package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vigil-edge/vigil/agent/config"
)

// useEmbeddedDefaults skips when this machine has a config at the default path, which
// vigil would read instead of the embedded defaults these tests are about.
func useEmbeddedDefaults(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(config.DefaultPath); err == nil {
		t.Skipf("SKIPPED: %s exists on this machine, so vigil would not use the embedded defaults", config.DefaultPath)
	}
	t.Setenv("VIGIL_CONFIG", "")
}

// `vigil bench --json` on the embedded defaults (the bundled clip and YOLOX-Nano on
// ONNX Runtime), run as a real process: every documented field is there, and the
// figures are positive and consistent with each other. No figure is compared with a
// speed: the machine may be slow or busy.
func TestBenchJSON(t *testing.T) {
	useEmbeddedDefaults(t)
	cmd := exec.Command(os.Args[0], "bench", "--seconds", "1", "--json")
	cmd.Env = append(os.Environ(), "RUN_VIGIL_MAIN=1")
	cmd.Dir = t.TempDir() // the defaults' state_dir is ./var: nothing may be written there
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("vigil bench: %v\nstderr:\n%s", err, stderr.String())
	}
	if entries, _ := os.ReadDir(cmd.Dir); len(entries) != 0 {
		t.Errorf("vigil bench wrote into its working directory: %v", entries)
	}
	var rep map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout.String())
	}
	num := func(path string) float64 {
		t.Helper()
		var v any = rep
		for _, key := range strings.Split(path, ".") {
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("%s: no object above %q in %s", path, key, stdout.String())
			}
			if v, ok = m[key]; !ok {
				t.Fatalf("field %s missing from %s", path, stdout.String())
			}
		}
		f, ok := v.(float64)
		if !ok {
			t.Fatalf("field %s = %v (%T), want a number", path, v, v)
		}
		return f
	}
	for _, f := range []string{
		"frame_width", "frame_height", "seconds",
		"decode.frames", "decode.fps",
		"inference.runs", "inference.fps", "inference.latency_ms_p50", "inference.latency_ms_p99",
		"inference.engine_fps", "inference.engine_ms_p50", "inference.engine_ms_p99", "inference.preprocess_ms_p50",
		"pipeline.frames", "pipeline.captured", "pipeline.fps", "pipeline.latency_ms_p50", "pipeline.latency_ms_p99",
		"limit_fps", "pipeline_ratio", "peak_rss_bytes",
	} {
		if v := num(f); v <= 0 {
			t.Errorf("%s = %v, want > 0", f, v)
		}
	}
	// Decoding the output can round to 0.00 ms on a fast machine; dropped is 0 here.
	for _, f := range []string{"inference.postprocess_ms_p50", "pipeline.dropped"} {
		if v := num(f); v < 0 {
			t.Errorf("%s = %v, want >= 0", f, v)
		}
	}
	for field, want := range map[string]string{"camera": config.SampleCamera, "model": "default", "backend": "onnxruntime", "bundle": "yolox-nano 0.1.1"} {
		if got, _ := rep[field].(string); got != want {
			t.Errorf("%s = %q, want %q", field, got, want)
		}
	}
	if src, _ := rep["source"].(string); !strings.HasSuffix(src, "people.mp4") {
		t.Errorf("source = %q, want the bundled clip", src)
	}
	if w, h := num("frame_width"), num("frame_height"); w != 768 || h != 432 {
		t.Errorf("frame %vx%v, want the bundled clip's 768x432", w, h)
	}
	if s := num("seconds"); s != 1 {
		t.Errorf("seconds = %v, want 1", s)
	}
	if lossless, _ := rep["pipeline"].(map[string]any)["lossless"].(bool); !lossless {
		t.Errorf("pipeline.lossless = false; a file read as fast as it decodes waits for the detector")
	}

	dec, inf, pipe := num("decode.fps"), num("inference.fps"), num("pipeline.fps")
	if limit := num("limit_fps"); limit != min(dec, inf) {
		t.Errorf("limit_fps %v != min(decode.fps %v, inference.fps %v)", limit, dec, inf)
	}
	if ratio := num("pipeline_ratio"); math.Abs(ratio-pipe/min(dec, inf)) > 0.002 {
		t.Errorf("pipeline_ratio %v != pipeline.fps / limit_fps = %v", ratio, pipe/min(dec, inf))
	}
	// The pipeline decodes every frame it detects, so it cannot outrun decoding alone
	// (10% for a busy machine between the two measurements).
	if pipe > dec*1.1 {
		t.Errorf("pipeline.fps %v > 1.1 x decode.fps %v", pipe, dec)
	}
	if fr, capt := num("pipeline.frames"), num("pipeline.captured"); fr > capt+2 {
		// +2: the frames in the slot and in the detector when the window opened.
		t.Errorf("pipeline detected %v frames but captured only %v in the window", fr, capt)
	}
	for _, stage := range []string{"inference.latency_ms", "inference.engine_ms", "pipeline.latency_ms"} {
		if p50, p99 := num(stage+"_p50"), num(stage+"_p99"); p99 < p50 {
			t.Errorf("%s: p99 %v < p50 %v", stage, p99, p50)
		}
	}
	if eng, all := num("inference.engine_ms_p50"), num("inference.latency_ms_p50"); eng > all {
		t.Errorf("the model alone (p50 %v ms) took longer than the whole detect call (p50 %v ms)", eng, all)
	}
	if !strings.Contains(stderr.String(), "measuring pipeline") {
		t.Errorf("no progress on stderr:\n%s", stderr.String())
	}
}

// The table names every stage and the ratio's goal.
func TestBenchTable(t *testing.T) {
	useEmbeddedDefaults(t)
	t.Chdir(t.TempDir())
	var out, errb bytes.Buffer
	if code := run([]string{"bench", "--seconds", "0.3", "--monitoring"}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d\n%s", code, errb.String())
	}
	for _, want := range []string{"decode-only", "inference-only", "engine only", "pipeline", "pipeline / min(decode-only, inference-only) =", "goal >= 0.9", "peak RSS",
		"monitoring (drift, samples): pipeline", "of throughput (goal <= 3 %)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestBenchBadArguments(t *testing.T) {
	useEmbeddedDefaults(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--camera", "nope", "--seconds", "1"}, `vigil bench: no such camera: camera "nope" is not in the config (it has sample)`},
		{[]string{"bench", "--seconds", "0"}, "--seconds 0 must be greater than 0"},
		{[]string{"bench", "extra"}, `unexpected argument "extra"`},
		{[]string{"bench", "--frobnicate"}, "flag provided but not defined: -frobnicate"},
	} {
		var out, errb bytes.Buffer
		if code := run(tc.args, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", tc.args, code, errb.String(), exitUsage, tc.want)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"bench", "--help"}, &out, &errb); code != exitOK || !strings.Contains(errb.String(), "Usage: vigil bench") {
		t.Errorf("bench --help: exit %d %q", code, errb.String())
	}
}
