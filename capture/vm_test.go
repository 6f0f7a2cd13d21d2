//go:build vmtest

// Hardware-in-the-loop tests: run by scripts/vmtest inside a QEMU VM that has loaded
// the kernel's vivid virtual camera (one video capture node, /dev/video0, a webcam
// input). Built only with -tags vmtest; without the device they fail.

package capture

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const vividDevice = "/dev/video0"

// v4l2Parm reads the device's frame interval (VIDIOC_G_PARM) through a second handle,
// which V4L2 allows while another one streams: the rate the driver actually runs at.
func v4l2Parm(t *testing.T) (num, den uint32) {
	t.Helper()
	f, err := os.Open(vividDevice)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// struct v4l2_streamparm: u32 type, then union { v4l2_captureparm { u32 capability,
	// u32 capturemode, v4l2_fract timeperframe {u32 numerator, u32 denominator}, ... } }
	// padded to 200 bytes.
	var parm [204]byte
	parm[0] = 1 // V4L2_BUF_TYPE_VIDEO_CAPTURE
	const vidiocGParm = 0xc0cc5615
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), vidiocGParm, uintptr(unsafe.Pointer(&parm[0]))); errno != 0 {
		t.Fatalf("VIDIOC_G_PARM on %s: %v", vividDevice, errno)
	}
	le := func(b []byte) uint32 { return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24 }
	return le(parm[12:16]), le(parm[16:20])
}

// needVivid fails the test when vivid's capture node is missing: under the vmtest tag the
// device is the point, so its absence is a failure, not a skip.
func needVivid(t *testing.T) {
	t.Helper()
	if st, err := os.Stat(vividDevice); err != nil || st.Mode()&os.ModeCharDevice == 0 {
		t.Fatalf("%s must be vivid's capture node (scripts/vmtest loads vivid): %v", vividDevice, err)
	}
}

// The v4l2 source opens vivid at the configured size and rate: every frame it reads has
// that size, the driver runs at that rate, and a Camera over it numbers frames 1, 2, 3...
func TestVMV4L2Source(t *testing.T) {
	needVivid(t)
	for _, want := range []struct {
		w, h int
		fps  float64
	}{{320, 180, 15}, {640, 360, 10}} {
		t.Run(fmt.Sprintf("%dx%d@%v", want.w, want.h, want.fps), func(t *testing.T) {
			spec := Spec{Kind: "v4l2", Target: vividDevice, Width: want.w, Height: want.h, FPS: want.fps, PixelFormat: "YUYV"}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			src, err := Open(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close() // also after a failure: the next test needs the device
			for i := range 20 {
				m, err := src.Read(ctx)
				if err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				if m.Cols() != want.w || m.Rows() != want.h || m.Channels() != 3 {
					t.Errorf("frame %d is %dx%d with %d channels", i, m.Cols(), m.Rows(), m.Channels())
				}
				m.Close()
			}
			if num, den := v4l2Parm(t); num == 0 || float64(den)/float64(num) != want.fps {
				t.Errorf("asked for %v fps, the driver runs at %d/%d s per frame", want.fps, num, den)
			}
			if err := src.Close(); err != nil {
				t.Error(err)
			}
		})
	}
}

// A Camera over the v4l2 source streams vivid: frames of the configured size, numbered
// with rising sequence numbers, and the status says streaming.
func TestVMV4L2Camera(t *testing.T) {
	needVivid(t)
	spec := Spec{Kind: "v4l2", Target: vividDevice, Width: 640, Height: 360, FPS: 15}
	cam := NewCamera(CameraOptions{
		Name: "vivid", StallTimeout: 10 * time.Second, BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		Open: func(ctx context.Context) (Source, error) { return Open(ctx, spec) },
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error)
	go func() { done <- cam.Run(ctx) }()
	var last uint64
	for i := range 10 {
		f, err := cam.Slot().Take(ctx)
		if err != nil {
			t.Fatalf("frame %d: %v (status %+v)", i, err, cam.Status())
		}
		if f.Camera != "vivid" || f.Mat.Cols() != 640 || f.Mat.Rows() != 360 || f.Seq <= last {
			t.Errorf("frame %d: camera %q, %dx%d, seq %d after %d", i, f.Camera, f.Mat.Cols(), f.Mat.Rows(), f.Seq, last)
		}
		last = f.Seq
		f.Close()
	}
	if st := cam.Status(); st.State != StateStreaming || st.Frames < 10 || st.LastError != "" || st.Reconnects != 0 {
		t.Errorf("status %+v", st)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run returned %v on shutdown", err)
	}
}
