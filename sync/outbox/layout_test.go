package outbox

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// parsedRecord is one record as another tool would read a segment file.
type parsedRecord struct {
	seq     uint64
	payload []byte
}

// parseSegment reads a segment file by the documented format, independently of the
// package's reader; the trailer, if any, is returned separately.
func parseSegment(t *testing.T, path string) (recs []parsedRecord, trailer []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	table := crc32.MakeTable(crc32.Castagnoli)
	for len(b) > 0 {
		if len(b) < 16 {
			t.Fatalf("%s: %d trailing bytes", path, len(b))
		}
		n := binary.LittleEndian.Uint32(b[0:4])
		sum := binary.LittleEndian.Uint32(b[4:8])
		seq := binary.LittleEndian.Uint64(b[8:16])
		if int(n) > len(b)-16 {
			t.Fatalf("%s: record claims %d bytes, %d left", path, n, len(b)-16)
		}
		if got := crc32.Checksum(b[8:16+n], table); got != sum {
			t.Fatalf("%s: seq %d: crc %08x, stored %08x", path, seq, got, sum)
		}
		if seq == 0 {
			trailer = b[16 : 16+n]
		} else {
			recs = append(recs, parsedRecord{seq, b[16 : 16+n]})
		}
		b = b[16+n:]
	}
	return recs, trailer
}

// TestOnDiskFormat pins the layout documented in doc.go: segments named by their
// first seq per class, records [len][crc32c(seq||payload)][seq][json.Marshal(env)]
// little endian, and the state file with next_seq.
func TestOnDiskFormat(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		opts := testOptions(t, p)
		opts.Device = `dev "quoted" <&>`
		o, err := Open(opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		want := map[uint64]Envelope{}
		classes := []Class{ClassEvent, ClassTelemetry, ClassEvent}
		for i, c := range classes {
			env := mustEnqueue(t, o, fmt.Sprintf("kind-%d", i), c, detection{Label: "x", Score: float64(i)})
			want[env.Seq] = env
		}
		if err := o.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}

		files := map[string][]uint64{
			filepath.Join(opts.Path, "events", "00000000000000000001.seg"):    {1, 3},
			filepath.Join(opts.Path, "telemetry", "00000000000000000002.seg"): {2},
		}
		for path, seqs := range files {
			recs, trailer := parseSegment(t, path)
			if trailer != nil {
				t.Errorf("%s: an open segment has a trailer", path)
			}
			var got []uint64
			for _, r := range recs {
				got = append(got, r.seq)
				encoded, err := json.Marshal(want[r.seq])
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(r.payload, encoded) {
					t.Errorf("seq %d: stored %s, want json.Marshal(envelope) %s", r.seq, r.payload, encoded)
				}
			}
			if !slices.Equal(got, seqs) {
				t.Errorf("%s holds seqs %v, want %v", path, got, seqs)
			}
		}

		st, err := os.ReadFile(filepath.Join(opts.Path, "state"))
		if err != nil {
			t.Fatal(err)
		}
		if len(st) != 84 || string(st[:8]) != "VGOBST01" || binary.LittleEndian.Uint64(st[8:16]) != 4 {
			t.Errorf("state = %x, want 84 bytes, magic VGOBST01 and next_seq 4", st)
		}
	})
}

