package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

type detection struct {
	Label string  `json:"label"`
	Score float64 `json:"score"`
}

func TestEnqueuePeek(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		o := openTest(t, testOptions(t, p))

		inputs := []struct {
			kind  string
			class Class
			body  any
			want  string // body JSON
		}{
			{"detection", ClassEvent, detection{Label: "person", Score: 0.91}, `{"label":"person","score":0.91}`},
			{"telemetry", ClassTelemetry, map[string]int{"cpu_temp": 61}, `{"cpu_temp":61}`},
			{"fault", ClassEvent, json.RawMessage(`{"camera":"front","err":"stalled"}`), `{"camera":"front","err":"stalled"}`},
			{"note", ClassEvent, "a <quoted> \"string\"", `"a \u003cquoted\u003e \"string\""`},
			{"empty", ClassTelemetry, nil, `null`},
		}
		const rounds = 5 // 25 messages, enough for three pages of 10
		var sent []Envelope
		for range rounds {
			for _, in := range inputs {
				sent = append(sent, mustEnqueue(t, o, in.kind, in.class, in.body))
			}
		}
		waitWritten(t, o)

		got, err := o.Peek(0, 100)
		if err != nil {
			t.Fatalf("Peek: %v", err)
		}
		if want := seqRange(1, uint64(len(sent))); !slices.Equal(seqsOf(got), want) {
			t.Fatalf("Peek seqs = %v, want %v", seqsOf(got), want)
		}
		ids := map[string]bool{}
		for i, env := range got {
			in := inputs[i%len(inputs)]
			id, err := uuid.Parse(env.ID)
			if err != nil || id.Version() != 7 {
				t.Errorf("seq %d: id %q is not a uuid v7 (err %v)", env.Seq, env.ID, err)
			}
			if ids[env.ID] {
				t.Errorf("seq %d: id %s used twice", env.Seq, env.ID)
			}
			ids[env.ID] = true
			if env.Device != "cam-07" || env.Kind != in.kind {
				t.Errorf("seq %d: device %q kind %q, want cam-07 %s", env.Seq, env.Device, env.Kind, in.kind)
			}
			if string(env.Body) != in.want {
				t.Errorf("seq %d: body %s, want %s", env.Seq, env.Body, in.want)
			}
			// The stored envelope is the one Enqueue returned: same id (so a resend
			// is recognisable), same instant from the injected clock, in UTC.
			s := sent[i]
			if env.ID != s.ID || env.Seq != s.Seq || !env.TS.Equal(s.TS) || !bytes.Equal(env.Body, s.Body) {
				t.Errorf("seq %d: stored %+v, Enqueue returned %+v", env.Seq, env, s)
			}
			if env.TS.Location() != time.UTC || s.TS.Location() != time.UTC {
				t.Errorf("seq %d: ts %v is not UTC", env.Seq, env.TS)
			}
			// testClock advances 1ms per call and Enqueue calls it once.
			if want := testEpoch().Add(time.Duration(i+1) * time.Millisecond); !env.TS.Equal(want) {
				t.Errorf("seq %d: ts %v, want %v from the injected clock", env.Seq, env.TS, want)
			}
		}

		pages := []struct {
			name  string
			after uint64
			n     int
			want  []uint64
		}{
			{"first page", 0, 10, seqRange(1, 10)},
			{"second page", 10, 10, seqRange(11, 20)},
			{"short last page", 20, 10, seqRange(21, 25)},
			{"past the end", 25, 10, nil},
			{"one from the middle", 5, 1, []uint64{6}},
			{"zero n", 0, 0, nil},
			{"negative n", 0, -1, nil},
			{"max after", ^uint64(0), 10, nil},
		}
		for _, tc := range pages {
			t.Run(tc.name, func(t *testing.T) {
				got, err := o.Peek(tc.after, tc.n)
				if err != nil {
					t.Fatalf("Peek(%d, %d): %v", tc.after, tc.n, err)
				}
				if !slices.Equal(seqsOf(got), tc.want) {
					t.Errorf("Peek(%d, %d) = %v, want %v", tc.after, tc.n, seqsOf(got), tc.want)
				}
			})
		}
	})
}

