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
	d.setInput(engine.Input(0))
	for i := range engine.Outputs() {
		d.out = append(d.out, engine.Output(i))
	}
	return d, nil
}

// setInput prepares pre-processing into in, the engine's input buffer, for the
// manifest's input spec.
func (d *Detector) setInput(in []float32) {
	m := d.manifest
	d.in = in
	d.src = [3]int{0, 1, 2}
	if m.Input.Color == "RGB" {
		d.src = [3]int{2, 1, 0}
	}
	for c := range 3 {
		for v := range 256 {
			d.lut[c][v] = (float32(v) - m.Input.Mean[c]) * m.Input.Scale[c]
		}
	}
}

// Manifest is the bundle's model.yaml.
func (d *Detector) Manifest() *infer.Manifest { return d.manifest }

// Inputs and Outputs describe the engine's tensors (still after Close).
func (d *Detector) Inputs() []infer.TensorInfo  { return d.inputs }
func (d *Detector) Outputs() []infer.TensorInfo { return d.outputs }

// Detect runs the model on a frame (8-bit BGR, gray or BGRA) and appends its
// detections, best first, to dst. The frame is only read; the caller keeps ownership.
//
// The result aliases dst: a caller that passes the previous result back as dst[:0]
// reuses its memory, and Detect then makes no allocation, but must copy any
// detection it keeps beyond the next call. On an error dst is returned unchanged.
func (d *Detector) Detect(frame gocv.Mat, dst []infer.Detection) ([]infer.Detection, Timing, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.engine == nil {
		return dst, Timing{}, errClosed
	}
	var t Timing
	start := time.Now()
	g, err := d.preprocess(frame)
	if err != nil {
		return dst, t, err
	}
	t.Pre = time.Since(start)

	start = time.Now()
	if err := d.engine.Run(); err != nil {
		return dst, t, err
	}
	t.Infer = time.Since(start)

	start = time.Now()
	dst = d.decoder.Decode(d.out, g, dst)
	t.Post = time.Since(start)
	return dst, t, nil
}

var (
	errClosed     = errors.New("detector is closed")
	errEmptyFrame = errors.New("empty frame")
)

// preprocess fills d.in from frame and returns how input pixels map back to it.
func (d *Detector) preprocess(frame gocv.Mat) (infer.Geometry, error) {
	if frame.Empty() {
		return infer.Geometry{}, errEmptyFrame
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
		// At least a pixel: OpenCV aborts the process on a resize to nothing, which a
		// very thin frame would otherwise ask for.
		nw, nh = max(int(float64(fw)*r), 1), max(int(float64(fh)*r), 1)
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
// tensor and the letterbox padding around it. It goes a row at a time, so the pixel
// loop has no padding tests and few bounds checks: it runs over the whole input for
// every frame and must stay a small part of the inference time.
func (d *Detector) fill(pix []uint8, nw, nh, ox, oy int) {
	in := d.manifest.Input
	W, H := in.Width, in.Height
	pad := uint8(in.PadValue())
	var padV [3]float32
	for c := range 3 {
		padV[c] = d.lut[c][pad]
	}
	l0, l1, l2 := &d.lut[0], &d.lut[1], &d.lut[2]
	s0, s1, s2 := d.src[0], d.src[1], d.src[2]
	if d.nchw {
		plane := W * H
		p0, p1, p2 := d.in[:plane], d.in[plane:2*plane], d.in[2*plane:3*plane]
		fillPlanes := func(from, to int) {
			fillValue(p0[from:to], padV[0])
			fillValue(p1[from:to], padV[1])
			fillValue(p2[from:to], padV[2])
		}
		// The pixel loop reads the frame's channels in their order (B, G, R) and
		// writes each to the plane, through the LUT, of the model channel it feeds,
		// so it indexes the pixel with constants.
		var planes [3][]float32
		var luts [3]*[256]float32
		for c, j := range d.src {
			planes[j], luts[j] = d.in[c*plane:(c+1)*plane], &d.lut[c]
		}
		lb, lg, lr := luts[0], luts[1], luts[2]
		fillPlanes(0, oy*W) // rows above the image
		for y := range nh {
			o := (y+oy)*W + ox
			fillPlanes(o-ox, o) // left of the image
			row := pix[y*nw*3 : (y+1)*nw*3]
			rb := planes[0][o : o+nw]
			rg, rr := planes[1][o:o+len(rb)], planes[2][o:o+len(rb)]
			for x := range rb {
				p := row[3*x : 3*x+3 : 3*x+3]
				rb[x], rg[x], rr[x] = lb[p[0]], lg[p[1]], lr[p[2]]
			}
			fillPlanes(o+nw, o-ox+W) // right of it
		}
		fillPlanes((oy+nh)*W, plane) // below
		return
	}
	dst := d.in[:3*W*H]
	fillPixels := func(from, to int) {
		for i := 3 * from; i < 3*to; i += 3 {
			q := dst[i : i+3 : i+3]
			q[0], q[1], q[2] = padV[0], padV[1], padV[2]
		}
	}
	fillPixels(0, oy*W)
	for y := range nh {
		o := (y+oy)*W + ox
		fillPixels(o-ox, o)
		row := pix[y*nw*3 : (y+1)*nw*3]
		out := dst[3*o : 3*(o+nw)]
		for x := 0; x < len(out); x += 3 {
			p, q := row[x:x+3:x+3], out[x:x+3:x+3]
			q[0], q[1], q[2] = l0[p[s0]], l1[p[s1]], l2[p[s2]]
		}
		fillPixels(o+nw, o-ox+W)
	}
	fillPixels((oy+nh)*W, W*H)
}

// fillValue sets every element of s to v.
func fillValue(s []float32, v float32) {
	for i := range s {
		s[i] = v
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

// DetectFile runs the model on an image file (JPEG, PNG: what OpenCV reads), for
// labelled-image checks (infer/eval). The detections are appended to dst.
func (d *Detector) DetectFile(path string, dst []infer.Detection) ([]infer.Detection, error) {
	img := gocv.IMRead(path, gocv.IMReadColor)
	defer img.Close()
	if img.Empty() {
		return dst, fmt.Errorf("read image %s: not an image OpenCV can decode", path)
	}
	dets, _, err := d.Detect(img, dst)
	return dets, err
}

// FileDetector is DetectFile as the function labelled-image checks take (infer/eval),
// reusing one detections slice: what it returns is valid until its next call.
func (d *Detector) FileDetector() func(path string) ([]infer.Detection, error) {
	var dets []infer.Detection
	return func(path string) ([]infer.Detection, error) {
		var err error
		dets, err = d.DetectFile(path, dets[:0])
		return dets, err
	}
}
