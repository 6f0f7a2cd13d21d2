package web

import (
	"sync"

	"github.com/vigil-edge/vigil/sync/outbox"
)

// Events keeps the newest events for the status page and fans them out to
// server-sent-event subscribers.
type Events struct {
	mu     sync.Mutex // guards the fields below
	limit  int
	events []outbox.Envelope
	subs   map[chan outbox.Envelope]struct{}
}

// NewEvents keeps the newest limit events.
func NewEvents(limit int) *Events {
	return &Events{limit: limit, subs: map[chan outbox.Envelope]struct{}{}}
}

// Add records an event and hands it to the live subscribers.
func (l *Events) Add(e outbox.Envelope) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) == l.limit {
		l.events = append(l.events[:0], l.events[1:]...)
	}
	l.events = append(l.events, e)
	for ch := range l.subs {
		select {
		case ch <- e:
		default: // a slow browser misses live events; /api/events still has them
		}
	}
}

// Recent returns up to n events, newest first.
func (l *Events) Recent(n int) []outbox.Envelope {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]outbox.Envelope, 0, min(n, len(l.events)))
	for i := len(l.events) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, l.events[i])
	}
	return out
}

// subscribe returns a channel of the events added from now on, and how to stop.
func (l *Events) subscribe() (chan outbox.Envelope, func()) {
	ch := make(chan outbox.Envelope, 16)
	l.mu.Lock()
	l.subs[ch] = struct{}{}
	l.mu.Unlock()
	return ch, func() {
		l.mu.Lock()
		delete(l.subs, ch)
		l.mu.Unlock()
	}
}
