package infer

import (
	"os"
	"testing"
)

// FuzzParseManifest: any bytes give a manifest or an error, never a panic, and an
// accepted manifest keeps the invariants the pre-processing and decoders rely on.
func FuzzParseManifest(f *testing.F) {
	base, err := os.ReadFile(bundledManifest)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(base)
	f.Add([]byte("name: x\nversion: 1\nfile: m.onnx\ninput: {width: 32, height: 32}\noutput: {decoder: yolox, strides: [8]}\nlabels: [a]\n"))
	f.Add([]byte("name: x\nversion: 1\nfile: m.onnx\ninput: {width: 32, height: 32, pad: 300}\n"))
	f.Add([]byte("{}"))
	f.Add([]byte("- a\n- b\n"))
	f.Add([]byte("name: &a [*a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseManifest(data)
		if err != nil {
			if m != nil {
				t.Fatal("manifest returned with an error")
			}
			return
		}
		in := m.Input
		if m.Name == "" || m.File == "" || in.Width <= 0 || in.Height <= 0 || len(in.Mean) != 3 || len(in.Scale) != 3 || len(m.Labels) == 0 {
			t.Fatalf("accepted an invalid manifest: %+v", m)
		}
		if p := in.PadValue(); p < 0 || p > 255 {
			t.Fatalf("accepted pad %v", p)
		}
		for _, s := range m.Output.Strides {
			if s <= 0 || in.Width%s != 0 || in.Height%s != 0 {
				t.Fatalf("accepted stride %d for %dx%d", s, in.Width, in.Height)
			}
		}
	})
}
