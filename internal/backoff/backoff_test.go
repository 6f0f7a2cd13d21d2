package backoff

import (
	"testing"
	"time"
)

func TestDelayGrowsAndCaps(t *testing.T) {
	lo, hi := 100*time.Millisecond, 2*time.Second
	for f, want := range map[int]time.Duration{0: lo, 1: 2 * lo, 3: 8 * lo, 10: hi, 100: hi} {
		for range 20 {
			if got := Delay(lo, hi, f); got < want*8/10 || got > want*12/10 {
				t.Errorf("Delay after %d failures = %v, want %v ± 20%%", f, got, want)
			}
		}
	}
}
