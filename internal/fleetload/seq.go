package fleetload

import (
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"
)

// Tracker is the cloud side's bookkeeping of what devices sent: it reads the envelopes
// arriving on <prefix>/<device>/telemetry and /events, de-duplicates them by id (the
// link delivers at least once) and keeps every seq per device, so that at the end each
// device's seqs can be checked for gaps.
type Tracker struct {
	prefix string

	mu        sync.Mutex
	devices   map[string]*received
	dups      int             // envelopes whose id arrived before
	malformed int             // not an envelope, or its device is not the topic's
	kinds     map[string]int  // distinct envelopes by kind
	latency   []time.Duration // arrival - envelope ts, per distinct envelope
	// phases: per device, when (envelope ts) each deployment phase was recorded
	phases map[string]map[string]time.Time
}

type received struct {
	ids  map[string]uint64 // id -> seq
	seqs map[uint64]bool
}

// NewTracker tracks the devices under prefix (e.g. "vigil").
func NewTracker(prefix string) *Tracker {
	return &Tracker{prefix: prefix, devices: map[string]*received{}, kinds: map[string]int{}, phases: map[string]map[string]time.Time{}}
}

// Observe takes one message from <prefix>/<device>/telemetry or /events.
func (t *Tracker) Observe(topic string, payload []byte) {
	var env struct {
		ID     string    `json:"id"`
		Seq    uint64    `json:"seq"`
		Device string    `json:"device"`
		Kind   string    `json:"kind"`
		TS     time.Time `json:"ts"`
		Body   struct {
			Phase string `json:"phase"`
		} `json:"body"`
	}
	device := deviceOf(t.prefix, topic)
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if json.Unmarshal(payload, &env) != nil || env.ID == "" || env.Seq == 0 || env.Device != device {
		t.malformed++
		return
	}
	r := t.devices[device]
	if r == nil {
		r = &received{ids: map[string]uint64{}, seqs: map[uint64]bool{}}
		t.devices[device] = r
	}
	if seq, ok := r.ids[env.ID]; ok {
		t.dups++
		if seq != env.Seq { // a resend carries the same seq; anything else is corrupt
			t.malformed++
		}
		return
	}
	if r.seqs[env.Seq] {
		t.malformed++ // two ids for one seq
		return
	}
	r.ids[env.ID] = env.Seq
	r.seqs[env.Seq] = true
	t.kinds[env.Kind]++
	t.latency = append(t.latency, now.Sub(env.TS))
	if env.Kind == "deployment" && env.Body.Phase != "" {
		if t.phases[device] == nil {
			t.phases[device] = map[string]time.Time{}
		}
		t.phases[device][env.Body.Phase] = env.TS
	}
}

// Latencies are the delays from each distinct envelope's ts (when the device enqueued
// it) to its arrival here.
func (t *Tracker) Latencies() []time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.latency)
}

// PhaseAt is when device recorded a deployment phase, by its deployment events (the
// device's clock; zero if none arrived).
func (t *Tracker) PhaseAt(device, phase string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.phases[device][phase]
}

// deviceOf is the <device> of <prefix>/<device>/...
func deviceOf(prefix, topic string) string {
	rest, ok := strings.CutPrefix(topic, prefix+"/")
	if !ok {
		return ""
	}
	device, _, _ := strings.Cut(rest, "/")
	return device
}

// Account is one device's seqs at the end.
type Account struct {
	Device    string   `json:"device"`
	Last      uint64   `json:"last"`      // the last seq its outbox assigned
	Delivered int      `json:"delivered"` // distinct seqs 1..Last that arrived
	Queued    int      `json:"queued"`    // not arrived, but still in its outbox (sent on its next connect)
	Missing   []uint64 `json:"missing,omitempty"`
	// Unexpected counts seqs that arrived but are above Last: a device reporting a
	// Last that is too low would otherwise hide a gap.
	Unexpected int `json:"unexpected,omitempty"`
}

// Lost reports whether seqs are missing.
func (a Account) Lost() bool { return len(a.Missing) > 0 || a.Unexpected > 0 }

// Account checks device's seqs 1..last (the outbox counts from 1): each must have
// arrived or still be queued in the device's outbox.
func (t *Tracker) Account(device string, last uint64, queued []uint64) Account {
	t.mu.Lock()
	defer t.mu.Unlock()
	a := Account{Device: device, Last: last}
	inQueue := map[uint64]bool{}
	for _, s := range queued {
		inQueue[s] = true
	}
	r := t.devices[device]
	for seq := uint64(1); seq <= last; seq++ {
		switch {
		case r != nil && r.seqs[seq]:
			a.Delivered++
		case inQueue[seq]:
			a.Queued++
		default:
			a.Missing = append(a.Missing, seq)
		}
	}
	if r != nil {
		for seq := range r.seqs {
			if seq > last {
				a.Unexpected++
			}
		}
	}
	return a
}

// Counts are the tracker's totals.
type Counts struct {
	Devices   int            `json:"devices"`    // devices that sent anything
	Distinct  int            `json:"distinct"`   // distinct envelopes
	Dups      int            `json:"duplicates"` // repeats of an id (at-least-once delivery)
	Malformed int            `json:"malformed"`
	Kinds     map[string]int `json:"kinds"`
}

// Counts returns the totals so far.
func (t *Tracker) Counts() Counts {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := Counts{Devices: len(t.devices), Dups: t.dups, Malformed: t.malformed, Kinds: map[string]int{}}
	for _, r := range t.devices {
		c.Distinct += len(r.seqs)
	}
	for k, n := range t.kinds {
		c.Kinds[k] = n
	}
	return c
}

// Has reports whether device's seq arrived.
func (t *Tracker) Has(device string, seq uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.devices[device]
	return r != nil && r.seqs[seq]
}

// Devices lists the devices that sent anything, sorted.
func (t *Tracker) Devices() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.devices))
	for d := range t.devices {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}
