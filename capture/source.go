package capture

import (
	"cmp"
	"context"
	"fmt"
	"image"
	"image/color"
	"io"
	"os"
	"time"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/capture/camurl"
)

// Source is one open stream. Read blocks until the next image and returns it in a new
// Mat that the caller owns. Read and Close are called from one goroutine.
type Source interface {
	Read(ctx context.Context) (gocv.Mat, error)
	Close() error
}

// Spec says which source to open.
type Spec struct {
	Kind   string // file | pattern | rtsp | v4l2
	Target string // file path, pattern name, stream URL, device path
	// Loop replays a file from the start at its end (the default for file cameras).
	Loop bool
	// Fast reads a file as fast as it decodes instead of at its own frame rate.
	Fast bool

	// Transport is how an rtsp camera sends RTP: "tcp" (interleaved in the RTSP
	// connection; the default) or "udp".
	Transport string
	// Width, Height, FPS and PixelFormat (a FOURCC such as MJPG or YUYV) are what a
	// v4l2 camera is asked for; zero leaves the driver's choice. A pattern takes
	// Width, Height and FPS (zero: 640x480 at 10 fps).
	Width, Height int
	FPS           float64
	PixelFormat   string

	// OpenTimeout and ReadTimeout bound an rtsp camera that does not answer or
	// stops sending; zero means 10 s. See openRTSP for how they reach FFmpeg.
	OpenTimeout, ReadTimeout time.Duration
}

// SpecFor is the Spec for a camera url read by camurl.Parse, sent over transport (rtsp:
// "tcp" or "udp"), for a camera whose Camera reports it stalled after stall without a
// frame (CameraOptions.StallTimeout). An rtsp open or read that blocks for twice that
// fails, so the Camera reconnects instead of waiting on a dead stream for ever.
func SpecFor(u camurl.URL, transport string, stall time.Duration) Spec {
	return Spec{
		Kind: u.Kind, Target: u.Target, Loop: u.Loop, Fast: !u.Realtime,
		Transport: transport, OpenTimeout: 2 * stall, ReadTimeout: 2 * stall,
		Width: u.Width, Height: u.Height, FPS: u.FPS, PixelFormat: u.PixelFormat,
	}
}

// Open opens the source a Spec names.
func Open(ctx context.Context, s Spec) (Source, error) {
	switch s.Kind {
	case "file":
		return OpenFile(s.Target, s.Loop, !s.Fast)
	case "pattern":
		// Width, Height and FPS default to 640x480 at 10 fps.
		w, h, fps := cmp.Or(s.Width, 640), cmp.Or(s.Height, 480), cmp.Or(s.FPS, 10)
		if w < 16 || h < 16 {
			return nil, fmt.Errorf("pattern %dx%d: width and height must be at least 16 pixels", w, h)
		}
		return NewPattern(w, h, fps), nil
	case "rtsp":
		return openRTSP(ctx, s)
	case "v4l2":
		return openV4L2(s)
	}
	return nil, fmt.Errorf("unknown source kind %q", s.Kind)
}

// fileSource plays a video file, looping and paced at its frame rate if asked.
type fileSource struct {
	path     string
	loop     bool
	realtime bool
	vc       *gocv.VideoCapture
	interval time.Duration
	next     time.Time
}

// OpenFile opens a video file. With realtime it delivers frames at the file's frame
// rate, as a camera would; with loop it starts over at the end.
func OpenFile(path string, loop, realtime bool) (Source, error) {
	// OpenCV aborts the process on some unreadable inputs; a plain stat first turns
	// the common mistakes into errors.
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return nil, fmt.Errorf("%s is a directory", path)
	}
	f := &fileSource{path: path, loop: loop, realtime: realtime}
	if err := f.open(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *fileSource) open() error {
	vc, err := gocv.OpenVideoCaptureWithAPI(f.path, gocv.VideoCaptureFFmpeg)
	if err != nil {
		if vc != nil {
			vc.Close() // gocv returns the capture even when the open fails
		}
		return fmt.Errorf("open video %s: %w", f.path, err)
	}
	if !vc.IsOpened() {
		vc.Close()
		return fmt.Errorf("open video %s: not a video OpenCV can decode", f.path)
	}
	fps := vc.Get(gocv.VideoCaptureFPS)
	if fps <= 0 || fps > 1000 {
		fps = 25
	}
	f.vc, f.interval = vc, time.Duration(float64(time.Second)/fps)
	return nil
}

