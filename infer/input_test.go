package infer

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckInput(t *testing.T) {
	m, err := LoadManifest(filepath.Dir(bundledManifest))
	if err != nil {
		t.Fatal(err)
	}
	nhwc := *m
	nhwc.Input.Layout = "NHWC"
	img := func(typ DataType, shape ...int64) []TensorInfo {
		return []TensorInfo{{Name: "images", Type: typ, Shape: shape}}
	}
	for name, tc := range map[string]struct {
		m    *Manifest
		in   []TensorInfo
		want string // "" = accepted
	}{
		"NCHW":            {m, img(Float32, 1, 3, 416, 416), ""},
		"dynamic batch":   {m, img(Float32, -1, 3, 416, 416), ""},
		"NHWC uint8":      {&nhwc, img(Uint8, 1, 416, 416, 3), ""},
		"no input":        {m, nil, "input: the model has 0 inputs"},
		"two inputs":      {m, append(img(Float32, 1, 3, 416, 416), img(Float32, 1)...), "input: the model has 2 inputs"},
		"int64":           {m, img("int64", 1, 3, 416, 416), "input: model input images int64 [1 3 416 416] has element type int64"},
		"rank 3":          {m, img(Float32, 3, 416, 416), "input.layout: model input images float32 [3 416 416] is not a 4-d image tensor"},
		"batch 4":         {m, img(Float32, 4, 3, 416, 416), "input: model input images float32 [4 3 416 416] has batch size 4"},
		"layout swapped":  {&nhwc, img(Float32, 1, 3, 416, 416), "input.layout: model input images float32 [1 3 416 416] is NCHW, model.yaml says NHWC"},
		"one channel":     {m, img(Float32, 1, 1, 416, 416), "input.layout: model input images float32 [1 1 416 416] does not have 3 colour channels"},
		"height":          {m, img(Float32, 1, 3, 320, 416), "input.height: 416, but model input images float32 [1 3 320 416] has height 320"},
		"width":           {m, img(Float32, 1, 3, 416, 320), "input.width: 416, but model input images float32 [1 3 416 320] has width 320"},
		"dynamic height":  {m, img(Float32, 1, 3, -1, 416), "input.height: 416, but model input images float32 [1 3 -1 416] has height dynamic"},
		"NHWC wrong size": {&nhwc, img(Float32, 1, 416, 320, 3), "input.width: 416"},
	} {
		t.Run(name, func(t *testing.T) {
			err := CheckInput(tc.m, tc.in)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("rejected: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
