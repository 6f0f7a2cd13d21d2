package hal_test

import (
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/hal/sim"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func newOutput(t *testing.T, safe hal.Level) (*hal.Output, *sim.Line) {
	t.Helper()
	line := sim.New(nil)
	o, err := hal.NewOutput("relay", line, hal.OutputOptions{Safe: safe})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o, line
}

func levels(line *sim.Line) []string {
	var out []string
	for _, tr := range line.History() {
		out = append(out, tr.Level)
	}
	return out
}

func TestSafeLevelAtStartAndClose(t *testing.T) {
	for _, safe := range []hal.Level{hal.Low, hal.High} {
		o, line := newOutput(t, safe)
		if got := levels(line); len(got) != 1 || got[0] != safe.String() {
			t.Fatalf("safe %s: line not driven safe at start: %v", safe, got)
		}
		if err := o.Set(!safe, "test"); err != nil {
			t.Fatal(err)
		}
		if err := o.Close(); err != nil {
			t.Fatal(err)
		}
		h := levels(line)
		if h[len(h)-1] != safe.String() {
			t.Errorf("safe %s: Close left the line %s", safe, h[len(h)-1])
		}
		if err := o.Set(!safe, "after close"); err == nil {
			t.Errorf("Set after Close succeeded")
		}
	}
}

func TestPulse(t *testing.T) {
	o, line := newOutput(t, hal.Low)
	const d = 30 * time.Millisecond
	if err := o.Pulse(d, "test"); err != nil {
		t.Fatal(err)
	}
	if st := o.State(); st.State != "high" {
		t.Fatalf("during pulse: %+v", st)
	}
	waitFor(t, "the pulse to end", func() bool { return o.State().State == "low" })
	h := line.History()
	if len(h) != 3 || h[1].Level != "high" || h[2].Level != "low" {
		t.Fatalf("history %v", h)
	}
	if width := h[2].At.Sub(h[1].At); width < d {
		t.Errorf("pulse lasted %v, want at least %v", width, d)
	}
	if st := o.State(); st.Transitions != 2 || st.LastReason != "pulse end" {
		t.Errorf("state %+v", st)
	}
}

func TestPulseExtendsAndSetCancels(t *testing.T) {
	o, line := newOutput(t, hal.Low)
	o.Pulse(20*time.Millisecond, "first")
	o.Pulse(200*time.Millisecond, "second")
	o.Pulse(10*time.Millisecond, "shorter, must not cut the second short")
	start := time.Now()
	waitFor(t, "the extended pulse to end", func() bool { return o.State().State == "low" })
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("extended pulse ended after %v", el)
	}
	if got := levels(line); len(got) != 3 {
		t.Errorf("one extended pulse must be one high and one low: %v", got)
	}

	o.Pulse(time.Hour, "long")
	if err := o.Set(hal.Low, "operator"); err != nil {
		t.Fatal(err)
	}
	if err := o.Set(hal.High, "hold"); err != nil {
		t.Fatal(err)
	}
	// The cancelled pulse's timer must not bring the line back to low later.
	if st := o.State(); st.State != "high" {
		t.Fatalf("state %+v", st)
	}
}

func TestConcurrentUse(t *testing.T) {
	o, _ := newOutput(t, hal.High)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 100 {
				if (i+j)%3 == 0 {
					o.Set(hal.Level(j%2 == 0), "race")
				} else {
					o.Pulse(time.Millisecond, "race")
				}
				_ = o.State()
			}
		}()
	}
	wg.Wait()
	o.Safe("done")
	if st := o.State(); st.State != "high" {
		t.Errorf("Safe did not restore the safe level: %+v", st)
	}
}
