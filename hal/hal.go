package hal

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Level is a logical output level. Drivers map it to the electrical level
// (the gpio driver inverts it for active-low lines).
type Level bool

// The two levels.
const (
	Low  Level = false
	High Level = true
)

func (l Level) String() string {
	if l {
		return "high"
	}
	return "low"
}

// ParseLevel reads "low" or "high".
func ParseLevel(s string) (Level, error) {
	switch s {
	case "low":
		return Low, nil
	case "high":
		return High, nil
	}
	return Low, fmt.Errorf("level %q is neither low nor high", s)
}

// State is what the status page shows of an actuator.
type State struct {
	Name   string `json:"name"`
	Driver string `json:"driver"`
	// State is "low" or "high", or "fault" while the line has never been driven
	// successfully or its last drive failed (LastError says why).
	State       string `json:"state"`
	Safe        string `json:"safe"`
	Transitions uint64 `json:"transitions"`
	LastChange  string `json:"last_change,omitempty"`
	LastReason  string `json:"last_reason,omitempty"`
	LastError   string `json:"last_error,omitempty"`
}

// StateFault is State.State (and InputState.State) of a line that cannot be driven or
// read.
const StateFault = "fault"

// retryInterval bounds how often a failing line is retried without a command: the
// reopen of a Retrying line, and the return to safe at the end of a pulse.
const retryInterval = time.Second

// Line is what a driver provides: one output line. Out is called with Output's lock
// held, so a driver sees one call at a time.
type Line interface {
	Driver() string
	Out(level Level) error
	Close() error
}

// Output is a named actuator on a driver's Line: Set and Pulse never block for the
// pulse's length; Safe drives the configured safe level.
type Output struct {
	name   string
	line   Line
	safe   Level
	normal Level // a pulse's resting level
	logger *slog.Logger
	now    func() time.Time

	mu          sync.Mutex // guards the fields below and serialises Out calls
	level       Level      // the level last driven successfully (safe before the first)
	driven      bool       // the line has been driven successfully at least once
	transitions uint64
	lastChange  time.Time
	lastReason  string
	lastErr     error
	pulseTimer  *time.Timer
	pulseUntil  time.Time
	pulseGen    uint64 // bumped whenever a pending pulse end is cancelled or replaced
	closed      bool
}

// OutputOptions configure an Output.
type OutputOptions struct {
	Safe Level
	// Normal is the operating level a pulse leaves and returns to; nil means Safe.
	// (The agent drives it once the pipeline runs; Output itself starts at Safe.)
	Normal *Level
	Logger *slog.Logger
	Now    func() time.Time
}

