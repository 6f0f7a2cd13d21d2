package outbox

import (
	"context"
	"slices"
	"testing"
)

// drain reads everything with Peek(last, window) and acks each page, as the uplink
// does, and returns the seqs in the order they came.
func drain(t testing.TB, o *Outbox, window int) []uint64 {
	t.Helper()
	var seqs []uint64
	var last uint64
	for {
		page, err := o.Peek(last, window)
		if err != nil {
			t.Fatalf("Peek(%d): %v", last, err)
		}
		if len(page) == 0 {
			return seqs
		}
		acks := make([]uint64, len(page))
		for i, env := range page {
			acks[i] = env.Seq
			seqs = append(seqs, env.Seq)
		}
		if err := o.Ack(acks...); err != nil {
			t.Fatalf("Ack: %v", err)
		}
		last = page[len(page)-1].Seq
	}
}

// TestDrainCursor: 100k messages of both classes drained with Peek+Ack come out
// exactly once each, in order, and the disk is given back. Its speed is measured by
// BenchmarkDrain, not asserted.
func TestDrainCursor(t *testing.T) {
	const n = 100_000
	opts := testOptions(t, FsyncInterval)
	opts.MaxBytes = 64 << 20
	o := openTest(t, opts)
	ctx := context.Background()
	for i := range n {
		class := ClassTelemetry
		if i%3 == 0 {
			class = ClassEvent
		}
		if _, err := o.Enqueue(ctx, "m", class, i); err != nil {
			t.Fatal(err)
		}
	}
	got := drain(t, o, 256)
	if !slices.Equal(got, seqRange(1, n)) {
		t.Fatalf("drain returned %d seqs, not exactly 1..%d in order", len(got), n)
	}
	st := o.Stats()
	if st.Depth != 0 || st.Bytes != 0 {
		t.Errorf("after draining Stats = %+v, want Depth 0 and Bytes 0", st)
	}
	if st.DiskBytes > o.segSize || diskUsage(t, opts.Path) > o.segSize {
		t.Errorf("after draining DiskBytes %d, on disk %d, want less than a segment (%d)", st.DiskBytes, diskUsage(t, opts.Path), o.segSize)
	}
}

// TestPeekRescan: an after below the cursor (a drainer that restarted or lost a
// window) reads again from the oldest unacked message; acked ones are skipped.
func TestPeekRescan(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		o := openTest(t, testOptions(t, p))
		for i := range 30 {
			class := ClassEvent
			if i%2 == 1 {
				class = ClassTelemetry
			}
			mustEnqueue(t, o, "m", class, i)
		}
		page, err := o.Peek(0, 20)
		if err != nil || len(page) != 20 {
			t.Fatalf("Peek(0, 20) = %d messages, %v", len(page), err)
		}
		if err := o.Ack(1, 2, 3, 5, 8); err != nil {
			t.Fatal(err)
		}
		steps := []struct {
			after uint64
			n     int
			want  []uint64
		}{
			{20, 5, seqRange(21, 25)},
			{0, 4, []uint64{4, 6, 7, 9}},
			{6, 3, []uint64{7, 9, 10}},
			{25, 100, seqRange(26, 30)},
			{3, 2, []uint64{4, 6}},
		}
		for _, s := range steps {
			got, err := o.Peek(s.after, s.n)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(seqsOf(got), s.want) {
				t.Errorf("Peek(%d, %d) = %v, want %v", s.after, s.n, seqsOf(got), s.want)
			}
		}
		if st := o.Stats(); st.Depth != 25 {
			t.Errorf("Depth = %d, want 25", st.Depth)
		}
	})
}

// TestAckBeyondIndex: a drainer that reads further ahead than the ack index covers
// and acks out of order still moves the head (through the path that reads record
// headers), counts Depth right, and gets its disk back.
func TestAckBeyondIndex(t *testing.T) {
	n := winCap + 5000
	opts := testOptions(t, FsyncInterval)
	opts.MaxBytes = 32 << 20
	o := openTest(t, opts)
	ctx := context.Background()
	for i := range n {
		if _, err := o.Enqueue(ctx, "m", ClassTelemetry, i); err != nil {
			t.Fatal(err)
		}
	}
	all := peekAll(t, o)
	if len(all) != n {
		t.Fatalf("Peek returned %d, want %d", len(all), n)
	}
	// Newest first: every ack but the last is beyond the head.
	seqs := seqsOf(all)
	slices.Reverse(seqs)
	for chunk := range slices.Chunk(seqs, 1000) {
		if err := o.Ack(chunk...); err != nil {
			t.Fatal(err)
		}
	}
	st := o.Stats()
	if st.Depth != 0 || st.Bytes != 0 {
		t.Errorf("after acking all Stats = %+v, want Depth 0, Bytes 0", st)
	}
	if got, _ := o.Peek(0, 10); len(got) != 0 {
		t.Errorf("Peek after acking all = %v", seqsOf(got))
	}
	if st.DiskBytes > o.segSize {
		t.Errorf("DiskBytes %d after acking all, want less than a segment", st.DiskBytes)
	}
}

// TestAckedStayAckedAfterRestart: the head saved at Close holds; acks beyond a gap
// are not saved, so those messages come again (at least once).
func TestAckedStayAckedAfterRestart(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		opts := testOptions(t, p)
		o := openTest(t, opts)
		for i := range 10 {
			mustEnqueue(t, o, "m", ClassEvent, i)
		}
		if _, err := o.Peek(0, 10); err != nil {
			t.Fatal(err)
		}
		if err := o.Ack(1, 2, 3, 4, 6, 7); err != nil {
			t.Fatal(err)
		}
		o = closeAndReopen(t, o, opts)
		if got, want := seqsOf(peekAll(t, o)), []uint64{5, 6, 7, 8, 9, 10}; !slices.Equal(got, want) {
			t.Errorf("after restart Peek = %v, want %v", got, want)
		}
		if st := o.Stats(); st.Depth != 6 || st.NextSeq != 11 {
			t.Errorf("after restart Stats = %+v, want Depth 6, NextSeq 11", st)
		}
	})
}
