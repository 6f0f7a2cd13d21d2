// Package rate smooths the time between events into a rate, for the frame and
// detection rates on the status page.
package rate

import "time"

// Meter is an exponentially smoothed events-per-second meter. The zero value is ready;
// it is not safe for concurrent use (its owner's lock covers it).
type Meter struct {
	last     time.Time
	interval float64 // smoothed seconds between events
}

// Tick records an event at now.
func (m *Meter) Tick(now time.Time) {
	if !m.last.IsZero() {
		dt := now.Sub(m.last).Seconds()
		if m.interval == 0 {
			m.interval = dt
		} else {
			m.interval += 0.1 * (dt - m.interval)
		}
	}
	m.last = now
}

// PerSecond is the smoothed rate; 0 before the second event.
func (m *Meter) PerSecond() float64 {
	if m.interval <= 0 {
		return 0
	}
	return 1 / m.interval
}

// Last is when the last event happened; zero before the first.
func (m *Meter) Last() time.Time { return m.last }
