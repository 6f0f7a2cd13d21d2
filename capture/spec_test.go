package capture

import (
	"testing"
	"time"

	"github.com/vigil-edge/vigil/capture/camurl"
)

func TestSpecFor(t *testing.T) {
	for raw, want := range map[string]Spec{
		"file:clip.mp4?realtime=false": {Kind: "file", Target: "clip.mp4", Loop: true, Fast: true, Transport: "tcp", OpenTimeout: 20 * time.Second, ReadTimeout: 20 * time.Second},
		"v4l2:///dev/video2?width=1280&height=720&fps=15&format=MJPG": {
			Kind: "v4l2", Target: "/dev/video2", Loop: true, Transport: "tcp", OpenTimeout: 20 * time.Second, ReadTimeout: 20 * time.Second,
			Width: 1280, Height: 720, FPS: 15, PixelFormat: "MJPG",
		},
	} {
		u, err := camurl.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := SpecFor(u, "tcp", 10*time.Second); got != want {
			t.Errorf("SpecFor(%q) = %+v; want %+v", raw, got, want)
		}
	}
}
