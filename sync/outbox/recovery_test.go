package outbox

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
)

// fillEvents enqueues n events and closes the outbox; it returns their envelopes.
func fillEvents(t *testing.T, opts Options, n int, body any) []Envelope {
	t.Helper()
	o, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	var sent []Envelope
	for range n {
		sent = append(sent, mustEnqueue(t, o, "detection", ClassEvent, body))
	}
	if err := o.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return sent
}

func TestTornTail(t *testing.T) {
	const n = 10
	cases := []struct {
		name   string
		damage func(t *testing.T, path string, size int64)
		kept   int // records left
	}{
		{"garbage appended", func(t *testing.T, path string, _ int64) {
			appendFile(t, path, []byte("\x17\x00\x00\x00garbage that is no record at all"))
		}, n},
		{"zeros appended", func(t *testing.T, path string, _ int64) {
			appendFile(t, path, make([]byte, 4096))
		}, n},
		{"last record cut mid-way", func(t *testing.T, path string, size int64) {
			if err := os.Truncate(path, size-25); err != nil {
				t.Fatal(err)
			}
		}, n - 1},
		{"last record header cut", func(t *testing.T, path string, size int64) {
			recs, _ := parseSegment(t, path)
			last := int64(recHeader + len(recs[len(recs)-1].payload))
			if err := os.Truncate(path, size-last+7); err != nil {
				t.Fatal(err)
			}
		}, n - 1},
		{"last record bit flipped", func(t *testing.T, path string, size int64) {
			flipByte(t, path, size-3)
		}, n - 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			forEachPolicy(t, func(t *testing.T, p Fsync) {
				opts := testOptions(t, p)
				sent := fillEvents(t, opts, n, detection{Label: "person", Score: 0.5})
				path := filepath.Join(opts.Path, "events", segName(1))
				fi, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				recs, _ := parseSegment(t, path)
				goodSize := int64(0)
				for _, r := range recs[:tc.kept] {
					goodSize += int64(recHeader + len(r.payload))
				}
				tc.damage(t, path, fi.Size())

				logger, logs := captureLog()
				opts.Logger = logger
				o := openTest(t, opts)
				got := peekAll(t, o)
				if !slices.Equal(seqsOf(got), seqRange(1, uint64(tc.kept))) {
					t.Fatalf("after a torn tail Peek = %v, want 1..%d", seqsOf(got), tc.kept)
				}
				for i, env := range got {
					if env.ID != sent[i].ID {
						t.Errorf("seq %d: id %s, want %s", env.Seq, env.ID, sent[i].ID)
					}
				}
				if fi, err := os.Stat(path); err != nil || fi.Size() != goodSize {
					t.Errorf("segment is %d bytes after Open, want it truncated to %d (%v)", fi.Size(), goodSize, err)
				}
				line := logs.String()
				for _, want := range []string{"level=WARN", "torn tail", "path=" + path, "offset=", "bytes_cut="} {
					if !strings.Contains(line, want) {
						t.Errorf("log lacks %q:\n%s", want, line)
					}
				}
				// The seq is not reused even if its record was cut.
				if env := mustEnqueue(t, o, "detection", ClassEvent, 1); env.Seq != n+1 {
					t.Errorf("next seq = %d, want %d", env.Seq, n+1)
				}
				if st := o.Stats(); st.Dropped != 0 || st.Depth != tc.kept+1 {
					t.Errorf("Stats = %+v, want Depth %d, nothing dropped", st, tc.kept+1)
				}
			})
		})
	}
}

