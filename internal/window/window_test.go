package window

import (
	"slices"
	"testing"
	"time"
)

func TestQuantileIsNearestRank(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		var ds []time.Duration
		for _, v := range vs {
			ds = append(ds, time.Duration(v)*time.Millisecond)
		}
		return ds
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // 100..1, unsorted
	}
	for _, tc := range []struct {
		name string
		ds   []time.Duration
		q    float64
		want time.Duration
	}{
		{"none", nil, 0.5, 0},
		{"one", ms(7), 0.99, 7 * time.Millisecond},
		{"median of an odd count", ms(3, 1, 2), 0.5, 2 * time.Millisecond},
		{"median of an even count is the lower middle", ms(4, 1, 3, 2), 0.5, 2 * time.Millisecond},
		{"p99 of 1..100", ms(hundred...), 0.99, 99 * time.Millisecond},
		{"p50 of 1..100", ms(hundred...), 0.5, 50 * time.Millisecond},
		{"max", ms(hundred...), 1, 100 * time.Millisecond},
		{"a tiny q is the minimum", ms(hundred...), 0.001, time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := slices.Clone(tc.ds)
			if got := Quantile(tc.ds, tc.q); got != tc.want {
				t.Errorf("Quantile(%v) = %v, want %v", tc.q, got, tc.want)
			}
			if !slices.Equal(before, tc.ds) {
				t.Error("Quantile reordered its input")
			}
		})
	}
}

func TestRingKeepsTheLastValues(t *testing.T) {
	r := NewRing(4)
	if r.Len() != 0 || r.Quantiles(0.5)[0] != 0 {
		t.Fatal("a new ring is not empty")
	}
	for i := 1; i <= 10; i++ {
		r.Add(time.Duration(i))
	}
	if r.Len() != 4 || r.Total() != 10 {
		t.Fatalf("len %d total %d, want 4 and 10", r.Len(), r.Total())
	}
	got := r.Values()
	slices.Sort(got)
	if !slices.Equal(got, []time.Duration{7, 8, 9, 10}) {
		t.Fatalf("values %v, want the last four", got)
	}
	if q := r.Quantiles(0.5, 1); q[0] != 8 || q[1] != 10 {
		t.Errorf("quantiles %v", q)
	}
	if s := r.Since(8, nil); !slices.Equal(s, []time.Duration{9, 10}) {
		t.Errorf("Since(8) = %v, want [9 10]", s)
	}
	if s := r.Since(0, nil); !slices.Equal(s, []time.Duration{7, 8, 9, 10}) {
		t.Errorf("Since(0) = %v, want what the ring still holds, oldest first", s)
	}
	if s := r.Since(10, nil); len(s) != 0 {
		t.Errorf("Since(Total) = %v, want nothing", s)
	}
}

func TestMillisP50P99(t *testing.T) {
	ds := []time.Duration{1234567 * time.Nanosecond, 2 * time.Millisecond, 3 * time.Millisecond}
	if p50, p99 := MillisP50P99(ds); p50 != 2 || p99 != 3 {
		t.Errorf("p50 %v p99 %v, want 2 and 3", p50, p99)
	}
	if p50, _ := MillisP50P99(ds[:1]); p50 != 1.23 {
		t.Errorf("1.234567 ms reported as %v, want 1.23", p50)
	}
}
