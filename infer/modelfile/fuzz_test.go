package modelfile

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: any bytes give a model or an error, never a panic; a model that comes
// back is well formed.
func FuzzParse(f *testing.F) {
	seeds := []string{onnxModel, float16Model, dynRangeModel}
	// The same files in ../../shared/models, when present (the repository's copies
	// are the same bytes, so these only matter if the two ever differ).
	shared, _ := filepath.Glob(filepath.Join("..", "..", "..", "shared", "models", "*.*"))
	for _, path := range append(seeds, shared...) {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
		for _, n := range []int{8, 16, 64, 512, 4096, len(data) / 3, len(data) / 2, len(data) - 1} {
			if n < len(data) {
				f.Add(data[:n])
			}
		}
	}
	f.Add([]byte{})
	f.Add([]byte("\x08\x07\x3a\x00"))
	f.Add(tfliteFile(fbTableNode{fbI32(3), nil, fbTabls{{nil, fbI32s{0}}}}))
	f.Add([]byte(pb(nil).varint(modelIRVersion, 7).bytes(modelGraph, nested(3))))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			if m != nil {
				t.Fatal("model returned with an error")
			}
			return
		}
		if m.Format != ONNX && m.Format != TFLite {
			t.Fatalf("format %q", m.Format)
		}
		if m.Inputs == nil || m.Outputs == nil || m.Operators == nil {
			t.Fatalf("nil lists in %+v", m)
		}
		for _, op := range m.Operators {
			if op.Count <= 0 || op.Type == "" {
				t.Fatalf("operator %+v", op)
			}
		}
	})
}
