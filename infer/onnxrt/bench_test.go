package onnxrt

import (
	"fmt"
	"testing"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/enginetest"
)

// benchThreads are the intra-op thread counts both benchmarks run with, so their ratio
// per count measures what the engine adds around ONNX Runtime (including its choice to
// turn the workers' spinning off, which shows with 2 threads).
var benchThreads = []int{1, 2}

// BenchmarkEngineRun is inference through the engine (the conformance suite's Run
// benchmark, which every backend shares): its bound buffers, Run.
// Compare with BenchmarkBareSession in the same run:
//
//	go test -run '^$' -bench 'EngineRun|BareSession' -benchtime 50x ./infer/onnxrt/
func BenchmarkEngineRun(b *testing.B) {
	for _, n := range benchThreads {
		b.Run(fmt.Sprintf("threads=%d", n), func(b *testing.B) {
			enginetest.BenchmarkRun(b, New(""), model, infer.LoadOptions{Threads: n})
		})
	}
}

// BenchmarkBareSession is the same model on a plain onnxruntime_go AdvancedSession,
// set up as its README shows, with the same threads: the baseline for the engine.
//
// ONNX Runtime's default lets idle workers spin; the engine turns that off (see Load),
// which costs inference alone a little with 2 threads and gains the pipeline much more.
// spin=off is the bare session with the engine's setting, for the like-for-like ratio.
func BenchmarkBareSession(b *testing.B) {
	for _, n := range benchThreads {
		b.Run(fmt.Sprintf("threads=%d", n), func(b *testing.B) { benchBareSession(b, n, true) })
		if n > 1 {
			b.Run(fmt.Sprintf("threads=%d,spin=off", n), func(b *testing.B) { benchBareSession(b, n, false) })
		}
	}
}

func benchBareSession(b *testing.B, threads int, spin bool) {
	if err := New("").Available(); err != nil {
		b.Fatalf("ONNX Runtime is required (scripts/install-deps): %v", err)
	}
	in, err := ort.NewEmptyTensor[float32](ort.NewShape(1, 3, 416, 416))
	if err != nil {
		b.Fatal(err)
	}
	defer in.Destroy()
	out, err := ort.NewEmptyTensor[float32](ort.NewShape(1, 3549, 85))
	if err != nil {
		b.Fatal(err)
	}
	defer out.Destroy()
	so, err := ort.NewSessionOptions()
	if err != nil {
		b.Fatal(err)
	}
	defer so.Destroy()
	if err := so.SetIntraOpNumThreads(threads); err != nil {
		b.Fatal(err)
	}
	if !spin {
		if err := so.AddSessionConfigEntry("session.intra_op.allow_spinning", "0"); err != nil {
			b.Fatal(err)
		}
	}
	s, err := ort.NewAdvancedSession(model, []string{"images"}, []string{"output"}, []ort.Value{in}, []ort.Value{out}, so)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Destroy()
	for i := range in.GetData() { // the same input as enginetest.BenchmarkRun
		in.GetData()[i] = 114
	}
	if err := s.Run(); err != nil { // warm-up
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := s.Run(); err != nil {
			b.Fatal(err)
		}
	}
}