func (f *fileSource) Read(ctx context.Context) (gocv.Mat, error) {
	if err := ctx.Err(); err != nil {
		return gocv.Mat{}, err
	}
	if f.vc == nil {
		return gocv.Mat{}, fmt.Errorf("read video %s: not open", f.path)
	}
	if f.realtime {
		now := time.Now()
		if f.next.IsZero() || now.Sub(f.next) > time.Second {
			f.next = now // start, or resynchronise after a long pause
		}
		if err := sleepCtx(ctx, f.next.Sub(now)); err != nil {
			return gocv.Mat{}, err
		}
		f.next = f.next.Add(f.interval)
	}
	m := gocv.NewMat()
	for attempt := 0; ; attempt++ {
		if f.vc.Read(&m) && !m.Empty() {
			return m, nil
		}
		if !f.loop || attempt > 0 {
			m.Close()
			if attempt > 0 {
				return gocv.Mat{}, fmt.Errorf("read video %s: no frame after restarting it", f.path)
			}
			return gocv.Mat{}, io.EOF
		}
		// End of file: start over. Reopening is more reliable across containers
		// than seeking back to frame 0.
		f.vc.Close()
		if err := f.open(); err != nil {
			m.Close()
			f.vc = nil
			return gocv.Mat{}, err
		}
	}
}

func (f *fileSource) Close() error {
	if f.vc == nil {
		return nil
	}
	err := f.vc.Close()
	f.vc = nil
	return err
}

// videoSource is a live stream read through OpenCV (RTSP over FFmpeg, V4L2 devices).
type videoSource struct {
	kind string // "rtsp" or "v4l2", for messages
	name string // the target as errors show it: an RTSP URL without its password
	vc   *gocv.VideoCapture
	// stall, if set, is FFmpeg's socket timeout: a Read blocked that long means the
	// stream stalled, whatever frame OpenCV hands back at the end of it.
	stall time.Duration
	// retryInterrupted: OpenCV's V4L2 backend gives up a read whose wait for the device
	// is interrupted by a signal (EINTR), and Go's runtime signals its threads to
	// preempt goroutines, so a read that fails at once is tried again (found by the VM
	// tests: 2 failed reads in 15 runs without this).
	retryInterrupted bool
}

// interruptedReads is how many reads failing at once are retried before a failure
// counts; interruptedWithin is how soon a failure must come to look like EINTR.
const (
	interruptedReads  = 3
	interruptedWithin = 50 * time.Millisecond
)

// openV4L2 opens a V4L2 capture device and asks for the Spec's size, rate and pixel
// format; the driver picks the nearest it supports.
func openV4L2(s Spec) (Source, error) {
	target := s.Target
	st, err := os.Stat(target)
	if err != nil {
		return nil, fmt.Errorf("open v4l2 %w", err)
	}
	if st.Mode()&os.ModeCharDevice == 0 {
		return nil, fmt.Errorf("open v4l2 %s: not a video device (not a character device)", target)
	}
	vc, err := gocv.OpenVideoCaptureWithAPI(target, gocv.VideoCaptureV4L2)
	if err != nil || !vc.IsOpened() {
		if vc != nil {
			vc.Close() // gocv returns the capture even when the open fails
		}
		// OpenCV does not say why; these are the causes seen in the field.
		return nil, fmt.Errorf("open v4l2 %s: not a video capture device, or it is busy, or the user lacks the video group", target)
	}
	if len(s.PixelFormat) == 4 {
		vc.Set(gocv.VideoCaptureFOURCC, vc.ToCodec(s.PixelFormat))
	}
	if s.Width > 0 && s.Height > 0 {
		vc.Set(gocv.VideoCaptureFrameWidth, float64(s.Width))
		vc.Set(gocv.VideoCaptureFrameHeight, float64(s.Height))
	}
	if s.FPS > 0 {
		vc.Set(gocv.VideoCaptureFPS, s.FPS)
	}
	return &videoSource{kind: "v4l2", name: target, vc: vc, retryInterrupted: true}, nil
}

