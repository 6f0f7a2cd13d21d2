// Package detector wraps an infer.Engine with the pre-processing a model bundle asks
// for (resize or letterbox, colour order, layout, mean and scale, done with gocv) and
// the bundle's output decoder with NMS: a frame in, detections in frame pixels out.
package detector

import (
	"errors"
	"fmt"
	"image"
	"sync"
	"time"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/infer"
)

// Timing splits one Detect call into its stages.
type Timing struct {
	Pre, Infer, Post time.Duration
}

// Total is the whole call.
func (t Timing) Total() time.Duration { return t.Pre + t.Infer + t.Post }

// Detector runs one model on frames. It is safe for concurrent use; calls are
// serialised, because the engine and the buffers below are used by one call at a time.
type Detector struct {
	manifest *infer.Manifest
	inputs   []infer.TensorInfo
	outputs  []infer.TensorInfo
	decoder  infer.Decoder
	nchw     bool
	// lut maps a pixel value 0..255 to the model's input value, per model channel.
	lut [3][256]float32
	// src is the frame channel (BGR order) that feeds each model channel.
	src [3]int

	mu      sync.Mutex // guards the fields below
	engine  infer.Engine
	resized gocv.Mat    // scratch: the frame resized to the model's input
	color   gocv.Mat    // scratch: frames converted to 8-bit BGR
	in      []float32   // the engine's input buffer
	out     [][]float32 // the engine's output buffers
}

// Load reads the bundle in dir, loads its model with backend and builds a Detector.
// The engine is closed if the bundle does not fit the model.
func Load(backend infer.Backend, dir string, opts infer.LoadOptions) (*Detector, error) {
	m, err := infer.LoadManifest(dir)
	if err != nil {
		return nil, err
	}
	engine, err := backend.Load(m.Path(dir), opts)
	if err != nil {
		return nil, err
	}
	d, err := New(engine, m)
	if err != nil {
		engine.Close()
		return nil, fmt.Errorf("model bundle %s: %w", dir, err)
	}
	return d, nil
}

// New checks that the engine's tensors match the manifest and takes ownership of the
// engine: Close closes it.
func New(engine infer.Engine, m *infer.Manifest) (*Detector, error) {
	ins := engine.Inputs()
	if err := infer.CheckInput(m, ins); err != nil {
		return nil, err
	}
	nchw := m.Input.Layout == "NCHW"
	dec, err := infer.NewDecoder(m, engine.Outputs())
	if err != nil {
		return nil, err
	}
	d := &Detector{
		manifest: m, inputs: ins, outputs: engine.Outputs(), decoder: dec, nchw: nchw,
		engine: engine, resized: gocv.NewMat(), color: gocv.NewMat(),
	}
	d.src = [3]int{0, 1, 2}
	if m.Input.Color == "RGB" {
		d.src = [3]int{2, 1, 0}
	}
	for c := range 3 {
		for v := range 256 {
			d.lut[c][v] = (float32(v) - m.Input.Mean[c]) * m.Input.Scale[c]
		}
	}
	d.in = engine.Input(0)
	for i := range engine.Outputs() {
		d.out = append(d.out, engine.Output(i))
	}
	return d, nil
}

// Manifest is the bundle's model.yaml.
func (d *Detector) Manifest() *infer.Manifest { return d.manifest }

// Inputs and Outputs describe the engine's tensors (still after Close).
func (d *Detector) Inputs() []infer.TensorInfo  { return d.inputs }
func (d *Detector) Outputs() []infer.TensorInfo { return d.outputs }

// Detect runs the model on a frame (8-bit BGR, gray or BGRA). The frame is only read;
// the caller keeps ownership.
func (d *Detector) Detect(frame gocv.Mat) ([]infer.Detection, Timing, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.engine == nil {
		return nil, Timing{}, errors.New("detector is closed")
	}
	var t Timing
	start := time.Now()
	g, err := d.preprocess(frame)
	if err != nil {
		return nil, t, err
	}
	t.Pre = time.Since(start)

	start = time.Now()
	if err := d.engine.Run(); err != nil {
		return nil, t, err
	}
	t.Infer = time.Since(start)

	start = time.Now()
	dets := d.decoder.Decode(d.out, g)
	t.Post = time.Since(start)
	return dets, t, nil
}

