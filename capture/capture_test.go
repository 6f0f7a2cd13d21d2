package capture

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var clip = filepath.Join("..", "assets", "footage", "people.mp4")

func TestFileSourceReadsAndLoops(t *testing.T) {
	src, err := OpenFile(clip, true, false)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	const clipFrames = 261
	for i := range clipFrames + 10 {
		m, err := src.Read(context.Background())
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if m.Cols() != 768 || m.Rows() != 432 || m.Type() != gocv.MatTypeCV8UC3 {
			t.Fatalf("frame %d: %dx%d type %v", i, m.Cols(), m.Rows(), m.Type())
		}
		m.Close()
	}
}

func TestFileSourcePlaysOnce(t *testing.T) {
	src, err := OpenFile(clip, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	n := 0
	for {
		m, err := src.Read(context.Background())
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		m.Close()
		n++
	}
	if n != 261 {
		t.Errorf("read %d frames, the clip has 261", n)
	}
}

func TestFileSourceErrors(t *testing.T) {
	if _, err := OpenFile("no/such/clip.mp4", true, true); err == nil {
		t.Error("missing file opened")
	}
	if _, err := OpenFile("testdata", true, true); err == nil {
		t.Error("directory opened")
	}
	if _, err := OpenFile("capture_test.go", true, true); err == nil {
		t.Error("a Go file opened as video")
	}
}

func TestSlotKeepsNewestAndCountsDrops(t *testing.T) {
	s := NewSlot()
	for i := range 5 {
		s.Put(Frame{Seq: uint64(i + 1), Mat: gocv.NewMatWithSize(4, 4, gocv.MatTypeCV8UC3)})
	}
	f, err := s.Take(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if f.Seq != 5 || s.Dropped() != 4 {
		t.Errorf("took seq %d with %d dropped, want 5 and 4", f.Seq, s.Dropped())
	}
	f.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := s.Take(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Take on an empty slot: %v", err)
	}

	got := make(chan uint64)
	go func() {
		f, err := s.Take(context.Background())
		if err != nil {
			got <- 0
			return
		}
		f.Close()
		got <- f.Seq
	}()
	s.Put(Frame{Seq: 9, Mat: gocv.NewMat()})
	if seq := <-got; seq != 9 {
		t.Errorf("waiting Take got %d", seq)
	}
	s.Put(Frame{Seq: 10, Mat: gocv.NewMat()})
	s.Close()
	if _, err := s.Take(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Take after Close: %v", err)
	}
	s.Put(Frame{Seq: 11, Mat: gocv.NewMat()}) // closed: the frame is closed, not kept
}

func TestCameraStreamsFile(t *testing.T) {
	cam := NewCamera(CameraOptions{
		Name: "clip", StallTimeout: 5 * time.Second, BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
		Open: func(ctx context.Context) (Source, error) { return OpenFile(clip, true, false) },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- cam.Run(ctx) }()
	for range 20 {
		f, err := cam.Slot().Take(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if f.Camera != "clip" || f.Time.IsZero() || f.Mat.Empty() {
			t.Errorf("frame %+v", f)
		}
		f.Close()
	}
	st := cam.Status()
	if st.State != StateStreaming || st.Frames < 20 || st.LastError != "" {
		t.Errorf("status %+v", st)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run returned %v on shutdown", err)
	}
	if st := cam.Status(); st.State != StateStopped {
		t.Errorf("after shutdown: %+v", st)
	}
}

func TestDeadCameraIsRetried(t *testing.T) {
	opens := 0
	cam := NewCamera(CameraOptions{
		Name: "dead", StallTimeout: time.Second, BackoffMin: time.Millisecond, BackoffMax: 4 * time.Millisecond,
		Open: func(ctx context.Context) (Source, error) {
			opens++
			return OpenFile("no/such/clip.mp4", true, true)
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- cam.Run(ctx) }()
	testkit.WaitFor(t, 10*time.Second, "several retries", func() bool { return cam.Status().Reconnects >= 5 })
	st := cam.Status()
	if !strings.Contains(st.LastError, "no such file") || (st.State != StateBackoff && st.State != StateConnecting) {
		t.Errorf("status %+v", st)
	}
	cancel()
	<-done
}

func TestPatternSource(t *testing.T) {
	p := NewPattern(320, 240, 1000)
	a, err := p.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, _ := p.Read(context.Background())
	defer b.Close()
	if a.Cols() != 320 || a.Rows() != 240 {
		t.Fatalf("size %dx%d", a.Cols(), a.Rows())
	}
	diff := gocv.NewMat()
	defer diff.Close()
	gocv.AbsDiff(a, b, &diff)
	gray := gocv.NewMat()
	defer gray.Close()
	gocv.CvtColor(diff, &gray, gocv.ColorBGRToGray)
	if gocv.CountNonZero(gray) == 0 {
		t.Error("consecutive pattern frames are identical")
	}
}

func TestSlotPutWaitLosesNothing(t *testing.T) {
	s := NewSlot()
	const n = 50
	go func() {
		for i := range n {
			if err := s.PutWait(context.Background(), Frame{Seq: uint64(i + 1), Mat: gocv.NewMat()}); err != nil {
				return
			}
		}
	}()
	for want := uint64(1); want <= n; want++ {
		f, err := s.Take(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if f.Seq != want {
			t.Fatalf("took seq %d, want %d", f.Seq, want)
		}
	}
	if d := s.Dropped(); d != 0 {
		t.Errorf("%d frames dropped", d)
	}
	s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.PutWait(ctx, Frame{Mat: gocv.NewMat()}); err == nil {
		t.Error("PutWait on a closed slot succeeded")
	}
}

func TestCameraStopsAtEndOfFilePlayedOnce(t *testing.T) {
	cam := NewCamera(CameraOptions{
		Name: "once", StallTimeout: time.Minute, BackoffMin: time.Millisecond, BackoffMax: time.Millisecond, Lossless: true,
		Open: func(ctx context.Context) (Source, error) { return OpenFile(clip, false, false) },
	})
	done := make(chan error, 1)
	go func() { done <- cam.Run(context.Background()) }()
	n := 0
	for {
		f, err := cam.Slot().Take(context.Background())
		if errors.Is(err, ErrClosed) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		n++
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := cam.Status()
	if n != 261 || st.Dropped != 0 || st.State != StateStopped || st.Reconnects != 0 || st.LastError != "end of file" {
		t.Errorf("took %d frames of 261; status %+v", n, st)
	}
}

// V4L2 devices get real-device tests in the VM harness; here, the open errors.
func TestV4L2OpenErrors(t *testing.T) {
	regular := filepath.Join(t.TempDir(), "video0")
	os.WriteFile(regular, []byte("not a device"), 0o644)
	for name, tc := range map[string]struct{ device, want string }{
		"missing device":       {"/dev/video99", "no such file"},
		"not a device":         {regular, "not a video device"},
		"not a capture device": {"/dev/null", "not a video capture device"},
	} {
		t.Run(name, func(t *testing.T) {
			src, err := Open(context.Background(), Spec{Kind: "v4l2", Target: tc.device, Width: 640, Height: 480})
			if err == nil {
				src.Close()
				t.Fatalf("%s opened", tc.device)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.device) {
				t.Errorf("error %q, want it to name %s and say %q", err, tc.device, tc.want)
			}
		})
	}
}

// A pattern Spec's size applies (the fleet load test runs a thousand tiny ones); a
// size too small to draw is an error.
func TestPatternSpecSize(t *testing.T) {
	src, err := Open(context.Background(), Spec{Kind: "pattern", Width: 64, Height: 48, FPS: 50})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	m, err := src.Read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Cols() != 64 || m.Rows() != 48 {
		t.Errorf("pattern 64x48 gave %dx%d", m.Cols(), m.Rows())
	}
	if _, err := Open(context.Background(), Spec{Kind: "pattern", Width: 8, Height: 8}); err == nil {
		t.Error("an 8x8 pattern was accepted")
	}
}