func (v *videoSource) Read(ctx context.Context) (gocv.Mat, error) {
	if err := ctx.Err(); err != nil {
		return gocv.Mat{}, err
	}
	if v.vc == nil {
		return gocv.Mat{}, fmt.Errorf("read %s %s: source closed", v.kind, v.name)
	}
	m := gocv.NewMat()
	start := time.Now()
	ok := v.vc.Read(&m)
	for try := 0; !ok && v.retryInterrupted && try < interruptedReads && time.Since(start) < interruptedWithin; try++ {
		start = time.Now()
		ok = v.vc.Read(&m)
	}
	// When FFmpeg's socket timeout fires, OpenCV may still return frames its
	// decoder held back (one per decoding thread) before it reports failure; a
	// read that blocked for the timeout is a stall, not a frame.
	if v.stall > 0 && time.Since(start) >= v.stall*9/10 {
		m.Close()
		return gocv.Mat{}, fmt.Errorf("read %s %s: no frame for %v: the stream stalled (read timeout)",
			v.kind, v.name, time.Since(start).Round(100*time.Millisecond))
	}
	if !ok || m.Empty() {
		m.Close()
		return gocv.Mat{}, fmt.Errorf("read %s %s: the stream ended or returned no frame", v.kind, v.name)
	}
	return m, nil
}

// Close releases the capture; a second Close does nothing.
func (v *videoSource) Close() error {
	if v.vc == nil {
		return nil
	}
	err := v.vc.Close()
	v.vc = nil
	return err
}

// Pattern is a synthetic camera: a moving box and a frame counter on a gray
// background, at a fixed rate. It needs no hardware and no files.
type Pattern struct {
	w, h     int
	interval time.Duration
	next     time.Time
	n        int
}

// NewPattern returns a w x h pattern source at fps frames per second.
func NewPattern(w, h int, fps float64) *Pattern {
	return &Pattern{w: w, h: h, interval: time.Duration(float64(time.Second) / fps)}
}

// Read draws the next pattern frame.
func (p *Pattern) Read(ctx context.Context) (gocv.Mat, error) {
	now := time.Now()
	if p.next.IsZero() || now.Sub(p.next) > time.Second {
		p.next = now
	}
	if err := sleepCtx(ctx, p.next.Sub(now)); err != nil {
		return gocv.Mat{}, err
	}
	p.next = p.next.Add(p.interval)
	m := gocv.NewMatWithSizeFromScalar(gocv.NewScalar(96, 96, 96, 0), p.h, p.w, gocv.MatTypeCV8UC3)
	size := p.h / 4
	x := (p.n * 8) % (p.w - size)
	gocv.Rectangle(&m, image.Rect(x, p.h/2-size/2, x+size, p.h/2+size/2), color.RGBA{R: 255, G: 160, A: 255}, -1)
	gocv.PutText(&m, fmt.Sprintf("vigil pattern %06d %s", p.n, time.Now().Format("15:04:05.000")), image.Pt(10, 30),
		gocv.FontHersheySimplex, 0.7, color.RGBA{R: 255, G: 255, B: 255, A: 255}, 2)
	p.n++
	return m, nil
}

// Close does nothing.
func (p *Pattern) Close() error { return nil }

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
