package hal

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// InputLine is what a driver provides: one digital input line, shaped on periph's
// gpio.PinIn so a periph pin adapts in a few lines. Read returns the logical level (an
// active-low line is inverted by its driver). One goroutine (Input.Run) calls Read and
// WaitForEdge; Close is called after it has stopped.
type InputLine interface {
	Driver() string
	Read() (Level, error)
	// WaitForEdge blocks until the line changes or timeout (> 0) passes, and reports
	// whether it saw a change. A line without edge detection may simply wait out the
	// timeout and return false: callers read the line after every return.
	WaitForEdge(timeout time.Duration) bool
	Close() error
}

// InputState is what the status page shows of an input.
type InputState struct {
	Name   string `json:"name"`
	Driver string `json:"driver"`
	// State is the debounced level, "low" or "high", or "fault" while the line has never
	// been read or its last read failed (LastError says why).
	State      string `json:"state"`
	Changes    uint64 `json:"changes"`
	LastChange string `json:"last_change,omitempty"`
	LastError  string `json:"last_error,omitempty"`
}

// InputOptions configure an Input.
type InputOptions struct {
	// Debounce is how long a new level must be read stable before it is accepted; 0
	// accepts every change read.
	Debounce time.Duration
	Logger   *slog.Logger
	// OnChange is called from Run's goroutine after each accepted change, once per
	// change, without any lock held. It should not block for long: the line is not
	// watched while it runs.
	OnChange func(name string, level Level)
	// Now is the clock the debounce window is measured on; nil for time.Now. Tests
	// inject one.
	Now func() time.Time
	// MaxWait bounds one WaitForEdge call (default 250ms). See Run for why.
	MaxWait time.Duration
}

// DefaultMaxWait is how long Run waits for an edge at most before it reads the line
// anyway and looks at its context.
const DefaultMaxWait = 250 * time.Millisecond

// Input is a debounced digital input: the logical level of an InputLine as Run last
// accepted it.
//
// Debounce: a level different from the accepted one becomes a candidate when it is
// read; it is accepted once it has been read continuously for Debounce. Reading the
// accepted level again drops the candidate (a bounce shorter than the window is
// ignored), and an edge seen while the candidate level is still read restarts the
// window (the line went away and came back in between). With Debounce 0 every change
// read is accepted at once. Run reads after every edge, at the end of a candidate's
// window and at least every MaxWait, so a line without edge detection is polled.
type Input struct {
	name     string
	line     InputLine
	debounce time.Duration
	maxWait  time.Duration
	onChange func(string, Level)
	now      func() time.Time
	logger   *slog.Logger

	mu         sync.Mutex // guards the fields below
	level      Level
	known      bool // a level has been read at least once
	changes    uint64
	lastChange time.Time
	lastErr    error
}

// NewInput reads line once, so Level is the line's level from the start (accepted
// without debounce, as there is nothing to bounce from, and without OnChange: a button
// held down at start is not a press). If that read fails the Input starts in the
// fault state and Run keeps reading. The Input owns line.
func NewInput(name string, line InputLine, opts InputOptions) *Input {
	in := &Input{
		name: name, line: line, debounce: max(opts.Debounce, 0), maxWait: opts.MaxWait,
		onChange: opts.OnChange, now: opts.Now, logger: opts.Logger,
	}
	if in.maxWait <= 0 {
		in.maxWait = DefaultMaxWait
	}
	if in.now == nil {
		in.now = time.Now
	}
	if in.logger == nil {
		in.logger = slog.New(slog.DiscardHandler)
	}
	in.logger = in.logger.With("component", "hal", "input", name)
	if level, err := line.Read(); err != nil {
		in.setFault(err)
	} else {
		in.level, in.known = level, true
	}
	return in
}

// Name is the input's name.
func (in *Input) Name() string { return in.name }

// Level is the debounced logical level. While the line is in fault it stays at the
// last accepted level (Low if none was ever read); State tells the fault apart.
func (in *Input) Level() Level {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.level
}

// State reports the debounced level, the number of accepted changes and the fault.
func (in *Input) State() InputState {
	in.mu.Lock()
	defer in.mu.Unlock()
	s := InputState{Name: in.name, Driver: in.line.Driver(), State: in.level.String(), Changes: in.changes}
	if !in.lastChange.IsZero() {
		s.LastChange = in.lastChange.UTC().Format(time.RFC3339Nano)
	}
	if !in.known || in.lastErr != nil {
		s.State = StateFault
	}
	if in.lastErr != nil {
		s.LastError = in.lastErr.Error()
	}
	return s
}

// Run watches the line until ctx is done, then returns nil. Only one Run at a time.
//
// A driver's WaitForEdge cannot be cancelled (periph's gpioioctl line can only be
// interrupted through Halt, which races with a wait about to start), so Run never
// waits longer than MaxWait: it notices a cancelled ctx within MaxWait and leaves no
// goroutine behind.
func (in *Input) Run(ctx context.Context) error {
	var (
		pending bool      // a level other than the accepted one is being read
		since   time.Time // when the candidate's window started
	)
	for ctx.Err() == nil {
		wait := in.maxWait
		if pending {
			wait = min(wait, in.debounce-in.now().Sub(since))
		}
		edge := false
		if wait > 0 {
			start := time.Now()
			edge = in.line.WaitForEdge(wait)
			if !edge && time.Since(start) < wait/2 {
				// The line cannot wait (a driver that returns at once on error): poll
				// instead of spinning.
				if !sleepCtx(ctx, wait) {
					break
				}
			}
		}
		level, err := in.line.Read()
		now := in.now()
		if err != nil {
			in.setFault(err)
			pending = false
			continue
		}
		stable, first := in.readOK(level)
		switch {
		case first:
			pending = false
			continue
		case level == stable:
			pending = false // a bounce shorter than the window, or nothing happened
			continue
		case !pending || edge:
			pending, since = true, now
		}
		if now.Sub(since) >= in.debounce {
			pending = false
			in.accept(level, now)
		}
	}
	return nil
}

// readOK clears a fault after a successful read and returns the accepted level; first
// is true when level was the first ever read, which it accepts as the start level.
func (in *Input) readOK(level Level) (stable Level, first bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.lastErr != nil {
		in.logger.Info("input readable again", "level", level)
		in.lastErr = nil
	}
	if !in.known {
		in.level, in.known = level, true
		return level, true
	}
	return in.level, false
}

func (in *Input) setFault(err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.lastErr == nil || in.lastErr.Error() != err.Error() {
		in.logger.Error("read input", "err", err) // once per distinct error, not per poll
	}
	in.lastErr = err
}

func (in *Input) accept(level Level, at time.Time) {
	in.mu.Lock()
	in.level = level
	in.changes++
	in.lastChange = at
	in.mu.Unlock()
	in.logger.Info("input changed", "level", level)
	if in.onChange != nil {
		in.onChange(in.name, level)
	}
}

// Close releases the line. Call it after Run has returned.
func (in *Input) Close() error { return in.line.Close() }

// sleepCtx waits d or until ctx is done; it reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
