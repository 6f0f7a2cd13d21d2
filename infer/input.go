package infer

import (
	"fmt"
	"slices"
)

// CheckInput checks that a model's inputs are one image tensor of the size and layout
// that model.yaml's input section describes: [1, 3, height, width] for NCHW or
// [1, height, width, 3] for NHWC (the batch may be dynamic), with an element type
// the engines feed (float32, float16, uint8 or int8). Errors name the model.yaml key.
func CheckInput(m *Manifest, in []TensorInfo) error {
	if len(in) != 1 {
		return fmt.Errorf("input: the model has %d inputs; detectors take exactly one image input", len(in))
	}
	t := in[0]
	if !slices.Contains([]DataType{Float32, Float16, Uint8, Int8}, t.Type) {
		return fmt.Errorf("input: model input %s has element type %s; images go in as float32, float16, uint8 or int8", t, t.Type)
	}
	w, h := int64(m.Input.Width), int64(m.Input.Height)
	nchw := m.Input.Layout == "NCHW"
	want := []int64{1, h, w, 3}
	if nchw {
		want = []int64{1, 3, h, w}
	}
	s := t.Shape
	if len(s) != 4 {
		return fmt.Errorf("input.layout: model input %s is not a 4-d image tensor (%s %dx%d needs shape %v)", t, m.Input.Layout, w, h, want)
	}
	if s[0] != 1 && s[0] != -1 {
		return fmt.Errorf("input: model input %s has batch size %d; detectors run one frame at a time (batch 1)", t, s[0])
	}
	cAt, hAt, wAt := 3, 1, 2 // NHWC
	if nchw {
		cAt, hAt, wAt = 1, 2, 3
	}
	if s[cAt] != 3 {
		other := "NHWC"
		if !nchw {
			other = "NCHW"
		}
		if (nchw && s[3] == 3) || (!nchw && s[1] == 3) {
			return fmt.Errorf("input.layout: model input %s is %s, model.yaml says %s", t, other, m.Input.Layout)
		}
		return fmt.Errorf("input.layout: model input %s does not have 3 colour channels where %s puts them (shape %v wanted)", t, m.Input.Layout, want)
	}
	if s[hAt] != h {
		return fmt.Errorf("input.height: %d, but model input %s has height %s (%s)", h, t, dim(s[hAt]), m.Input.Layout)
	}
	if s[wAt] != w {
		return fmt.Errorf("input.width: %d, but model input %s has width %s (%s)", w, t, dim(s[wAt]), m.Input.Layout)
	}
	return nil
}

func dim(d int64) string {
	if d < 0 {
		return "dynamic (fixed input sizes only)"
	}
	return fmt.Sprint(d)
}
