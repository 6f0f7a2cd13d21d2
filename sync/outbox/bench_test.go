package outbox

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkEnqueue reports msgs/s per policy. Sequential under always is one
// fdatasync per message; parallel shows what group commit gains; interval is the
// cost of write(2) per message with the fdatasyncs running behind.
func BenchmarkEnqueue(b *testing.B) {
	body := detection{Label: "person", Score: 0.87}
	cases := []struct {
		name     string
		fsync    Fsync
		parallel bool
	}{
		{"always/sequential", FsyncAlways, false},
		{"always/parallel", FsyncAlways, true},
		{"interval/sequential", FsyncInterval, false},
		{"interval/parallel", FsyncInterval, true},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			o, err := Open(Options{
				Path:     filepath.Join(b.TempDir(), "outbox"),
				Device:   "bench",
				Fsync:    tc.fsync,
				MaxBytes: 1 << 30, // measure enqueueing, not eviction
			})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			if tc.parallel {
				// Enough concurrent callers per CPU for fdatasyncs to be shared, as
				// when cameras, rules and telemetry enqueue at once.
				b.SetParallelism(8)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := o.Enqueue(ctx, "detection", ClassEvent, body); err != nil {
							b.Error(err)
							return
						}
					}
				})
			} else {
				for range b.N {
					if _, err := o.Enqueue(ctx, "detection", ClassEvent, body); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			b.StopTimer()
			if err := o.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkDrain times the uplink's loop, Peek(last, 256) then Ack of the page,
// over a 50k backlog of both classes (the backlog is written outside the timer).
// b.N counts drained messages.
func BenchmarkDrain(b *testing.B) {
	const backlog = 50_000
	o, err := Open(Options{
		Path:     filepath.Join(b.TempDir(), "outbox"),
		Device:   "bench",
		Fsync:    FsyncInterval,
		MaxBytes: 1 << 30,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	ctx := context.Background()
	body := detection{Label: "person", Score: 0.87}
	fill := func() {
		for i := range backlog {
			class := ClassTelemetry
			if i%4 == 0 {
				class = ClassEvent
			}
			if _, err := o.Enqueue(ctx, "detection", class, body); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportAllocs()
	b.StopTimer()
	var drained int
	var spent time.Duration
	var last uint64
	for drained < b.N {
		if o.Stats().Depth == 0 {
			fill()
		}
		b.StartTimer()
		start := time.Now()
		for drained < b.N {
			page, err := o.Peek(last, 256)
			if err != nil {
				b.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			seqs := make([]uint64, len(page))
			for i, env := range page {
				seqs[i] = env.Seq
			}
			if err := o.Ack(seqs...); err != nil {
				b.Fatal(err)
			}
			last = seqs[len(seqs)-1]
			drained += len(page)
		}
		spent += time.Since(start)
		b.StopTimer()
	}
	b.ReportMetric(float64(drained)/spent.Seconds(), "msgs/s")
}
