// Package backoff computes reconnection delays shared by cameras and the MQTT link.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Delay is lo * 2^failures, capped at hi, with up to 20% jitter either way so that
// devices behind one switch or broker do not retry in lockstep.
func Delay(lo, hi time.Duration, failures int) time.Duration {
	d := lo
	for range failures {
		d *= 2
		if d >= hi {
			d = hi
			break
		}
	}
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
