package capture

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/capture/rtsptest"
)

// cpuTime is this process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDecodeFile is the decode-only rate of the repo's clip (768x432 H.264), read
// as fast as it decodes, and the CPU it costs per frame.
func BenchmarkDecodeFile(b *testing.B) {
	src, err := OpenFile(clip, true, false)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	cpu0, start := cpuTime(), time.Now()
	for b.Loop() {
		m, err := src.Read(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		m.Close()
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "frames/s")
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Millisecond)/float64(b.N), "cpu-ms/frame")
}

// BenchmarkRTSPStream receives an RTSP stream (the clip at 768 px, 25 fps, from an
// in-process server) and reports the rate that arrived and the CPU one stream costs,
// as a percentage of one core (server included: it runs in this process too).
func BenchmarkRTSPStream(b *testing.B) {
	srv := rtsptest.Start(b, rtsptest.Options{Width: 768, FPS: 25})
	src, err := Open(context.Background(), Spec{Kind: "rtsp", Target: srv.URL("stream"), Transport: "tcp"})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	cpu0, start := cpuTime(), time.Now()
	for b.Loop() {
		m, err := src.Read(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		m.Close()
	}
	wall := time.Since(start)
	b.ReportMetric(float64(b.N)/wall.Seconds(), "frames/s")
	b.ReportMetric(100*float64(cpuTime()-cpu0)/float64(wall), "cpu-%-of-core")
}
