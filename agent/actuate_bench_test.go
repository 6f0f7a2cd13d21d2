package agent

import (
	"slices"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/agent/rules"
	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/hal/sim"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/internal/testkit"
)

// BenchmarkRuleToActuator is what a rule adds after detection: evaluating a frame's
// detections against the rules (labels, score, zone, N of M, cooldown) and the
// actuator command on the sim driver. It reports p50 and p99 per frame; the goal is
// p99 <= 1 ms on this machine.
func BenchmarkRuleToActuator(b *testing.B) {
	var rs []config.Rule
	for i := range 8 { // a busy config: 8 rules on the camera, one of which fires
		rs = append(rs, config.Rule{
			Name: "r" + string(rune('a'+i)), Camera: "door", Labels: []string{"person"}, MinScore: 0.5,
			Zone:   [][]float64{{0, 0}, {1, 0}, {1, 1}, {0, 1}},
			Frames: config.Frames{N: 2, Of: 3}, Action: config.Action{Actuator: "relay", State: "high"},
		})
		if i > 0 {
			rs[i].Labels = []string{"dog"}
		}
	}
	engine := rules.New(rs, rules.Options{})
	out, err := hal.NewOutput("relay", sim.New(nil), hal.OutputOptions{Safe: hal.Low})
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	dets := make([]infer.Detection, 10)
	for i := range dets {
		dets[i] = infer.Detection{Label: "person", Score: 0.9, Box: [4]float32{100, 100, 200, 300}}
	}
	seen := rules.Frame{Camera: "door", Width: 768, Height: 432, Detections: dets}
	empty := rules.Frame{Camera: "door", Width: 768, Height: 432}

	lat := make([]time.Duration, 0, b.N)
	fired := 0
	i := 0
	for b.Loop() {
		// Alternate: two frames with people (fire), two without (release).
		f := seen
		if i%4 >= 2 {
			f = empty
		}
		i++
		start := time.Now()
		for _, fire := range engine.Evaluate(f) {
			level := hal.Low
			if fire.Kind == rules.Fire {
				level = hal.High
				fired++
			}
			if err := out.Set(level, "bench"); err != nil {
				b.Fatal(err)
			}
		}
		lat = append(lat, time.Since(start))
	}
	if fired == 0 {
		b.Fatal("no rule fired")
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// BenchmarkCaptureToActuator runs the default pipeline (the bundled clip in real time,
// detect_fps 10, the bundled model) with a rule that pulses the sim relay on every frame
// with a person, and reports capture-to-detection and capture-to-actuator latency
// (p50/p99) and what the rule adds between them.
func BenchmarkCaptureToActuator(b *testing.B) {
	for b.Loop() {
		cfg := testConfig(b, b.TempDir(), "")
		cfg.Rules[0].Cooldown = 0
		cfg.Rules[0].Action = config.Action{Actuator: "line-stop", Pulse: 50 * time.Millisecond}
		cfg.Outbox.Fsync = "interval"
		cfg.Log.Level = "warn"
		r := start(b, cfg)
		testkit.WaitFor(b, 2*time.Minute, "100 firings", func() bool {
			return r.agent.Status(false).Rules[0].Firings >= 100
		})
		st := r.agent.Status(false)
		r.stop()
		det, rule := st.Cameras[0].Detect, st.Rules[0]
		b.ReportMetric(det.LatencyP50, "detect-p50-ms")
		b.ReportMetric(det.LatencyP99, "detect-p99-ms")
		b.ReportMetric(rule.ActuateP50, "actuate-p50-ms")
		b.ReportMetric(rule.ActuateP99, "actuate-p99-ms")
		b.ReportMetric(rule.AddedP50, "added-p50-ms")
		b.ReportMetric(rule.AddedP99, "added-p99-ms")
	}
}
