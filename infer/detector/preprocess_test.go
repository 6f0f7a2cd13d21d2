package detector

import (
	"fmt"
	"image"
	"path/filepath"
	"testing"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/onnxrt"
)

var bundleDir = filepath.Join("..", "..", "assets", "models", "yolox-nano")

// newPreprocessor is a Detector with only its pre-processing set up, writing into a
// buffer of its own: no model here has an NHWC or RGB input, but the row-wise fill
// must handle them.
func newPreprocessor(t testing.TB, in infer.InputSpec) *Detector {
	m, err := infer.LoadManifest(bundleDir)
	if err != nil {
		t.Fatal(err)
	}
	m.Input = in
	d := &Detector{manifest: m, nchw: in.Layout == "NCHW", resized: gocv.NewMat(), color: gocv.NewMat()}
	d.setInput(make([]float32, 3*in.Width*in.Height))
	t.Cleanup(func() { d.resized.Close(); d.color.Close() })
	return d
}

// fillReference is the straightforward per-pixel fill the row-wise one replaced.
func (d *Detector) fillReference(dst []float32, pix []uint8, nw, nh, ox, oy int) {
	in := d.manifest.Input
	W, H := in.Width, in.Height
	plane := W * H
	pad := uint8(in.PadValue())
	for y := range H {
		for x := range W {
			sy, sx := y-oy, x-ox
			var v [3]float32
			for c := range 3 {
				if sy < 0 || sy >= nh || sx < 0 || sx >= nw {
					v[c] = d.lut[c][pad]
				} else {
					v[c] = d.lut[c][pix[(sy*nw+sx)*3+d.src[c]]]
				}
				if d.nchw {
					dst[c*plane+y*W+x] = v[c]
				} else {
					dst[(y*W+x)*3+c] = v[c]
				}
			}
		}
	}
}

func TestFillMatchesReference(t *testing.T) {
	dog := gocv.IMRead(filepath.Join("testdata", "dog.jpg"), gocv.IMReadColor)
	defer dog.Close()
	// A portrait frame too, so the letterbox pads left and right instead of below.
	portrait := dog.Region(image.Rect(100, 0, 400, 576))
	defer portrait.Close()
	pad := 7.0
	for _, layout := range []string{"NCHW", "NHWC"} {
		for _, color := range []string{"BGR", "RGB"} {
			for _, fit := range []struct{ resize, align string }{{"letterbox", "top-left"}, {"letterbox", "center"}, {"stretch", "top-left"}} {
				for fname, frame := range map[string]gocv.Mat{"landscape": dog, "portrait": portrait} {
					name := fmt.Sprintf("%s/%s/%s-%s/%s", layout, color, fit.resize, fit.align, fname)
					t.Run(name, func(t *testing.T) {
						d := newPreprocessor(t, infer.InputSpec{
							Width: 96, Height: 64, Layout: layout, Color: color, Resize: fit.resize, Align: fit.align,
							Pad: &pad, Mean: []float32{1, 2, 3}, Scale: []float32{0.5, 0.25, 2},
						})
						g, err := d.preprocess(frame)
						if err != nil {
							t.Fatal(err)
						}
						pix, err := d.resized.DataPtrUint8()
						if err != nil {
							t.Fatal(err)
						}
						want := make([]float32, len(d.in))
						d.fillReference(want, pix, d.resized.Cols(), d.resized.Rows(), int(g.OffsetX), int(g.OffsetY))
						for i := range want {
							if d.in[i] != want[i] {
								t.Fatalf("element %d = %v, the per-pixel fill gives %v", i, d.in[i], want[i])
							}
						}
						// The reference agrees with the spec: the first pixel is padding
						// when the image is centred in a letterbox ((7-mean)*scale).
						if fit.align == "center" && d.in[0] != (7-1)*0.5 {
							t.Errorf("first element %v is not the padding value 3", d.in[0])
						}
					})
				}
			}
		}
	}
}

func BenchmarkPreprocess(b *testing.B) {
	d, err := Load(onnxrt.New(""), bundleDir, infer.LoadOptions{Threads: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	img := gocv.IMRead(filepath.Join("testdata", "dog.jpg"), gocv.IMReadColor)
	defer img.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.preprocess(img); err != nil {
			b.Fatal(err)
		}
	}
}

// A frame far thinner than the input's aspect ratio letterboxes to a single column
// instead of asking OpenCV for an empty resize (which aborts the process).
func TestPreprocessThinFrame(t *testing.T) {
	d := newPreprocessor(t, infer.InputSpec{Width: 32, Height: 32, Layout: "NCHW", Color: "BGR", Resize: "letterbox", Align: "top-left",
		Mean: []float32{0, 0, 0}, Scale: []float32{1, 1, 1}})
	thin := gocv.NewMatWithSize(1000, 1, gocv.MatTypeCV8UC3)
	defer thin.Close()
	thin.SetTo(gocv.NewScalar(200, 200, 200, 0))
	g, err := d.preprocess(thin)
	if err != nil {
		t.Fatal(err)
	}
	if d.resized.Cols() != 1 || d.resized.Rows() != 32 || g.ScaleY != 0.032 {
		t.Errorf("resized to %dx%d with %+v, want 1x32 at scale 0.032", d.resized.Cols(), d.resized.Rows(), g)
	}
	if d.in[0] != 200 || d.in[1] != 114 {
		t.Errorf("input row 0 starts %v, %v; want the pixel 200 then padding 114", d.in[0], d.in[1])
	}
}
