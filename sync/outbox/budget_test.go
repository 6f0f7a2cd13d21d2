package outbox

import (
	"context"
	"slices"
	"strings"
	"testing"
)

// checkBudget asserts that the outbox stays within MaxBytes by its own count and
// by the files actually there.
func checkBudget(t *testing.T, o *Outbox, opts Options, walk bool) {
	t.Helper()
	st := o.Stats()
	if st.DiskBytes > opts.MaxBytes {
		t.Fatalf("DiskBytes %d > MaxBytes %d (Stats %+v)", st.DiskBytes, opts.MaxBytes, st)
	}
	if walk {
		if n := diskUsage(t, opts.Path); n > opts.MaxBytes {
			t.Fatalf("%d bytes on disk under %s > MaxBytes %d", n, opts.Path, opts.MaxBytes)
		}
	}
}

// TestBudget: telemetry is evicted before any event; once events alone overflow,
// the oldest go, counted and reported by an outbox_full fault; DiskBytes never
// exceeds MaxBytes.
func TestBudget(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		opts := testOptions(t, p)
		opts.MaxBytes = 1 << 20
		logger, logs := captureLog()
		opts.Logger = logger
		o := openTest(t, opts)
		ctx := context.Background()
		body := strings.Repeat("b", 300) // about 450 bytes a record

		// 1. Telemetry to twice the budget.
		for i := range 4600 {
			if _, err := o.Enqueue(ctx, "telemetry", ClassTelemetry, body); err != nil {
				t.Fatalf("telemetry %d: %v", i, err)
			}
			checkBudget(t, o, opts, i%100 == 0)
		}
		if st := o.Stats(); st.EvictedTelemetry == 0 || st.Dropped != 0 {
			t.Fatalf("after 2 MiB of telemetry Stats = %+v, want telemetry evicted, no event dropped", st)
		}

		// 2. Events up to about half the budget: all kept, telemetry makes room.
		var events []uint64
		for i := range 1100 {
			env, err := o.Enqueue(ctx, "detection", ClassEvent, body)
			if err != nil {
				t.Fatalf("event %d: %v", i, err)
			}
			events = append(events, env.Seq)
			checkBudget(t, o, opts, i%100 == 0)
		}
		st := o.Stats()
		if st.Dropped != 0 {
			t.Fatalf("events dropped while telemetry could be evicted: Stats %+v", st)
		}
		stored := map[uint64]bool{}
		for _, env := range peekAll(t, o) {
			stored[env.Seq] = true
		}
		for _, s := range events {
			if !stored[s] {
				t.Fatalf("event seq %d lost while telemetry was there to evict", s)
			}
		}

		// 3. Events alone overflow: the oldest go.
		for i := range 2500 {
			env, err := o.Enqueue(ctx, "detection", ClassEvent, body)
			if err != nil {
				t.Fatalf("event %d: %v", i, err)
			}
			events = append(events, env.Seq)
			checkBudget(t, o, opts, i%100 == 0)
		}
		checkBudget(t, o, opts, true)
		st = o.Stats()
		if st.Dropped == 0 {
			t.Fatalf("after 2 MiB of events Stats = %+v, want events dropped", st)
		}
		all := peekAll(t, o)
		var faults []faultBody
		stored = map[uint64]bool{}
		for _, env := range all {
			stored[env.Seq] = true
			if env.Kind == "fault" {
				faults = append(faults, decodeFault(t, env))
			}
			if env.Kind == "telemetry" {
				t.Errorf("telemetry seq %d still there while events were dropped", env.Seq)
			}
		}
		if len(faults) == 0 {
			t.Fatal("no outbox_full fault event after dropping events")
		}
		for _, f := range faults {
			if f.Fault != "outbox_full" || f.DroppedEvents == 0 || f.FirstSeq > f.LastSeq {
				t.Errorf("fault %+v, want outbox_full with dropped_events and a seq range", f)
			}
		}
		if stored[events[0]] {
			t.Errorf("oldest event seq %d kept after events overflowed", events[0])
		}
		for _, s := range events[len(events)-500:] {
			if !stored[s] {
				t.Errorf("recent event seq %d dropped", s)
			}
		}
		// What is left is a contiguous run of the newest messages, in order.
		if seqs := seqsOf(all); !slices.IsSorted(seqs) || seqs[len(seqs)-1] != st.NextSeq-1 {
			t.Errorf("Peek after eviction not sorted or missing the newest: %v...", seqs[len(seqs)-5:])
		}
		if !strings.Contains(logs.String(), "evicted the oldest events") {
			t.Error("event eviction not logged")
		}
		if st.Depth != len(all) {
			t.Errorf("Depth %d, Peek returned %d", st.Depth, len(all))
		}

		// The counts and the budget survive a restart.
		o = closeAndReopen(t, o, opts)
		checkBudget(t, o, opts, true)
		if got := len(peekAll(t, o)); got != len(all) {
			t.Errorf("after restart %d messages, want %d", got, len(all))
		}
	})
}

