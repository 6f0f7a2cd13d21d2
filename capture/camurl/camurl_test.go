package camurl

import (
	"testing"
)

func TestParse(t *testing.T) {
	for raw, want := range map[string]URL{
		"file:///srv/clip.mp4":                    {Kind: "file", Target: "/srv/clip.mp4", Loop: true, Realtime: true},
		"file://var/clip.mp4":                     {Kind: "file", Target: "var/clip.mp4", Loop: true, Realtime: true},
		"file:clip.mp4?loop=false&realtime=false": {Kind: "file", Target: "clip.mp4"},
		"v4l2:///dev/video0":                      {Kind: "v4l2", Target: "/dev/video0", Loop: true, Realtime: true},
		"rtsp://u:p@10.0.0.5:554/s":               {Kind: "rtsp", Target: "rtsp://u:p@10.0.0.5:554/s"},
		"pattern://":                              {Kind: "pattern"},
		"pattern://?width=64&height=48&fps=2":     {Kind: "pattern", Width: 64, Height: 48, FPS: 2},
		"v4l2:///dev/video2?width=1280&height=720&fps=15&format=MJPG": {
			Kind: "v4l2", Target: "/dev/video2", Loop: true, Realtime: true, Width: 1280, Height: 720, FPS: 15, PixelFormat: "MJPG",
		},
	} {
		got, err := Parse(raw)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", raw, got, err, want)
		}
	}
	for _, raw := range []string{"file:///a.mp4?speed=2", "file:///a.mp4?loop=maybe", "rtsp:///nohost", "clip.mp4", "http://x/y",
		"v4l2:///dev/video0?width=-1", "v4l2:///dev/video0?format=MJPEG", "v4l2:///dev/video0?loop=false", "file:///a.mp4?width=3",
		"pattern://?fps=0", "pattern://?width=x", "pattern://?loop=false"} {
		if _, err := Parse(raw); err == nil {
			t.Errorf("Parse(%q) accepted", raw)
		}
	}
}
