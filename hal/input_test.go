package hal_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/hal/sim"
	"github.com/vigil-edge/vigil/internal/testkit"
)

type change struct {
	name  string
	level hal.Level
}

// polledInput is a sim input on a line without edge detection: WaitForEdge only waits
// out its timeout, as a driver that cannot report edges may, so Run polls.
type polledInput struct{ *sim.Input }

func (p polledInput) WaitForEdge(timeout time.Duration) bool {
	time.Sleep(timeout) // the line's own wait, not a test's synchronisation
	return false
}

type inputRig struct {
	t       *testing.T
	line    *sim.Input
	in      *hal.Input
	clock   *testkit.Clock
	changes chan change
}

// startInput runs a debounced Input on a sim line and stops it (asserting that Run
// returns) when the test ends.
func startInput(t *testing.T, debounce time.Duration, line hal.InputLine) *inputRig {
	t.Helper()
	r := &inputRig{t: t, clock: testkit.NewClock(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)), changes: make(chan change, 100)}
	switch s := line.(type) {
	case *sim.Input:
		r.line = s
	case polledInput:
		r.line = s.Input
	}
	r.in = hal.NewInput("ack", line, hal.InputOptions{
		Debounce: debounce, Now: r.clock.Now, MaxWait: 2 * time.Millisecond,
		OnChange: func(name string, level hal.Level) { r.changes <- change{name, level} },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.in.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after its context was cancelled")
		}
		r.in.Close()
	})
	return r
}

// set changes the sim line and waits until Run has read the new level.
func (r *inputRig) set(level hal.Level) {
	r.t.Helper()
	r.line.Set(level)
	testkit.WaitFor(r.t, 5*time.Second, "Run to read "+level.String(), r.line.Sampled)
}

// settle waits until Run has completed two more reads, so whatever the clock now says
// has been looked at by a whole iteration.
func (r *inputRig) settle() {
	r.t.Helper()
	n := r.line.Reads()
	testkit.WaitFor(r.t, 5*time.Second, "two more reads", func() bool { return r.line.Reads() >= n+2 })
}

// nextChange waits for one OnChange call.
func (r *inputRig) nextChange() change {
	r.t.Helper()
	select {
	case c := <-r.changes:
		return c
	case <-time.After(5 * time.Second):
		r.t.Fatal("timed out waiting for OnChange")
		return change{}
	}
}

func (r *inputRig) noMoreChanges() {
	r.t.Helper()
	r.settle()
	select {
	case c := <-r.changes:
		r.t.Fatalf("unexpected OnChange %+v", c)
	default:
	}
}

// lineKinds runs a test on a line with edge detection and on one without.
func lineKinds(t *testing.T, test func(t *testing.T, line hal.InputLine)) {
	t.Run("edges", func(t *testing.T) { test(t, sim.NewInput()) })
	t.Run("polled", func(t *testing.T) { test(t, polledInput{sim.NewInput()}) })
}

func TestInputCleanPress(t *testing.T) { lineKinds(t, testInputCleanPress) }

func testInputCleanPress(t *testing.T, line hal.InputLine) {
	const window = 50 * time.Millisecond
	r := startInput(t, window, line)
	if st := r.in.State(); st.State != "low" || st.Driver != "sim" || st.Changes != 0 || st.LastChange != "" {
		t.Fatalf("initial state %+v", st)
	}

	r.set(hal.High)
	r.settle()
	if r.in.Level() != hal.Low {
		t.Fatal("a press was accepted before it had been stable for the debounce window")
	}
	r.clock.Advance(window)
	testkit.WaitFor(t, 5*time.Second, "the press to be accepted", func() bool { return r.in.Level() == hal.High })
	if c := r.nextChange(); c != (change{"ack", hal.High}) {
		t.Fatalf("OnChange %+v", c)
	}

	r.set(hal.Low)
	r.clock.Advance(window)
	testkit.WaitFor(t, 5*time.Second, "the release to be accepted", func() bool { return r.in.Level() == hal.Low })
	if c := r.nextChange(); c != (change{"ack", hal.Low}) {
		t.Fatalf("OnChange %+v", c)
	}
	r.noMoreChanges()
	st := r.in.State()
	if st.State != "low" || st.Changes != 2 || st.LastChange != r.clock.Now().UTC().Format(time.RFC3339Nano) {
		t.Fatalf("state %+v", st)
	}
}

func TestInputBouncesShorterThanTheWindowAreIgnored(t *testing.T) {
	lineKinds(t, testInputBouncesShorterThanTheWindowAreIgnored)
}

