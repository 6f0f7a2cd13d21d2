package stills

import (
	"fmt"
	"image"
	"image/color"
	"slices"
	"sync"
	"time"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/infer"
)

// Live keeps the newest frame of a camera as JPEG with its detections drawn. JPEG
// encoding costs a few milliseconds, so it is done only while someone is looking (a
// request in the last few seconds) and otherwise at most every few seconds.
type Live struct {
	mu        sync.Mutex // guards the fields below
	jpeg      []byte
	taken     time.Time
	wanted    time.Time
	encodedAt time.Time
}

const (
	snapshotWatchWindow = 5 * time.Second
	snapshotIdleEvery   = 3 * time.Second
)

// Update takes a camera's frame (drawing on it: the caller is about to drop it).
func (s *Live) Update(f capture.Frame, dets []infer.Detection) {
	s.mu.Lock()
	now := time.Now()
	due := now.Sub(s.wanted) < snapshotWatchWindow || now.Sub(s.encodedAt) >= snapshotIdleEvery
	if due {
		s.encodedAt = now
	}
	s.mu.Unlock()
	if !due {
		return
	}
	Draw(&f.Mat, dets)
	buf, err := gocv.IMEncodeWithParams(gocv.JPEGFileExt, f.Mat, []int{gocv.IMWriteJpegQuality, 80})
	if err != nil {
		return
	}
	b := slices.Clone(buf.GetBytes())
	buf.Close()
	if len(b) == 0 {
		return // OpenCV reports encoding failures only as an empty buffer
	}
	s.mu.Lock()
	s.jpeg, s.taken = b, f.Time
	s.mu.Unlock()
}

// Get returns the newest JPEG and marks the snapshot as watched.
func (s *Live) Get() ([]byte, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.wanted = time.Now()
	return s.jpeg, s.taken
}

var (
	boxColor  = color.RGBA{R: 255, G: 200, B: 0, A: 255}
	textColor = color.RGBA{A: 255}
)

// Draw draws boxes and labels onto the frame (which the caller owns and is
// about to drop, so drawing in place costs no copy).
func Draw(m *gocv.Mat, dets []infer.Detection) {
	for _, d := range dets {
		r := image.Rect(int(d.Box[0]), int(d.Box[1]), int(d.Box[2]), int(d.Box[3]))
		gocv.Rectangle(m, r, boxColor, 2)
		label := fmt.Sprintf("%s %.2f", d.Label, d.Score)
		size := gocv.GetTextSize(label, gocv.FontHersheySimplex, 0.5, 1)
		top := max(r.Min.Y-size.Y-6, 0)
		gocv.Rectangle(m, image.Rect(r.Min.X, top, r.Min.X+size.X+6, top+size.Y+6), boxColor, -1)
		gocv.PutText(m, label, image.Pt(r.Min.X+3, top+size.Y+2), gocv.FontHersheySimplex, 0.5, textColor, 1)
	}
}