func appendFile(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x20
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

type faultBody struct {
	Fault         string `json:"fault"`
	MovedTo       string `json:"moved_to"`
	Error         string `json:"error"`
	DroppedEvents uint64 `json:"dropped_events"`
	FirstSeq      uint64 `json:"first_seq"`
	LastSeq       uint64 `json:"last_seq"`
	LostMessages  int    `json:"lost_messages"`
}

func decodeFault(t *testing.T, env Envelope) faultBody {
	t.Helper()
	var f faultBody
	if env.Kind != "fault" {
		t.Fatalf("seq %d is a %q, want a fault", env.Seq, env.Kind)
	}
	if err := json.Unmarshal(env.Body, &f); err != nil {
		t.Fatalf("seq %d: fault body %s: %v", env.Seq, env.Body, err)
	}
	return f
}

// TestCorruptStore: a store that is not an outbox is moved aside, Open succeeds
// with an empty one, and its first message is a fault event saying where it went.
// A bad state file alone is not such a store: see TestStateLost.
func TestCorruptStore(t *testing.T) {
	const n = 300 // several segments at MaxBytes 1 MiB
	cases := []struct {
		name     string
		damage   func(t *testing.T, dir string)
		firstSeq uint64 // of the fault event
		wantErr  string
	}{
		{"older segment header garbage", func(t *testing.T, dir string) {
			segs := segFiles(t, dir, "events")
			if len(segs) < 2 {
				t.Fatalf("%d segments, want several", len(segs))
			}
			f, err := os.OpenFile(segs[0], os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte("not a record header"), 0); err != nil {
				t.Fatal(err)
			}
		}, n + 1, "bad record at offset 0"},
		{"not a segment in a log", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "telemetry", "notes.txt"), []byte("hello"))
		}, n + 1, "notes.txt is not a segment"},
		{"unexpected entry", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "outbox.db"), []byte("bbolt"))
		}, n + 1, "unexpected entry"},
		{"log is a file", func(t *testing.T, dir string) {
			if err := os.RemoveAll(filepath.Join(dir, "telemetry")); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(dir, "telemetry"), []byte("x"))
		}, n + 1, "is not a directory"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions(t, FsyncInterval)
			opts.MaxBytes = 1 << 20
			fillEvents(t, opts, n, strings.Repeat("e", 500))
			tc.damage(t, opts.Path)

			logger, logs := captureLog()
			opts.Logger = logger
			o := openTest(t, opts)
			moved, _ := filepath.Glob(opts.Path + ".corrupt-*")
			if len(moved) != 1 {
				t.Fatalf("moved-aside directories: %v, want one", moved)
			}
			if _, err := os.Stat(filepath.Join(moved[0], "events")); err != nil {
				t.Errorf("the old store is not in %s: %v", moved[0], err)
			}
			got := peekAll(t, o)
			if len(got) != 1 {
				t.Fatalf("after moving aside Peek = %d messages, want only the fault", len(got))
			}
			f := decodeFault(t, got[0])
			if f.Fault != "outbox_corrupt" || f.MovedTo != moved[0] || !strings.Contains(f.Error, tc.wantErr) {
				t.Errorf("fault = %+v, want outbox_corrupt, moved_to %s, error containing %q", f, moved[0], tc.wantErr)
			}
			if got[0].Seq != tc.firstSeq {
				t.Errorf("fault seq = %d, want %d", got[0].Seq, tc.firstSeq)
			}
			if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), moved[0]) {
				t.Errorf("log does not name the moved store:\n%s", logs)
			}
			// The new store works and survives a restart.
			mustEnqueue(t, o, "detection", ClassEvent, 1)
			o = closeAndReopen(t, o, opts)
			if got := seqsOf(peekAll(t, o)); !slices.Equal(got, []uint64{tc.firstSeq, tc.firstSeq + 1}) {
				t.Errorf("after restart Peek = %v", got)
			}
		})
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptMiddle: a bad record inside an older segment is found when it is
// read: the rest of that segment is lost, counted, logged and reported by a fault
// event; everything else is delivered.
func TestCorruptMiddle(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		opts := testOptions(t, p)
		opts.MaxBytes = 4 << 20 // 128 KiB segments
		const n = 600
		fillEvents(t, opts, n, strings.Repeat("m", 1000))
		segs := segFiles(t, opts.Path, "events")
		if len(segs) < 3 {
			t.Fatalf("%d segments, want several", len(segs))
		}
		recs, _ := parseSegment(t, segs[1])
		const bad = 5
		var off int64
		for _, r := range recs[:bad] {
			off += int64(recHeader + len(r.payload))
		}
		flipByte(t, segs[1], off+recHeader+40)
		lostFirst, lostLast := recs[bad].seq, recs[len(recs)-1].seq

		logger, logs := captureLog()
		opts.Logger = logger
		o := openTest(t, opts)
		// The fault event may be written while the store is read: leave it out.
		got := slices.DeleteFunc(seqsOf(peekAll(t, o)), func(s uint64) bool { return s > n })
		var want []uint64
		for s := uint64(1); s <= n; s++ {
			if s < lostFirst || s > lostLast {
				want = append(want, s)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("Peek returned %d seqs, want %d: all but %d..%d", len(got), len(want), lostFirst, lostLast)
		}
		lost := len(recs) - bad
		if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), segs[1]) {
			t.Errorf("the corruption is not logged with the segment:\n%s", logs)
		}
		var fault []Envelope
		testkit.WaitFor(t, 10*time.Second, "the fault event", func() bool {
			fault, _ = o.Peek(n, 10)
			return len(fault) == 1
		})
		if f := decodeFault(t, fault[0]); f.Fault != "outbox_segment_corrupt" || f.LostMessages != lost {
			t.Errorf("fault = %+v, want outbox_segment_corrupt with %d lost", f, lost)
		}
		if st := o.Stats(); st.Dropped != uint64(lost) || st.Depth != len(want)+1 {
			t.Errorf("Stats = %+v, want Dropped %d, Depth %d (with the fault)", st, lost, len(want)+1)
		}
	})
}

