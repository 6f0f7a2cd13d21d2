// Package sysstat reads what the process and the board report about themselves: CPU
// time, resident memory (now and at its peak), and the hottest thermal zone. Linux
// only, from /proc and /sys; a reading that cannot be had is 0 or reported missing.
package sysstat

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CPUMeter turns the process's CPU time into a percentage of one core since the last
// reading.
type CPUMeter struct {
	last    time.Time
	lastCPU time.Duration
}

// NewCPUMeter starts measuring from now.
func NewCPUMeter() *CPUMeter { return &CPUMeter{last: time.Now(), lastCPU: CPUTime()} }

// Percent is the CPU used since the last call (or NewCPUMeter), in percent of one core,
// to one decimal.
func (m *CPUMeter) Percent() float64 {
	now, c := time.Now(), CPUTime()
	wall := now.Sub(m.last)
	p := 0.0
	if wall > 0 {
		p = math.Round(1000*float64(c-m.lastCPU)/float64(wall)) / 10
	}
	m.last, m.lastCPU = now, c
	return p
}

// CPUTime is the process's user and system CPU time.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// RSSBytes is the resident set size, from /proc/self/statm.
func RSSBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// PeakRSSBytes is the peak resident set size (VmHWM in /proc/self/status).
func PeakRSSBytes() (int64, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, os.ErrNotExist
}

// TemperatureC is the hottest thermal zone the board reports, if any.
func TemperatureC() (float64, bool) {
	zones, _ := filepath.Glob("/sys/class/thermal/thermal_zone*/temp")
	best, ok := 0.0, false
	for _, z := range zones {
		b, err := os.ReadFile(z)
		if err != nil {
			continue
		}
		milli, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
		if err != nil {
			continue
		}
		if c := milli / 1000; !ok || c > best {
			best, ok = c, true
		}
	}
	return best, ok
}