// NewOutput drives line to its safe level at once (an actuator is safe before anything
// else runs) and returns the Output. The Output owns line.
//
// When the safe level cannot be driven (a GPIO chip missing at start, a line held by
// another process), NewOutput returns the error AND a usable Output: it is in the fault
// state (State().State == "fault", LastError set) and every later command (Set, Pulse,
// Safe) tries the line again, so a caller that wants the rest of the agent to run keeps
// the Output and reports the error; one that wants to refuse to start closes it. With a
// Retrying line, a chip that appears later starts working on the next command.
func NewOutput(name string, line Line, opts OutputOptions) (*Output, error) {
	o := &Output{name: name, line: line, safe: opts.Safe, normal: opts.Safe, logger: opts.Logger, now: opts.Now}
	if opts.Normal != nil {
		o.normal = *opts.Normal
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if o.now == nil {
		o.now = time.Now
	}
	o.logger = o.logger.With("component", "hal", "actuator", name)
	o.level = o.safe
	o.lastReason = "start"
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.driveLocked(o.safe, "start"); err != nil {
		return o, fmt.Errorf("actuator %s: drive safe level %s at start: %w", name, o.safe, o.lastErr)
	}
	return o, nil
}

// Name is the actuator's name.
func (o *Output) Name() string { return o.name }

// Set drives level, cancelling any pulse.
func (o *Output) Set(level Level, reason string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.stopPulseLocked()
	return o.driveLocked(level, reason)
}

// Pulse drives the other level than the normal one for d, then the normal level again.
// A pulse during a pulse extends it to whichever ends later.
func (o *Output) Pulse(d time.Duration, reason string) error {
	if d <= 0 {
		return fmt.Errorf("actuator %s: pulse of %v", o.name, d)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.driveLocked(!o.normal, reason); err != nil {
		return err
	}
	until := o.now().Add(d)
	if until.After(o.pulseUntil) {
		o.stopPulseLocked()
		o.pulseUntil = until
		gen := o.pulseGen
		o.pulseTimer = time.AfterFunc(d, func() { o.endPulse(gen) })
	}
	return nil
}

// endPulse returns to normal unless the pulse it ended was cancelled or extended since:
// a timer that already fired cannot be stopped, so it checks the generation. If the
// line refuses, the output may be left at its unsafe level with nobody to command it
// again, so endPulse tries again every retryInterval until it succeeds or a command
// (which bumps the generation) takes over.
func (o *Output) endPulse(gen uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed || gen != o.pulseGen {
		return
	}
	o.pulseTimer = nil
	if err := o.driveLocked(o.normal, "pulse end"); err != nil {
		o.logger.Error("end of pulse: could not return to the normal level; retrying", "err", err, "retry_in", retryInterval)
		o.pulseTimer = time.AfterFunc(retryInterval, func() { o.endPulse(gen) })
		return
	}
	o.pulseUntil = time.Time{}
}

// Safe drives the safe level and cancels any pulse.
func (o *Output) Safe(reason string) error {
	return o.Set(o.safe, reason)
}

func (o *Output) stopPulseLocked() {
	o.pulseGen++
	if o.pulseTimer != nil {
		o.pulseTimer.Stop()
		o.pulseTimer = nil
	}
	o.pulseUntil = time.Time{}
}

func (o *Output) driveLocked(level Level, reason string) error {
	if o.closed {
		return fmt.Errorf("actuator %s: closed", o.name)
	}
	if err := o.line.Out(level); err != nil {
		o.lastErr = err
		o.logger.Error("drive output", "level", level, "reason", reason, "err", err)
		return fmt.Errorf("actuator %s: drive %s: %w", o.name, level, err)
	}
	if o.lastErr != nil {
		o.logger.Info("output works again", "level", level, "reason", reason)
		o.lastErr = nil
	}
	if !o.driven {
		// The first level that reaches the line is where the Output starts, not a
		// transition: before it, the line's level was unknown.
		o.driven = true
		o.level = level
		o.lastChange = o.now()
		o.lastReason = reason
		return nil
	}
	if level == o.level {
		return nil
	}
	o.level = level
	o.transitions++
	o.lastChange = o.now()
	o.lastReason = reason
	o.logger.Debug("output changed", "level", level, "reason", reason)
	return nil
}

// State reports the current level and counters; State is "fault" while the line has
// never been driven or its last drive failed.
func (o *Output) State() State {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := State{
		Name: o.name, Driver: o.line.Driver(), State: o.level.String(), Safe: o.safe.String(),
		Transitions: o.transitions, LastReason: o.lastReason,
	}
	if !o.lastChange.IsZero() {
		s.LastChange = o.lastChange.UTC().Format(time.RFC3339Nano)
	}
	if !o.driven || o.lastErr != nil {
		s.State = StateFault
	}
	if o.lastErr != nil {
		s.LastError = o.lastErr.Error()
	}
	return s
}

// Close drives the safe level, then releases the line. A second Close returns nil.
func (o *Output) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil
	}
	o.stopPulseLocked()
	err := o.driveLocked(o.safe, "shutdown")
	o.closed = true
	return errors.Join(err, o.line.Close())
}