// TestStaleState: a state file older than the data (a crash before the state was
// saved again) costs redelivery, never a lost message or a reused seq; a head that
// does not match its segment falls back to the segment's start.
func TestStaleState(t *testing.T) {
	cases := []struct {
		name  string
		state func(old []byte) []byte
	}{
		{"state from before the messages", func(old []byte) []byte { return old }},
		{"head off a record boundary", func([]byte) []byte {
			return encodeState(stateData{next: 3, heads: [2]stateHead{{base: 1, off: 7, idx: 1, seq: 2}}})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions(t, FsyncAlways)
			o := openTest(t, opts)
			old, err := os.ReadFile(filepath.Join(opts.Path, "state"))
			if err != nil {
				t.Fatal(err)
			}
			for i := range 10 {
				mustEnqueue(t, o, "m", ClassEvent, i)
			}
			if got := drain(t, o, 3)[:5]; !slices.Equal(got, seqRange(1, 5)) {
				t.Fatalf("drain = %v", got)
			}
			if err := o.Close(); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(opts.Path, "state"), tc.state(old))

			logger, logs := captureLog()
			opts.Logger = logger
			o = openTest(t, opts)
			if got := seqsOf(peekAll(t, o)); !slices.Equal(got, seqRange(1, 10)) {
				t.Errorf("after a stale state Peek = %v, want everything again", got)
			}
			if env := mustEnqueue(t, o, "m", ClassEvent, 1); env.Seq != 11 {
				t.Errorf("next seq = %d, want 11", env.Seq)
			}
			if tc.name == "head off a record boundary" && !strings.Contains(logs.String(), "does not match") {
				t.Errorf("mismatched head not logged:\n%s", logs)
			}
		})
	}
}

