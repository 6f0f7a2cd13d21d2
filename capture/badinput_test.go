package capture

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ffmpeg makes test inputs; scripts/install-deps installs it.
func ffmpeg(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ffmpeg", append([]string{"-v", "error", "-y"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg %v: %v\n%s (ffmpeg comes from scripts/install-deps)", args, err, out)
	}
}

// runCamera runs a camera on src until cond holds for its status, then stops it.
func runCamera(t *testing.T, open func(ctx context.Context) (Source, error), cond func(Status) bool) (Status, []int) {
	t.Helper()
	cam := NewCamera(CameraOptions{Name: "bad", StallTimeout: 5 * time.Second, BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond, Open: open, Lossless: true})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cam.Run(ctx) }()
	var widths []int
	deadline := time.Now().Add(30 * time.Second)
	for !cond(cam.Status()) {
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("timed out; status %+v", cam.Status())
		}
		tctx, tcancel := context.WithTimeout(ctx, 100*time.Millisecond)
		f, err := cam.Slot().Take(tctx)
		tcancel()
		if err == nil {
			widths = append(widths, f.Mat.Cols())
			f.Close()
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return cam.Status(), widths
}

// A file cut off mid-stream plays what it has, then starts over: no crash, no hang.
func TestTruncatedFile(t *testing.T) {
	data, err := os.ReadFile(clip)
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut.mp4")
	// faststart puts the index first, so the first third still decodes.
	os.WriteFile(cut, data[:len(data)/3], 0o644)
	st, widths := runCamera(t, func(context.Context) (Source, error) { return OpenFile(cut, true, false) },
		func(s Status) bool { return s.Frames > 100 || s.Reconnects > 3 })
	if len(widths) == 0 && st.LastError == "" {
		t.Errorf("a truncated file gave neither frames nor an error: %+v", st)
	}
	t.Logf("truncated file: %d frames, %d reconnects, last error %q", st.Frames, st.Reconnects, st.LastError)
}

// A stream whose resolution changes mid-way keeps delivering frames: OpenCV's FFmpeg
// backend scales the new size to the stream's first one, so every frame arrives, at
// one size, and the camera ends normally.
func TestResolutionChangeMidStream(t *testing.T) {
	dir := t.TempDir()
	small, large := filepath.Join(dir, "small.h264"), filepath.Join(dir, "large.h264")
	ffmpeg(t, "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10", "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "h264", small)
	ffmpeg(t, "-f", "lavfi", "-i", "testsrc=size=640x480:rate=10", "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "h264", large)
	a, _ := os.ReadFile(small)
	b, _ := os.ReadFile(large)
	both := filepath.Join(dir, "both.h264")
	os.WriteFile(both, append(a, b...), 0o644)
	seen := map[int]int{}
	runCamera(t, func(context.Context) (Source, error) { return OpenFile(both, false, false) },
		func(s Status) bool { return s.State == StateStopped })
	src, err := OpenFile(both, false, false)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for {
		m, err := src.Read(context.Background())
		if err != nil {
			break
		}
		seen[m.Cols()]++
		m.Close()
	}
	n := 0
	for _, c := range seen {
		n += c
	}
	if n != 20 {
		t.Errorf("%d frames decoded of the 10 + 10 written (widths %v)", n, seen)
	}
	t.Logf("frame widths: %v", seen)
}

// An "RTSP server" that answers with garbage: the open fails with an error, no crash.
func TestRTSPServerSendingGarbage(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
					c.Write(bytes.Repeat([]byte("\x00garbage\xff"), 100))
				}
			}()
		}
	}()
	url := "rtsp://user:hunter2@" + l.Addr().String() + "/stream"
	src, err := Open(context.Background(), Spec{Kind: "rtsp", Target: url, OpenTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second})
	if err == nil {
		src.Close()
		t.Fatal("a garbage-speaking server opened as a camera")
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("the password leaked into the error: %v", err)
	}
	t.Logf("error: %v", err)
}
