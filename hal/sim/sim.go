// Package sim is the simulated driver: an output line in memory that records every
// level it is driven to, with the time, and an input line whose level is set from
// code (the agent's API, a test). They are real drivers in the sense that matters (they
// implement hal.Line and hal.InputLine like the gpio driver), for machines without
// GPIO and for the embedded defaults. Both can be told to fail, to show what a fault
// looks like without unplugging anything.
package sim

import (
	"sync"
	"time"

	"github.com/vigil-edge/vigil/hal"
)

// HistoryLimit bounds the recorded transitions; the oldest are forgotten first.
const HistoryLimit = 256

// Transition is one change of level.
type Transition struct {
	At    time.Time `json:"at"`
	Level string    `json:"level"`
}

// Line is a simulated output line.
type Line struct {
	now func() time.Time

	mu      sync.Mutex // guards the fields below
	level   hal.Level
	driven  bool
	history []Transition
	fail    error
}

// New returns a line; now may be nil for time.Now.
func New(now func() time.Time) *Line {
	if now == nil {
		now = time.Now
	}
	return &Line{now: now}
}

// Driver names the driver.
func (l *Line) Driver() string { return "sim" }

// Out records level if it differs from the current one, or returns the error set by
// Fail.
func (l *Line) Out(level hal.Level) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail != nil {
		return l.fail
	}
	if l.driven && level == l.level {
		return nil
	}
	l.level, l.driven = level, true
	if len(l.history) == HistoryLimit {
		l.history = append(l.history[:0], l.history[1:]...)
	}
	l.history = append(l.history, Transition{At: l.now(), Level: level.String()})
	return nil
}

// History returns the recorded transitions, oldest first (a copy).
func (l *Line) History() []Transition {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Transition(nil), l.history...)
}

// Fail makes every Out return err (a line that cannot be driven) until Fail(nil).
func (l *Line) Fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fail = err
}

// Close does nothing; the history stays readable.
func (l *Line) Close() error { return nil }

// Input is a simulated input line. Its level starts low.
type Input struct {
	edges chan struct{} // one pending edge at most: WaitForEdge only says "changed"

	mu      sync.Mutex // guards the fields below
	level   hal.Level
	sampled bool // a Read has returned level since it was last set
	reads   uint64
	fail    error
}

// NewInput returns a low input.
func NewInput() *Input {
	return &Input{edges: make(chan struct{}, 1)}
}

// Driver names the driver.
func (in *Input) Driver() string { return "sim" }

// Set changes the level; a change makes WaitForEdge return true, like an edge on a
// real line. Setting the current level again is not an edge.
func (in *Input) Set(level hal.Level) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if level == in.level {
		return
	}
	in.level, in.sampled = level, false
	select {
	case in.edges <- struct{}{}:
	default: // an edge is already pending; the reader reads the newest level anyway
	}
}

// Read returns the level, or the error set by Fail.
func (in *Input) Read() (hal.Level, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.reads++
	if in.fail != nil {
		return hal.Low, in.fail
	}
	in.sampled = true
	return in.level, nil
}

// WaitForEdge returns true at once if the level changed since the last wait, else
// waits up to timeout for a change.
func (in *Input) WaitForEdge(timeout time.Duration) bool {
	select {
	case <-in.edges:
		return true
	default:
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-in.edges:
		return true
	case <-t.C:
		return false
	}
}

// Fail makes every Read return err until Fail(nil).
func (in *Input) Fail(err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.fail = err
}

// Sampled reports whether a Read has returned the current level since it was last
// Set: a test knows the reader has seen a change.
func (in *Input) Sampled() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.sampled
}

// Reads counts the calls to Read.
func (in *Input) Reads() uint64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.reads
}

// Close does nothing; the input can still be set and read.
func (in *Input) Close() error { return nil }