// TestStateLost: a state file that cannot be decoded costs only the acked heads:
// every message still on disk is delivered again (at least once), seq goes on after
// the highest one on disk, nothing is moved aside, and a fault event says why.
func TestStateLost(t *testing.T) {
	const n = 50
	cases := []struct {
		name    string
		damage  func(t *testing.T, path string)
		wantErr string
	}{
		{"garbage", func(t *testing.T, path string) {
			writeFile(t, path, bytes.Repeat([]byte("vigil!"), 14))
		}, "state file does not start with"},
		{"truncated", func(t *testing.T, path string) {
			if err := os.Truncate(path, 20); err != nil {
				t.Fatal(err)
			}
		}, "state file is 20 bytes"},
		{"checksum", func(t *testing.T, path string) {
			flipByte(t, path, 9)
		}, "state file checksum"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			forEachPolicy(t, func(t *testing.T, p Fsync) {
				opts := testOptions(t, p)
				o, err := Open(opts)
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				for i := range n {
					class := ClassEvent
					if i%3 == 0 {
						class = ClassTelemetry
					}
					mustEnqueue(t, o, "m", class, i)
				}
				// Acked before the state is lost: delivered again.
				page, err := o.Peek(0, 10)
				if err != nil || len(page) != 10 {
					t.Fatalf("Peek(0, 10) = %d messages, %v", len(page), err)
				}
				if err := o.Ack(seqsOf(page)...); err != nil {
					t.Fatal(err)
				}
				if err := o.Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}
				tc.damage(t, filepath.Join(opts.Path, "state"))

				logger, logs := captureLog()
				opts.Logger = logger
				o = openTest(t, opts)
				if moved, _ := filepath.Glob(opts.Path + ".corrupt-*"); len(moved) != 0 {
					t.Errorf("a bad state file moved the store aside: %v", moved)
				}
				got := peekAll(t, o)
				if !slices.Equal(seqsOf(got), seqRange(1, n+1)) {
					t.Fatalf("after losing the state Peek = %v, want all %d messages again and the fault", seqsOf(got), n)
				}
				if f := decodeFault(t, got[n]); f.Fault != "outbox_state_lost" || !strings.Contains(f.Error, tc.wantErr) {
					t.Errorf("fault = %+v, want outbox_state_lost with an error containing %q", f, tc.wantErr)
				}
				if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), filepath.Join(opts.Path, "state")) {
					t.Errorf("the lost state is not logged with its path:\n%s", logs)
				}
				// The fault took seq n+1: the next message follows it.
				if env := mustEnqueue(t, o, "m", ClassEvent, "after"); env.Seq != n+2 {
					t.Errorf("next seq = %d, want %d", env.Seq, n+2)
				}
				if st := o.Stats(); st.Depth != n+2 || st.Dropped != 0 {
					t.Errorf("Stats = %+v, want Depth %d and nothing dropped", st, n+2)
				}
				// The state is whole again.
				o = closeAndReopen(t, o, opts)
				if got := seqsOf(peekAll(t, o)); !slices.Equal(got, seqRange(1, n+2)) {
					t.Errorf("after another restart Peek = %v, want 1..%d", got, n+2)
				}
			})
		})
	}
}

// TestQuarantineKeepsSeq: when a corrupt log makes Open move the store aside, seq
// goes on above every seq on disk in either log, although the state file is stale
// (saved before a kill -9) and the other log was never loaded. Where a segment's
// records are unreadable, its file name still says its first seq.
func TestQuarantineKeepsSeq(t *testing.T) {
	cases := []struct {
		name       string
		destroyTel bool // overwrite the newest telemetry segment with garbage
	}{
		{"telemetry intact", false},
		{"telemetry tail unreadable", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions(t, FsyncInterval)
			opts.MaxBytes = 1 << 20 // 64 KiB segments
			fillEvents(t, opts, 300, strings.Repeat("e", 500))
			stale, err := os.ReadFile(filepath.Join(opts.Path, "state"))
			if err != nil {
				t.Fatal(err)
			}
			o, err := Open(opts)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			for range 300 {
				mustEnqueue(t, o, "telemetry", ClassTelemetry, strings.Repeat("t", 500))
			}
			if err := o.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			writeFile(t, filepath.Join(opts.Path, "state"), stale) // next_seq 301

			events, tel := segFiles(t, opts.Path, "events"), segFiles(t, opts.Path, "telemetry")
			if len(events) < 2 || len(tel) < 2 {
				t.Fatalf("%d event and %d telemetry segments, want several of each", len(events), len(tel))
			}
			f, err := os.OpenFile(events[0], os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.WriteAt([]byte("not a record header"), 0)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
			highest := uint64(600)
			if tc.destroyTel {
				tail := tel[len(tel)-1]
				fi, err := os.Stat(tail)
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, tail, bytes.Repeat([]byte{0xa5}, int(fi.Size())))
				base, _ := parseSegName(filepath.Base(tail))
				highest = base // its records are gone, its name is not
			}

			o = openTest(t, opts)
			if moved, _ := filepath.Glob(opts.Path + ".corrupt-*"); len(moved) != 1 {
				t.Fatalf("moved-aside directories: %v, want one", moved)
			}
			got := peekAll(t, o)
			if len(got) != 1 || decodeFault(t, got[0]).Fault != "outbox_corrupt" {
				t.Fatalf("after moving aside Peek = %+v, want only the outbox_corrupt fault", got)
			}
			if got[0].Seq <= highest {
				t.Errorf("the fault after the quarantine has seq %d, want above %d, the highest seq on disk", got[0].Seq, highest)
			}
			if env := mustEnqueue(t, o, "m", ClassEvent, 1); env.Seq != got[0].Seq+1 {
				t.Errorf("next seq = %d, want %d", env.Seq, got[0].Seq+1)
			}
		})
	}
}
