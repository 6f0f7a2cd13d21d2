package hal_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/hal/sim"
	"github.com/vigil-edge/vigil/internal/testkit"
)

// opener stands in for a driver's open: it fails until plugged.
type opener struct {
	line    *sim.Line
	plugged bool
	calls   int
}

func (o *opener) open() (hal.Line, error) {
	o.calls++
	if !o.plugged {
		return nil, errors.New(`no GPIO chip "gpiochip1"`)
	}
	return o.line, nil
}

func TestRetryingOpensAtMostOnceASecond(t *testing.T) {
	clock := testkit.NewClock(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	op := &opener{line: sim.New(nil)}
	line := hal.RetryingAt("gpio", op.open, clock.Now)
	if line.Driver() != "gpio" {
		t.Errorf("driver %q", line.Driver())
	}
	if op.calls != 0 {
		t.Fatal("Retrying opened before the first Out")
	}
	err := line.Out(hal.High)
	if err == nil || !strings.Contains(err.Error(), `no GPIO chip "gpiochip1"`) || op.calls != 1 {
		t.Fatalf("first Out: %v after %d opens", err, op.calls)
	}
	clock.Advance(hal.RetryInterval - time.Millisecond)
	op.plugged = true
	if err2 := line.Out(hal.High); err2 == nil || err2.Error() != err.Error() || op.calls != 1 {
		t.Fatalf("Out within the interval: %v after %d opens", err2, op.calls)
	}
	clock.Advance(time.Millisecond)
	if err := line.Out(hal.High); err != nil || op.calls != 2 {
		t.Fatalf("Out after the interval: %v after %d opens", err, op.calls)
	}
	if err := line.Out(hal.Low); err != nil || op.calls != 2 {
		t.Fatalf("an open line was opened again: %v after %d opens", err, op.calls)
	}
	if got := levels(op.line); len(got) != 2 || got[0] != "high" || got[1] != "low" {
		t.Fatalf("history %v", got)
	}
	if err := line.Close(); err != nil {
		t.Fatal(err)
	}
	if err := line.Out(hal.High); err == nil {
		t.Fatal("Out after Close succeeded")
	}
}

// An actuator on a chip that is missing at start is in fault, and works once the chip
// is there and a command comes.
func TestOutputOnRetryingLine(t *testing.T) {
	clock := testkit.NewClock(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	op := &opener{line: sim.New(nil)}
	o, err := hal.NewOutput("weld-pause", hal.RetryingAt("gpio", op.open, clock.Now), hal.OutputOptions{Safe: hal.High})
	if o == nil || err == nil || !strings.Contains(err.Error(), "gpiochip1") {
		t.Fatalf("NewOutput: %v, %v", o, err)
	}
	defer o.Close()
	if st := o.State(); st.State != hal.StateFault || !strings.Contains(st.LastError, "gpiochip1") || st.Driver != "gpio" {
		t.Fatalf("state %+v", st)
	}
	op.plugged = true
	if err := o.Safe("rule"); err == nil {
		t.Fatal("the open was retried within a second")
	}
	clock.Advance(hal.RetryInterval)
	if err := o.Safe("rule"); err != nil {
		t.Fatal(err)
	}
	if st := o.State(); st.State != "high" || st.LastError != "" {
		t.Fatalf("state %+v", st)
	}
	if got := levels(op.line); len(got) != 1 || got[0] != "high" {
		t.Fatalf("history %v", got)
	}
}
