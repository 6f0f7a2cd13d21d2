package rate

import (
	"math"
	"testing"
	"time"
)

func TestMeter(t *testing.T) {
	var m Meter
	if m.PerSecond() != 0 || !m.Last().IsZero() {
		t.Fatal("zero meter not empty")
	}
	start := time.Unix(0, 0)
	for i := range 50 {
		m.Tick(start.Add(time.Duration(i) * 100 * time.Millisecond))
	}
	if r := m.PerSecond(); math.Abs(r-10) > 0.01 {
		t.Errorf("10 events a second measured as %v", r)
	}
	// A slower stream pulls the rate down gradually.
	last := m.Last()
	for i := 1; i <= 50; i++ {
		m.Tick(last.Add(time.Duration(i) * 200 * time.Millisecond))
	}
	if r := m.PerSecond(); math.Abs(r-5) > 0.1 {
		t.Errorf("after slowing to 5 a second: %v", r)
	}
}
