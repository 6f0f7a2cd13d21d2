// Package sim is the simulated output driver: a line in memory that records every
// level it is driven to, with the time. It is a real driver in the sense that matters
// (it implements hal.Line like the gpio driver), for machines without GPIO and for the
// embedded defaults.
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

// Out records level if it differs from the current one.
func (l *Line) Out(level hal.Level) error {
	l.mu.Lock()
	defer l.mu.Unlock()
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

// Close does nothing; the history stays readable.
func (l *Line) Close() error { return nil }
