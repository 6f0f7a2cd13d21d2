package sysstat

import (
	"testing"
	"time"
)

func TestReadings(t *testing.T) {
	m := NewCPUMeter()
	for start := time.Now(); time.Since(start) < 50*time.Millisecond; {
		// Burn some CPU so the meter has something to see.
	}
	if p := m.Percent(); p <= 0 || p > 100*float64(64) {
		t.Errorf("CPU after a busy loop: %v%%", p)
	}
	rss := RSSBytes()
	peak, err := PeakRSSBytes()
	if err != nil || rss <= 0 || peak < rss/2 {
		t.Errorf("rss %d, peak %d (%v)", rss, peak, err)
	}
	if c, ok := TemperatureC(); ok && (c < -40 || c > 150) {
		t.Errorf("temperature %v °C", c)
	}
}
