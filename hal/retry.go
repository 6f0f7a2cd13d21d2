package hal

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

var errClosed = errors.New("line closed")

// Retrying returns a Line that opens the driver's line lazily, on the first Out, with
// open. While open fails, Out returns open's error and the next Out tries again, at
// most once every second (a command storm must not hammer a missing device): a USB
// GPIO adapter plugged in after start begins to work on the next command. Once open,
// the line is kept; errors from its Out are returned as they are. With an Output on
// top, the actuator stays in the fault state, visible, until a command gets through.
func Retrying(driver string, open func() (Line, error)) Line {
	return &retryingLine{opener: opener[Line]{driver: driver, open: open, now: time.Now}}
}

// RetryingInput is Retrying for an input: Read returns open's error until open
// succeeds (retried at most once a second), and WaitForEdge waits out its timeout
// while the line is not open, so Input.Run polls it at its usual pace.
func RetryingInput(driver string, open func() (InputLine, error)) InputLine {
	return &retryingInput{opener: opener[InputLine]{driver: driver, open: open, now: time.Now}}
}

// opener opens a line at most once per retryInterval until it succeeds.
type opener[L interface{ Close() error }] struct {
	driver string
	open   func() (L, error)
	now    func() time.Time

	// mu guards the fields below and is held across open, so one open runs at a time.
	mu     sync.Mutex
	line   L
	opened bool
	tried  time.Time // when open last ran
	err    error     // open's last error
	closed bool
}

func (o *opener[L]) Driver() string { return o.driver }

// get returns the open line, opening it if it is time to try again.
func (o *opener[L]) get() (L, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var zero L
	switch {
	case o.closed:
		return zero, errClosed
	case o.opened:
		return o.line, nil
	case o.err != nil && o.now().Sub(o.tried) < retryInterval:
		return zero, o.err
	}
	o.tried = o.now()
	line, err := o.open()
	if err != nil {
		o.err = fmt.Errorf("open %s line (retried at most once a second): %w", o.driver, err)
		return zero, o.err
	}
	o.line, o.opened, o.err = line, true, nil
	return line, nil
}

func (o *opener[L]) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil
	}
	o.closed = true
	if o.opened {
		return o.line.Close()
	}
	return nil
}

type retryingLine struct{ opener[Line] }

func (r *retryingLine) Out(level Level) error {
	line, err := r.get()
	if err != nil {
		return err
	}
	return line.Out(level)
}

type retryingInput struct{ opener[InputLine] }

func (r *retryingInput) Read() (Level, error) {
	line, err := r.get()
	if err != nil {
		return Low, err
	}
	return line.Read()
}

func (r *retryingInput) WaitForEdge(timeout time.Duration) bool {
	line, err := r.get()
	if err != nil {
		// Nothing to wait on: wait out the timeout so the caller polls, not spins.
		t := time.NewTimer(timeout)
		defer t.Stop()
		<-t.C
		return false
	}
	return line.WaitForEdge(timeout)
}