// TestSegmentRoll fills several segments: each sealed one ends with a trailer giving
// its count and last seq, the next is named by its first seq, and a reopened outbox
// learns them without losing any message.
func TestSegmentRoll(t *testing.T) {
	opts := testOptions(t, FsyncInterval)
	opts.MaxBytes = 4 << 20 // segments of 128 KiB
	o := openTest(t, opts)
	body := strings.Repeat("r", 1000)
	const n = 600 // about 0.7 MB: five or six segments
	for range n {
		mustEnqueue(t, o, "detection", ClassEvent, body)
	}
	segs := segFiles(t, opts.Path, "events")
	if len(segs) < 4 {
		t.Fatalf("%d segments, want several", len(segs))
	}
	var next uint64 = 1
	for i, path := range segs {
		recs, trailer := parseSegment(t, path)
		if want := fmt.Sprintf("%020d.seg", next); filepath.Base(path) != want {
			t.Errorf("segment %d is %s, want %s", i, filepath.Base(path), want)
		}
		for _, r := range recs {
			if r.seq != next {
				t.Fatalf("%s: seq %d, want %d", path, r.seq, next)
			}
			next++
		}
		last := i == len(segs)-1
		if last != (trailer == nil) {
			t.Errorf("%s: trailer %x; want one on every sealed segment and none on the open one", path, trailer)
		}
		if fi, err := os.Stat(path); err == nil && fi.Size() > 128<<10 {
			t.Errorf("%s is %d bytes, more than a segment", path, fi.Size())
		}
		if trailer != nil {
			count, lastSeq, ok := parseTrailer(trailer)
			if !ok || count != len(recs) || lastSeq != next-1 {
				t.Errorf("%s: trailer says %d records up to %d, holds %d up to %d", path, count, lastSeq, len(recs), next-1)
			}
		}
	}
	o = closeAndReopen(t, o, opts)
	if got := seqsOf(peekAll(t, o)); !slices.Equal(got, seqRange(1, n)) {
		t.Errorf("after reopen Peek returned %d seqs, want 1..%d", len(got), n)
	}
	if st := o.Stats(); st.Depth != n || st.NextSeq != n+1 || st.DiskBytes != diskUsage(t, opts.Path) {
		t.Errorf("after reopen Stats = %+v, want Depth %d, NextSeq %d, DiskBytes %d", st, n, n+1, diskUsage(t, opts.Path))
	}
}

// TestSecondOpen is the "another vigil is running" case: the flock makes the second
// Open fail at once instead of hanging or sharing the files.
func TestSecondOpen(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		opts := testOptions(t, p)
		o := openTest(t, opts)
		mustEnqueue(t, o, "telemetry", ClassTelemetry, 1)

		second, err := Open(opts)
		if err == nil {
			second.Close()
			t.Fatal("second Open of the same outbox succeeded")
		}
		if want := "outbox " + opts.Path + " is in use by another process (another vigil running?)"; !strings.Contains(err.Error(), want) {
			t.Errorf("second Open = %v, want an error containing %q", err, want)
		}
		// The first one is unharmed.
		mustEnqueue(t, o, "telemetry", ClassTelemetry, 2)
		if got := seqsOf(peekAll(t, o)); !slices.Equal(got, []uint64{1, 2}) {
			t.Errorf("Peek = %v, want [1 2]", got)
		}
		// Once it is closed, the lock is free.
		o = closeAndReopen(t, o, opts)
		if got := seqsOf(peekAll(t, o)); !slices.Equal(got, []uint64{1, 2}) {
			t.Errorf("after reopen Peek = %v, want [1 2]", got)
		}
	})
}

func TestNotify(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		opts := testOptions(t, p)
		o := openTest(t, opts)
		select {
		case <-o.Notify():
			t.Fatal("token on an empty outbox")
		default:
		}
		// Many writes, one token: the writer never blocks on it.
		for i := range 5 {
			mustEnqueue(t, o, "telemetry", ClassTelemetry, i)
		}
		select {
		case <-o.Notify():
		case <-time.After(10 * time.Second):
			t.Fatal("no token after Enqueue")
		}
		select {
		case <-o.Notify():
			t.Fatal("a second token without a new message")
		default:
		}
		// A drainer waiting on Notify wakes for a message enqueued later.
		got := make(chan []Envelope, 1)
		go func() {
			<-o.Notify()
			envs, _ := o.Peek(5, 10)
			got <- envs
		}()
		mustEnqueue(t, o, "detection", ClassEvent, "late")
		select {
		case envs := <-got:
			if len(envs) != 1 || envs[0].Seq != 6 {
				t.Errorf("drainer woken by Notify read %+v, want seq 6", envs)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("drainer not woken")
		}
		// A reopened outbox with a backlog has a token waiting.
		o = closeAndReopen(t, o, opts)
		select {
		case <-o.Notify():
		default:
			t.Error("no token after Open with a backlog")
		}
	})
}

// TestOpenDoesNotFailOnData: whatever is in the directory, only I/O errors make
// Open fail; an unreadable directory is one.
func TestOpenIOError(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads any directory; permissions cannot make Open fail")
	}
	opts := testOptions(t, FsyncAlways)
	o := openTest(t, opts)
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(opts.Path, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(opts.Path, 0o750) })
	_, err := Open(opts)
	if err == nil || !errors.Is(err, os.ErrPermission) {
		t.Errorf("Open of an unreadable outbox = %v, want a permission error", err)
	}
}
