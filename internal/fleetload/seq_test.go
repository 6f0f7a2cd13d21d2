package fleetload

import (
	"fmt"
	"slices"
	"testing"
)

func env(id string, seq uint64, device, kind string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"seq":%d,"ts":"2026-01-01T00:00:00Z","device":%q,"kind":%q,"body":{}}`, id, seq, device, kind)
}

// Repeats are de-duplicated by id; a gap is named; seqs still queued in the outbox
// are not lost; malformed messages are counted, not trusted.
func TestTrackerAccounts(t *testing.T) {
	tr := NewTracker("vigil")
	tr.Observe("vigil/d1/telemetry", env("a", 1, "d1", "telemetry"))
	tr.Observe("vigil/d1/events", env("b", 2, "d1", "camera"))
	tr.Observe("vigil/d1/events", env("b", 2, "d1", "camera")) // resent after a reconnect
	tr.Observe("vigil/d1/telemetry", env("d", 4, "d1", "telemetry"))
	tr.Observe("vigil/d2/telemetry", env("e", 1, "d1", "telemetry")) // wrong device
	tr.Observe("vigil/d2/telemetry", []byte("not json"))
	tr.Observe("vigil/d2/telemetry", env("f", 1, "d2", "telemetry"))

	c := tr.Counts()
	if c.Distinct != 4 || c.Dups != 1 || c.Malformed != 2 || c.Devices != 2 || c.Kinds["telemetry"] != 3 || c.Kinds["camera"] != 1 {
		t.Errorf("counts %+v", c)
	}
	a := tr.Account("d1", 6, []uint64{5})
	if a.Delivered != 3 || a.Queued != 1 || !slices.Equal(a.Missing, []uint64{3, 6}) || !a.Lost() {
		t.Errorf("d1: %+v", a)
	}
	if a := tr.Account("d2", 1, nil); a.Delivered != 1 || a.Lost() {
		t.Errorf("d2: %+v", a)
	}
	// A device that claims fewer seqs than arrived is caught too.
	if a := tr.Account("d1", 2, nil); a.Unexpected != 1 || !a.Lost() {
		t.Errorf("d1 up to 2: %+v", a)
	}
	// A device nothing arrived from has all its seqs missing.
	if a := tr.Account("d3", 2, nil); !slices.Equal(a.Missing, []uint64{1, 2}) {
		t.Errorf("d3: %+v", a)
	}
}
