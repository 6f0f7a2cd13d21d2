package agent

import (
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
)

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
	got, seen := s.collect(4, got) // the window opened after the 4th detection
	for _, step := range []int{100, statsWindow - 7, statsWindow, 1, 3} {
		recordN(int(seen), int(seen)+step)
		got, seen = s.collect(seen, got)
	}
	if seen != s.frames || len(got) != int(seen)-4 {
		t.Fatalf("collected %d latencies up to %d, want %d", len(got), seen, seen-4)
	}
	for i, d := range got {
		if d != time.Duration(i+4) {
			t.Fatalf("latency %d is %v, want %v", i, d, time.Duration(i+4))
		}
	}
	// Nothing new: nothing collected.
	if more, n := s.collect(seen, nil); len(more) != 0 || n != seen {
		t.Errorf("collect with no new detection: %v up to %d, want none up to %d", more, n, seen)
	}
}

// The measuring views read the running camera's counters and latencies, and answer for
// an unknown camera without failing.
func TestMeasureViews(t *testing.T) {
	cfg := testConfig(t, t.TempDir(), "")
	cfg.Rules = nil
	r := start(t, cfg)
	var c CameraCounters
	testkit.WaitFor(t, 30*time.Second, "three detections", func() bool {
		var ok bool
		c, ok = r.agent.CameraCounters("door")
		return ok && c.Detected >= 3
	})
	if c.Captured < c.Detected {
		t.Errorf("counters %+v: more detected than captured", c)
	}
	lat, n := r.agent.DetectLatencies("door", 1, nil)
	if n < c.Detected || len(lat) != int(n)-1 {
		t.Errorf("latencies after the first detection: %d up to %d, want %d", len(lat), n, n-1)
	}
	for _, d := range lat {
		if d <= 0 {
			t.Errorf("latency %v, want > 0", d)
		}
	}
	if _, ok := r.agent.CameraCounters("nope"); ok {
		t.Error("counters for a camera the agent does not have")
	}
	if lat, n := r.agent.DetectLatencies("nope", 7, nil); lat != nil || n != 7 {
		t.Errorf("latencies of an unknown camera: %v up to %d, want none up to 7", lat, n)
	}
}
