package hal_test

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/hal/sim"
	"github.com/vigil-edge/vigil/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

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
	testkit.WaitFor(t, 5*time.Second, "the pulse to end", func() bool { return o.State().State == "low" })
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

// An output whose normal level differs from its safe one (a weld robot's pause relay:
// safe = paused, normal = running) pulses away from normal and back to it.
func TestPulseFromNormalLevel(t *testing.T) {
	line := sim.New(nil)
	normal := hal.High
	o, err := hal.NewOutput("relay", line, hal.OutputOptions{Safe: hal.Low, Normal: &normal})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if err := o.Set(hal.High, "running"); err != nil {
		t.Fatal(err)
	}
	if err := o.Pulse(20*time.Millisecond, "test"); err != nil {
		t.Fatal(err)
	}
	if st := o.State(); st.State != "low" {
		t.Fatalf("during the pulse: %+v", st)
	}
	testkit.WaitFor(t, 5*time.Second, "the pulse to end at the normal level", func() bool { return o.State().State == "high" })
	if got := levels(line); strings.Join(got, ",") != "low,high,low,high" {
		t.Errorf("history %v", got)
	}
}

func TestPulseExtendsAndSetCancels(t *testing.T) {
	o, line := newOutput(t, hal.Low)
	o.Pulse(20*time.Millisecond, "first")
	o.Pulse(200*time.Millisecond, "second")
	o.Pulse(10*time.Millisecond, "shorter, must not cut the second short")
	start := time.Now()
	testkit.WaitFor(t, 5*time.Second, "the extended pulse to end", func() bool { return o.State().State == "low" })
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

var errUnplugged = errors.New("gpiochip1 went away")

func TestNewOutputOnAFailingLineIsUsableAndInFault(t *testing.T) {
	line := sim.New(nil)
	line.Fail(errUnplugged)
	o, err := hal.NewOutput("relay", line, hal.OutputOptions{Safe: hal.Low})
	if o == nil {
		t.Fatal("NewOutput returned no Output with its error")
	}
	t.Cleanup(func() { o.Close() })
	if err == nil || !errors.Is(err, errUnplugged) || !strings.Contains(err.Error(), "actuator relay: drive safe level low at start") {
		t.Fatalf("error %v", err)
	}
	st := o.State()
	if st.State != hal.StateFault || st.LastError == "" || st.Safe != "low" {
		t.Fatalf("state %+v", st)
	}
	if err := o.Set(hal.High, "rule"); !errors.Is(err, errUnplugged) {
		t.Fatalf("Set on a failing line: %v", err)
	}
	if got := levels(line); len(got) != 0 {
		t.Fatalf("a failing line recorded %v", got)
	}

	line.Fail(nil) // plugged back in: the next command gets through
	if err := o.Set(hal.High, "rule"); err != nil {
		t.Fatal(err)
	}
	st = o.State()
	if st.State != "high" || st.LastError != "" || st.LastReason != "rule" || st.Transitions != 0 {
		t.Fatalf("after recovery %+v (the first drive is where the output starts, not a transition)", st)
	}
	if err := o.Safe("operator"); err != nil {
		t.Fatal(err)
	}
	if st := o.State(); st.State != "low" || st.Transitions != 1 {
		t.Fatalf("after Safe %+v", st)
	}
	if got := levels(line); !slices.Equal(got, []string{"high", "low"}) {
		t.Fatalf("history %v", got)
	}
}

func TestOutputFaultAfterWorking(t *testing.T) {
	o, line := newOutput(t, hal.Low)
	line.Fail(errUnplugged)
	if err := o.Set(hal.High, "rule"); !errors.Is(err, errUnplugged) {
		t.Fatalf("Set: %v", err)
	}
	if st := o.State(); st.State != hal.StateFault || st.LastError != errUnplugged.Error() || o.Fault() == nil {
		t.Fatalf("state %+v", st)
	}
	line.Fail(nil)
	if err := o.Set(hal.High, "retry"); err != nil {
		t.Fatal(err)
	}
	if st := o.State(); st.State != "high" || st.LastError != "" || st.Transitions != 1 || o.Fault() != nil {
		t.Fatalf("state %+v", st)
	}
}

// A pulse whose end cannot be driven must not leave the output at its unsafe level:
// the return to safe is retried until the line takes it.
func TestPulseEndRetriedUntilSafe(t *testing.T) {
	o, line := newOutput(t, hal.Low)
	d := 50 * time.Millisecond
	for {
		if err := o.Pulse(d, "rule"); err != nil {
			t.Fatal(err)
		}
		line.Fail(errUnplugged)
		if o.State().State == "high" {
			break // the line failed before the pulse ended, as the test needs
		}
		// This machine was too slow: the pulse ended before Fail. Try a longer one.
		line.Fail(nil)
		if d *= 4; d > time.Minute {
			t.Fatal("could not make a line fail within a pulse")
		}
	}
	testkit.WaitFor(t, 5*time.Second, "the failed pulse end to show as a fault", func() bool { return o.State().State == hal.StateFault })
	line.Fail(nil)
	testkit.WaitFor(t, 5*time.Second, "the retried pulse end to drive safe", func() bool { return o.State().State == "low" })
	h := levels(line)
	if h[len(h)-1] != "low" || o.State().LastReason != "pulse end" {
		t.Fatalf("history %v, state %+v", h, o.State())
	}
}

// BenchmarkOutputSet is one actuator command on the sim driver: the hal's share of the
// rule-to-actuator budget.
func BenchmarkOutputSet(b *testing.B) {
	o, err := hal.NewOutput("relay", sim.New(nil), hal.OutputOptions{Safe: hal.Low})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	level := hal.High
	for b.Loop() {
		if err := o.Set(level, "bench"); err != nil {
			b.Fatal(err)
		}
		level = !level
	}
}
