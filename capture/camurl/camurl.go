package camurl

import (
	"fmt"
	"net/url"
	"strconv"

	"github.com/vigil-edge/vigil/internal/redact"
)

// URL is a camera's url split into its kind and target.
type URL struct {
	Kind   string // rtsp | file | v4l2 | pattern
	Target string // the stream URL (rtsp), the file or device path, or the pattern name
	// For files: Loop starts over at the end (default true); Realtime delivers frames
	// at the file's own rate (default true), or as fast as they decode.
	Loop, Realtime bool
	// For v4l2 devices: the size, rate and pixel format (FOURCC) to ask for.
	Width, Height int
	FPS           float64
	PixelFormat   string
}

// Parse reads rtsp://, rtsps://, file:///path.mp4 (or file:relative.mp4, with
// ?loop=false and ?realtime=false), v4l2:///dev/video0 and pattern:// URLs.
func Parse(raw string) (URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return URL{}, fmt.Errorf("not a URL: %w", err)
	}
	switch u.Scheme {
	case "rtsp", "rtsps":
		if u.Host == "" {
			return URL{}, fmt.Errorf("%s has no host", redact.URL(raw))
		}
		return URL{Kind: "rtsp", Target: raw}, nil
	case "file", "v4l2":
		p := u.Path
		if u.Opaque != "" {
			p = u.Opaque
		}
		if u.Host != "" && u.Host != "localhost" {
			// file://./clip.mp4 and file://clip.mp4 put the start of a relative path in
			// the host; take it back.
			p = u.Host + p
		}
		if p == "" {
			return URL{}, fmt.Errorf("%s has no path", raw)
		}
		c := URL{Kind: u.Scheme, Target: p, Loop: true, Realtime: true}
		for key, vals := range u.Query() {
			if err := c.setOption(key, vals[0]); err != nil {
				return URL{}, fmt.Errorf("%s: %w", raw, err)
			}
		}
		return c, nil
	case "pattern":
		c := URL{Kind: "pattern", Target: u.Host + u.Path}
		for key, vals := range u.Query() {
			if err := c.setOption(key, vals[0]); err != nil {
				return URL{}, fmt.Errorf("%s: %w", raw, err)
			}
		}
		return c, nil
	case "":
		return URL{}, fmt.Errorf("%q has no scheme; use rtsp://, rtsps://, file://, v4l2:// or pattern://", raw)
	}
	return URL{}, fmt.Errorf("scheme %q is not one of rtsp, rtsps, file, v4l2, pattern", u.Scheme)
}

// setOption applies one URL query option: loop and realtime for files; width,
// height, fps and format for v4l2 devices; width, height and fps for the pattern (a
// small, slow pattern lets one machine simulate many cameras).
func (c *URL) setOption(key, val string) error {
	switch {
	case c.Kind == "file" && (key == "loop" || key == "realtime"):
		b, err := strconv.ParseBool(val)
		if err != nil {
			return fmt.Errorf("%s=%q is not true or false", key, val)
		}
		if key == "loop" {
			c.Loop = b
		} else {
			c.Realtime = b
		}
	case (c.Kind == "v4l2" || c.Kind == "pattern") && (key == "width" || key == "height"):
		n, err := strconv.Atoi(val)
		if err != nil || n <= 0 {
			return fmt.Errorf("%s=%q is not a positive number of pixels", key, val)
		}
		if key == "width" {
			c.Width = n
		} else {
			c.Height = n
		}
	case (c.Kind == "v4l2" || c.Kind == "pattern") && key == "fps":
		f, err := strconv.ParseFloat(val, 64)
		if err != nil || f <= 0 {
			return fmt.Errorf("fps=%q is not a positive rate", val)
		}
		c.FPS = f
	case c.Kind == "v4l2" && key == "format":
		if len(val) != 4 {
			return fmt.Errorf("format=%q is not a four-character pixel format such as MJPG or YUYV", val)
		}
		c.PixelFormat = val
	default:
		return fmt.Errorf("unknown option %q (file URLs take loop and realtime; v4l2 URLs take width, height, fps and format; pattern URLs take width, height and fps)", key)
	}
	return nil
}
