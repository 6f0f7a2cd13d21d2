package onnxrt

import (
	"testing"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/enginetest"
)

// benchThreads is the intra-op thread count both benchmarks use, so their ratio
// measures only what the engine adds around ONNX Runtime.
const benchThreads = 1

// BenchmarkEngineRun is inference through the engine (the conformance suite's Run
// benchmark, which every backend shares): its bound buffers, Run.
// Compare with BenchmarkBareSession in the same run:
//
//	go test -run '^$' -bench 'EngineRun|BareSession' -benchtime 50x ./infer/onnxrt/
func BenchmarkEngineRun(b *testing.B) {
	enginetest.BenchmarkRun(b, New(""), model, infer.LoadOptions{Threads: benchThreads})
}

// BenchmarkBareSession is the same model on a plain onnxruntime_go AdvancedSession,
// set up as its README shows, with the same threads: the baseline for the engine.
func BenchmarkBareSession(b *testing.B) {
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
	if err := so.SetIntraOpNumThreads(benchThreads); err != nil {
		b.Fatal(err)
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