func TestRestart(t *testing.T) {
	cases := []struct {
		name      string
		ackAll    bool
		wantDepth int
	}{
		{"messages kept", false, 10},
		// next_seq in meta keeps seq counting even when no message is left to
		// read it from.
		{"all acked", true, 0},
	}
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				opts := testOptions(t, p)
				o, err := Open(opts)
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				var sent []Envelope
				for i := range 10 {
					sent = append(sent, mustEnqueue(t, o, "telemetry", ClassTelemetry, map[string]int{"i": i}))
				}
				waitWritten(t, o)
				if tc.ackAll {
					if err := o.Ack(seqsOf(sent)...); err != nil {
						t.Fatalf("Ack: %v", err)
					}
				}
				before := o.Stats()
				if err := o.Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}

				o = openTest(t, opts)
				st := o.Stats()
				if st.NextSeq != 11 || st.Depth != tc.wantDepth || st.Bytes != before.Bytes || st.Pending != 0 {
					t.Errorf("after restart Stats = %+v, want NextSeq 11, Depth %d, Bytes %d (as before close)", st, tc.wantDepth, before.Bytes)
				}
				got := peekAll(t, o)
				if len(got) != tc.wantDepth {
					t.Fatalf("after restart Peek returned %d messages, want %d", len(got), tc.wantDepth)
				}
				for i, env := range got {
					if env.ID != sent[i].ID || env.Seq != sent[i].Seq || !bytes.Equal(env.Body, sent[i].Body) {
						t.Errorf("after restart seq %d = %+v, want %+v", env.Seq, env, sent[i])
					}
				}
				if env := mustEnqueue(t, o, "detection", ClassEvent, detection{Label: "car"}); env.Seq != 11 {
					t.Errorf("first seq after restart = %d, want 11", env.Seq)
				}
			})
		}
	})
}

func TestAck(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		opts := testOptions(t, p)
		o, err := Open(opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer func() {
			if err := o.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}()
		size := map[uint64]int64{}
		for i := range 5 {
			env := mustEnqueue(t, o, "detection", ClassEvent, detection{Label: strings.Repeat("x", i*10), Score: 0.5})
			b, err := json.Marshal(env)
			if err != nil {
				t.Fatal(err)
			}
			size[env.Seq] = int64(len(b))
		}
		// Depth and Bytes count pending messages too, so they hold before the commit.
		checkStats(t, o, size)
		waitWritten(t, o)
		checkStats(t, o, size)

		steps := []struct {
			name string
			ack  []uint64
			want []uint64
		}{
			{"some", []uint64{2, 4}, []uint64{1, 3, 5}},
			{"nothing", nil, []uint64{1, 3, 5}},
			{"already acked and unknown", []uint64{2, 99, 0}, []uint64{1, 3, 5}},
			{"mixed known and unknown", []uint64{5, 6}, []uint64{1, 3}},
		}
		for _, st := range steps {
			if err := o.Ack(st.ack...); err != nil {
				t.Fatalf("%s: Ack(%v): %v", st.name, st.ack, err)
			}
			for _, s := range st.ack {
				delete(size, s)
			}
			if got := seqsOf(peekAll(t, o)); !slices.Equal(got, st.want) {
				t.Errorf("%s: after Ack(%v) Peek = %v, want %v", st.name, st.ack, got, st.want)
			}
			checkStats(t, o, size)
		}
	})
}

// checkStats asserts Depth and Bytes against the sizes of the messages still held.
func checkStats(t *testing.T, o *Outbox, size map[uint64]int64) {
	t.Helper()
	var bytes int64
	for _, b := range size {
		bytes += b
	}
	if st := o.Stats(); st.Depth != len(size) || st.Bytes != bytes {
		t.Errorf("Stats = %+v, want Depth %d Bytes %d", st, len(size), bytes)
	}
}

func TestConcurrentEnqueue(t *testing.T) {
	const goroutines, each = 8, 200
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		o := openTest(t, testOptions(t, p))
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			seqs []uint64
		)
		for g := range goroutines {
			wg.Go(func() {
				for i := range each {
					env, err := o.Enqueue(context.Background(), "detection", ClassEvent, map[string]int{"g": g, "i": i})
					if err != nil {
						t.Errorf("goroutine %d: Enqueue %d: %v", g, i, err)
						return
					}
					mu.Lock()
					seqs = append(seqs, env.Seq)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		want := seqRange(1, goroutines*each)
		slices.Sort(seqs)
		if !slices.Equal(seqs, want) {
			t.Fatalf("Enqueue returned %d seqs, not exactly 1..%d once each", len(seqs), goroutines*each)
		}
		waitWritten(t, o)
		if got := seqsOf(peekAll(t, o)); !slices.Equal(got, want) {
			t.Fatalf("Peek returned %d seqs, not exactly 1..%d in order", len(got), goroutines*each)
		}
		if st := o.Stats(); st.Depth != goroutines*each || st.NextSeq != goroutines*each+1 {
			t.Errorf("Stats = %+v, want Depth %d NextSeq %d", st, goroutines*each, goroutines*each+1)
		}
	})
}

// TestVisibleAfterEnqueue: under both policies Enqueue has written the record
// when it returns, so Peek sees it at once.
func TestVisibleAfterEnqueue(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		o := openTest(t, testOptions(t, p))
		for i := range 20 {
			env := mustEnqueue(t, o, "telemetry", ClassTelemetry, map[string]int{"i": i})
			got, err := o.Peek(env.Seq-1, 1)
			if err != nil {
				t.Fatalf("Peek: %v", err)
			}
			if len(got) != 1 || got[0].ID != env.ID {
				t.Fatalf("seq %d: not readable when Enqueue returned under %s: %+v", env.Seq, p, got)
			}
		}
	})
}

