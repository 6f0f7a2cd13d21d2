package tflite

import (
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/enginetest"
)

var (
	models       = filepath.Join("..", "testdata", "models")
	bundle       = filepath.Join(models, "yolox-nano-float16")
	float16Model = filepath.Join(models, "yolox_nano_float16_quantize.tflite")
	dynamicModel = filepath.Join(models, "yolox_nano_dynamic_range_quantize.tflite")
)

// backend returns the installed TFLite backend. scripts/install-deps installs the
// library on x86_64 only; elsewhere these tests cannot run.
func backend(t testing.TB) *Backend {
	t.Helper()
	b := New("")
	if err := b.Available(); err != nil {
		if runtime.GOARCH != "amd64" {
			t.Skipf("no TFLite C library for %s (scripts/install-deps installs TFLite 2.2.0 on amd64 only): %v", runtime.GOARCH, err)
		}
		t.Fatalf("the TFLite C library is required (run scripts/install-deps): %v", err)
	}
	return b
}

func TestConformance(t *testing.T) {
	enginetest.Run(t, backend(t), bundle, infer.LoadOptions{Threads: 2})
}

// The dynamic-range model needs CONV_2D version 5, which TFLite 2.2 lacks: loading it
// must fail with TFLite's own words naming the operator and version.
func TestUnsupportedOperatorVersion(t *testing.T) {
	b := backend(t)
	e, err := b.Load(dynamicModel, infer.LoadOptions{})
	if err == nil {
		e.Close()
		t.Fatal("the dynamic-range model loaded on TFLite 2.2")
	}
	for _, want := range []string{"'CONV_2D' version '5'", dynamicModel, "TFLite 2.2.0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q: %v", want, err)
		}
	}
}

func BenchmarkTFLiteRun(b *testing.B) {
	enginetest.BenchmarkRun(b, backend(b), float16Model, infer.LoadOptions{Threads: 1})
}
