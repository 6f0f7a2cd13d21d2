package outbox

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkEnqueue reports msgs/s per policy. Sequential under always is one commit
// (one fsync) per message; parallel shows what group commit gains; interval is the
// cost of queueing in memory, with the commits running behind.
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
				Path:       filepath.Join(b.TempDir(), "outbox.db"),
				Device:     "bench",
				Fsync:      tc.fsync,
				MaxPending: 1 << 20, // measure enqueueing, not the budget
			})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			if tc.parallel {
				// Enough concurrent callers per CPU for batches to form, as when
				// cameras, rules and telemetry enqueue at once.
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
