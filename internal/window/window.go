// Package window keeps the most recent values of a stream of durations (inference
// times, latencies) and defines the one quantile Vigil reports over them: the status
// page, the metrics' companions in /api/status, the deployer's watch, the shadow's
// comparison and the benchmarks all read percentiles the same way. Pure Go.
package window

import (
	"math"
	"slices"
	"time"
)

// Quantile is the q-quantile (0 < q <= 1) of ds by the nearest-rank method: the
// smallest value such that at least a fraction q of ds is at or below it. 0 for none.
// ds is not modified.
func Quantile(ds []time.Duration, q float64) time.Duration {
	return Quantiles(ds, q)[0]
}

// Quantiles is Quantile for several q at once, sorting ds (a copy) once.
func Quantiles(ds []time.Duration, qs ...float64) []time.Duration {
	out := make([]time.Duration, len(qs))
	if len(ds) == 0 {
		return out
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	for i, q := range qs {
		rank := int(math.Ceil(q*float64(len(s)))) - 1
		out[i] = s[min(max(rank, 0), len(s)-1)]
	}
	return out
}

// Ring keeps the last Size durations added to it. It is not safe for concurrent use:
// its owner guards it with its own lock, with whatever else it counts.
type Ring struct {
	buf   []time.Duration
	size  int
	total uint64 // added since it was made
}

// NewRing makes a ring of the last size values.
func NewRing(size int) *Ring {
	return &Ring{buf: make([]time.Duration, 0, size), size: size}
}

// Add records d, pushing out the oldest value once the ring is full.
func (r *Ring) Add(d time.Duration) {
	if len(r.buf) < r.size {
		r.buf = append(r.buf, d)
	} else {
		r.buf[r.total%uint64(r.size)] = d
	}
	r.total++
}

// Len is how many values it holds.
func (r *Ring) Len() int { return len(r.buf) }

// Total is how many values were ever added.
func (r *Ring) Total() uint64 { return r.total }

// Values are the values it holds, in no particular order (a copy).
func (r *Ring) Values() []time.Duration { return slices.Clone(r.buf) }

// Since appends to dst the values added after Total was seen, oldest first; at most
// Len of them (older ones have left the ring).
func (r *Ring) Since(seen uint64, dst []time.Duration) []time.Duration {
	n := min(r.total-min(seen, r.total), uint64(len(r.buf)))
	for i := r.total - n; i < r.total; i++ {
		dst = append(dst, r.buf[i%uint64(r.size)])
	}
	return dst
}

// Quantiles are the q-quantiles of the values it holds (Quantiles).
func (r *Ring) Quantiles(qs ...float64) []time.Duration { return Quantiles(r.buf, qs...) }

// MillisP50P99 are the median and the 99th percentile of ds in milliseconds, to 0.01
// ms: how the status page, telemetry and `vigil bench` all report times, so a figure of
// the same frames agrees wherever it is read.
func MillisP50P99(ds []time.Duration) (p50, p99 float64) {
	q := Quantiles(ds, 0.5, 0.99)
	return millis(q[0]), millis(q[1])
}

func millis(d time.Duration) float64 { return math.Round(float64(d)/1e4) / 100 }