func testInputBouncesShorterThanTheWindowAreIgnored(t *testing.T, line hal.InputLine) {
	const window = 50 * time.Millisecond
	r := startInput(t, window, line)
	// Six 10ms bounces: 60ms high in all, more than the window, but never 50ms at once.
	for range 6 {
		r.set(hal.High)
		r.clock.Advance(10 * time.Millisecond)
		r.set(hal.Low)
		r.clock.Advance(10 * time.Millisecond)
	}
	r.clock.Advance(time.Hour)
	r.noMoreChanges()
	if st := r.in.State(); st.State != "low" || st.Changes != 0 {
		t.Fatalf("bounces were accepted: %+v", st)
	}
}

func TestInputPressHeldLongerIsAccepted(t *testing.T) {
	const window = 50 * time.Millisecond
	r := startInput(t, window, sim.NewInput())
	r.set(hal.High)
	r.clock.Advance(40 * time.Millisecond)
	r.settle()
	// A bounce low and back, faster than Run reads: whether Run sees the low or only
	// the edge, the window starts again.
	r.line.Set(hal.Low)
	r.line.Set(hal.High)
	r.settle()
	r.settle()
	r.clock.Advance(20 * time.Millisecond) // 60ms since the press, 20ms since the bounce
	r.settle()
	if r.in.Level() != hal.Low {
		t.Fatal("the window did not restart after a bounce inside it")
	}
	r.clock.Advance(40 * time.Millisecond) // 60ms since the bounce
	testkit.WaitFor(t, 5*time.Second, "the held press to be accepted", func() bool { return r.in.Level() == hal.High })
	if c := r.nextChange(); c.level != hal.High {
		t.Fatalf("OnChange %+v", c)
	}
	r.noMoreChanges()
	if st := r.in.State(); st.Changes != 1 {
		t.Fatalf("state %+v", st)
	}
}

func TestInputWithoutDebounceTakesEveryChange(t *testing.T) {
	r := startInput(t, 0, sim.NewInput())
	for i, level := range []hal.Level{hal.High, hal.Low, hal.High} {
		r.line.Set(level)
		testkit.WaitFor(t, 5*time.Second, "change "+level.String(), func() bool { return r.in.Level() == level })
		if c := r.nextChange(); c.level != level {
			t.Fatalf("change %d: OnChange %+v", i, c)
		}
	}
	r.noMoreChanges()
	if st := r.in.State(); st.Changes != 3 || st.State != "high" {
		t.Fatalf("state %+v", st)
	}
}

func TestInputStartLevelIsNotAChange(t *testing.T) {
	line := sim.NewInput()
	line.Set(hal.High) // held down at start
	r := startInput(t, 0, line)
	if st := r.in.State(); st.State != "high" || st.Changes != 0 {
		t.Fatalf("state %+v", st)
	}
	r.noMoreChanges()
}

func TestInputFault(t *testing.T) {
	errGone := errors.New("gpiochip1 went away")
	line := sim.NewInput()
	line.Fail(errGone)
	r := startInput(t, 0, line)
	if st := r.in.State(); st.State != hal.StateFault || st.LastError != errGone.Error() {
		t.Fatalf("state %+v", st)
	}
	line.Fail(nil)
	testkit.WaitFor(t, 5*time.Second, "the input to be readable", func() bool { return r.in.State().State == "low" })
	if st := r.in.State(); st.LastError != "" || st.Changes != 0 {
		t.Fatalf("state %+v", st)
	}

	line.Set(hal.High)
	testkit.WaitFor(t, 5*time.Second, "the press", func() bool { return r.in.Level() == hal.High })
	line.Fail(errGone)
	testkit.WaitFor(t, 5*time.Second, "the fault", func() bool { return r.in.State().State == hal.StateFault })
	if r.in.Level() != hal.High {
		t.Fatal("a fault changed the level")
	}
	line.Fail(nil)
	testkit.WaitFor(t, 5*time.Second, "the recovery", func() bool { return r.in.State().State == "high" })
}

func TestInputOnRetryingLine(t *testing.T) {
	var (
		mu   sync.Mutex
		plug *sim.Input // nil: not plugged in
	)
	open := func() (hal.InputLine, error) {
		mu.Lock()
		defer mu.Unlock()
		if plug == nil {
			return nil, errors.New("no GPIO chip gpiochip1")
		}
		return plug, nil
	}
	r := startInput(t, 0, hal.RetryingInput("gpio", open))
	if st := r.in.State(); st.State != hal.StateFault || st.Driver != "gpio" {
		t.Fatalf("state %+v", st)
	}
	line := sim.NewInput()
	line.Set(hal.High)
	mu.Lock()
	plug = line
	mu.Unlock()
	// Retried at most once a second: this takes a second of real time.
	testkit.WaitFor(t, 5*time.Second, "the plugged-in line to be read", func() bool { return r.in.State().State == "high" })
	line.Set(hal.Low)
	testkit.WaitFor(t, 5*time.Second, "a change on the plugged-in line", func() bool { return r.in.Level() == hal.Low })
}