// preprocess fills d.in from frame and returns how input pixels map back to it.
func (d *Detector) preprocess(frame gocv.Mat) (infer.Geometry, error) {
	if frame.Empty() {
		return infer.Geometry{}, errors.New("empty frame")
	}
	bgr := frame
	switch frame.Type() {
	case gocv.MatTypeCV8UC3:
	case gocv.MatTypeCV8UC1:
		gocv.CvtColor(frame, &d.color, gocv.ColorGrayToBGR)
		bgr = d.color
	case gocv.MatTypeCV8UC4:
		gocv.CvtColor(frame, &d.color, gocv.ColorBGRAToBGR)
		bgr = d.color
	default:
		return infer.Geometry{}, fmt.Errorf("frame type %v: want 8-bit BGR", frame.Type())
	}
	in := d.manifest.Input
	fw, fh := bgr.Cols(), bgr.Rows()
	g := infer.Geometry{FrameW: fw, FrameH: fh}
	nw, nh := in.Width, in.Height
	if in.Resize == "letterbox" {
		r := min(float64(in.Width)/float64(fw), float64(in.Height)/float64(fh))
		nw, nh = int(float64(fw)*r), int(float64(fh)*r)
		g.ScaleX, g.ScaleY = float32(r), float32(r)
		if in.Align == "center" {
			g.OffsetX, g.OffsetY = float32((in.Width-nw)/2), float32((in.Height-nh)/2)
		}
	} else {
		g.ScaleX, g.ScaleY = float32(in.Width)/float32(fw), float32(in.Height)/float32(fh)
	}
	gocv.Resize(bgr, &d.resized, image.Pt(nw, nh), 0, 0, gocv.InterpolationLinear)
	pix, err := d.resized.DataPtrUint8()
	if err != nil {
		return g, fmt.Errorf("read resized frame: %w", err)
	}
	d.fill(pix, nw, nh, int(g.OffsetX), int(g.OffsetY))
	return g, nil
}

// fill writes the resized image (nw x nh, BGR, continuous) at (ox, oy) into the input
// tensor and the letterbox padding around it.
func (d *Detector) fill(pix []uint8, nw, nh, ox, oy int) {
	in := d.manifest.Input
	W, H := in.Width, in.Height
	plane := W * H
	dst := d.in
	pad := uint8(in.PadValue())
	var padV [3]float32
	for c := range 3 {
		padV[c] = d.lut[c][pad]
	}
	for y := range H {
		sy := y - oy
		for x := range W {
			sx := x - ox
			i := y*W + x
			if sy < 0 || sy >= nh || sx < 0 || sx >= nw {
				if d.nchw {
					dst[i], dst[plane+i], dst[2*plane+i] = padV[0], padV[1], padV[2]
				} else {
					dst[3*i], dst[3*i+1], dst[3*i+2] = padV[0], padV[1], padV[2]
				}
				continue
			}
			p := pix[(sy*nw+sx)*3:]
			v0, v1, v2 := d.lut[0][p[d.src[0]]], d.lut[1][p[d.src[1]]], d.lut[2][p[d.src[2]]]
			if d.nchw {
				dst[i], dst[plane+i], dst[2*plane+i] = v0, v1, v2
			} else {
				dst[3*i], dst[3*i+1], dst[3*i+2] = v0, v1, v2
			}
		}
	}
}

// Close closes the engine and frees the scratch images. A second Close is harmless.
func (d *Detector) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.engine == nil {
		return nil
	}
	err := d.engine.Close()
	d.engine = nil
	d.resized.Close()
	d.color.Close()
	return err
}