// TestCloseSyncs uses an interval no test would wait for: the messages are written
// by Enqueue and synced by Close.
func TestCloseSyncs(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		opts := testOptions(t, p)
		opts.FsyncInterval = time.Hour
		o, err := Open(opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		for i := range 3 {
			mustEnqueue(t, o, "telemetry", ClassTelemetry, map[string]int{"i": i})
		}
		if st := o.Stats(); st.Pending != 0 || st.Depth != 3 {
			t.Errorf("before Close Stats = %+v, want 3 written, none pending", st)
		}
		if err := o.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		o = openTest(t, opts)
		if got := seqsOf(peekAll(t, o)); !slices.Equal(got, []uint64{1, 2, 3}) {
			t.Errorf("after reopen Peek = %v, want [1 2 3]", got)
		}
	})
}

func TestClosed(t *testing.T) {
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		o, err := Open(testOptions(t, p))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		mustEnqueue(t, o, "telemetry", ClassTelemetry, 1)
		if err := o.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := o.Close(); err != nil {
			t.Errorf("second Close = %v, want nil", err)
		}
		if _, err := o.Enqueue(context.Background(), "telemetry", ClassTelemetry, 2); err == nil || !strings.Contains(err.Error(), "closed") {
			t.Errorf("Enqueue after Close = %v, want an error saying the outbox is closed", err)
		}
		if _, err := o.Peek(0, 10); err == nil {
			t.Error("Peek after Close succeeded")
		}
		if err := o.Ack(1); err == nil {
			t.Error("Ack after Close succeeded")
		}
	})
}

func TestEnqueueRejects(t *testing.T) {
	cases := []struct {
		name  string
		ctx   func() context.Context
		kind  string
		class Class
		body  any
		want  string
	}{
		{"empty kind", context.Background, "", ClassEvent, 1, "kind is empty"},
		{"class zero", context.Background, "fault", 0, 1, "unknown class 0"},
		{"class unknown", context.Background, "fault", 9, 1, "unknown class 9"},
		{"body not encodable", context.Background, "fault", ClassEvent, make(chan int), "encode body"},
		{"invalid raw message", context.Background, "fault", ClassEvent, json.RawMessage(`{"a":`), "encode body"},
		{"context already done", func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, "fault", ClassEvent, 1, "not queued"},
		// MaxBytes is 1 MiB in this test: a quarter is 256 KiB.
		{"too large", context.Background, "snapshot", ClassEvent, strings.Repeat("x", 300<<10), "more than a quarter of outbox.max_bytes"},
	}
	forEachPolicy(t, func(t *testing.T, p Fsync) {
		opts := testOptions(t, p)
		opts.MaxBytes = 1 << 20
		o := openTest(t, opts)
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				_, err := o.Enqueue(tc.ctx(), tc.kind, tc.class, tc.body)
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("Enqueue = %v, want error containing %q", err, tc.want)
				}
			})
		}
		// A rejected message takes no seq.
		if env := mustEnqueue(t, o, "fault", ClassEvent, 1); env.Seq != 1 {
			t.Errorf("first accepted seq = %d, want 1", env.Seq)
		}
	})
}

func TestOpenRejects(t *testing.T) {
	cases := []struct {
		name   string
		modify func(*Options)
		want   string
	}{
		{"empty path", func(o *Options) { o.Path = "" }, "path is empty"},
		{"empty device", func(o *Options) { o.Device = "" }, "device is empty"},
		{"unknown fsync", func(o *Options) { o.Fsync = "sometimes" }, `fsync "sometimes"`},
		{"parent is a file", func(o *Options) {
			parent := filepath.Join(filepath.Dir(filepath.Dir(o.Path)), "file")
			if err := os.WriteFile(parent, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			o.Path = filepath.Join(parent, "outbox")
		}, "create directory"},
		{"path is a file", func(o *Options) {
			// The bbolt file of an older vigil.
			if err := os.MkdirAll(filepath.Dir(o.Path), 0o750); err != nil {
				t.Fatal(err)
			}
			o.Path = filepath.Join(filepath.Dir(o.Path), "outbox.db")
			if err := os.WriteFile(o.Path, []byte("bbolt"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "outbox.db: it is a file, but the outbox is now a directory"},
		{"max bytes too small", func(o *Options) { o.MaxBytes = 512 << 10 }, "max_bytes 524288 is below the minimum of 1MiB"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions(t, FsyncAlways)
			tc.modify(&opts)
			o, err := Open(opts)
			if err == nil {
				o.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open = %v, want error containing %q", err, tc.want)
			}
		})
	}
}