// TestDiskSpaceReturns: draining a 5 MiB backlog deletes its segments.
func TestDiskSpaceReturns(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		opts := testOptions(t, p)
		opts.MaxBytes = 16 << 20 // 512 KiB segments
		o := openTest(t, opts)
		ctx := context.Background()
		body := strings.Repeat("d", 1000)
		var n int
		for o.Stats().DiskBytes < 5<<20 {
			class := ClassEvent
			if n%2 == 1 {
				class = ClassTelemetry
			}
			if _, err := o.Enqueue(ctx, "m", class, body); err != nil {
				t.Fatal(err)
			}
			n++
		}
		before := len(segFiles(t, opts.Path, "events")) + len(segFiles(t, opts.Path, "telemetry"))
		if before < 10 {
			t.Fatalf("%d segments for 5 MiB, want at least 10", before)
		}
		if got := drain(t, o, 500); len(got) != n {
			t.Fatalf("drained %d, want %d", len(got), n)
		}
		st := o.Stats()
		after := len(segFiles(t, opts.Path, "events")) + len(segFiles(t, opts.Path, "telemetry"))
		if st.DiskBytes >= o.segSize || diskUsage(t, opts.Path) >= o.segSize || after > 2 {
			t.Errorf("after draining DiskBytes %d, on disk %d, %d segment files (from %d); want under one segment (%d)",
				st.DiskBytes, diskUsage(t, opts.Path), after, before, o.segSize)
		}
		// Seqs go on after the files are gone, across a restart too.
		o = closeAndReopen(t, o, opts)
		if env := mustEnqueue(t, o, "m", ClassEvent, 1); env.Seq != uint64(n+1) {
			t.Errorf("seq after draining and restarting = %d, want %d", env.Seq, n+1)
		}
	})
}

// TestMaxBytesShrunk: a store written under a larger MaxBytes is brought within the
// new one at Open.
func TestMaxBytesShrunk(t *testing.T) {
	opts := testOptions(t, FsyncInterval)
	opts.MaxBytes = 8 << 20
	o := openTest(t, opts)
	for range 4000 {
		mustEnqueue(t, o, "telemetry", ClassTelemetry, strings.Repeat("s", 700))
	}
	mustEnqueue(t, o, "detection", ClassEvent, "kept")
	opts.MaxBytes = 1 << 20
	o = closeAndReopen(t, o, opts)
	checkBudget(t, o, opts, true)
	st := o.Stats()
	if st.EvictedTelemetry == 0 || st.Dropped != 0 {
		t.Errorf("Stats = %+v, want telemetry evicted and no event dropped", st)
	}
	if got := peekAll(t, o); got[len(got)-1].Kind != "detection" {
		t.Errorf("the event is not the newest message left: %+v", got[len(got)-1])
	}
}
