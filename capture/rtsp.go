package capture

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/liberrors"
	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/internal/redact"
)

// DefaultRTSPTimeout is an rtsp camera's open and read timeout when its Spec leaves
// them zero.
const DefaultRTSPTimeout = 10 * time.Second

// ffmpegOptionsEnv is where OpenCV's FFmpeg backend finds the options it passes to
// avformat_open_input: "key;value|key;value". It reads the variable with getenv
// inside VideoCapture.open, once per open, and never again for that capture.
const ffmpegOptionsEnv = "OPENCV_FFMPEG_CAPTURE_OPTIONS"

// ffmpegEnvLock (a one-slot semaphore, so that waiting honours ctx) serialises RTSP
// opens. gocv v0.32.0 cannot pass per-capture open parameters, so each camera's
// transport and timeout travel in ffmpegOptionsEnv, which is process-wide: two
// cameras opening at once would otherwise read each other's options. The variable
// must hold one camera's options from Setenv until OpenCV has read them, and that is
// only known once the open returns, so the lock is held across that one cgo call, an
// exception to "no lock around cgo" (STYLE §6) because the environment is the shared
// memory it guards. An open is bounded by the socket timeout; reads never take it.
// File opens also go through FFmpeg but do not take it: at worst they see another
// camera's RTSP options, which the file demuxers ignore.
var ffmpegEnvLock = make(chan struct{}, 1)

// rtspConfig is a Spec's RTSP settings with defaults applied.
type rtspConfig struct {
	url       *url.URL
	transport string
	open      time.Duration
	read      time.Duration
}

// socketTimeout is FFmpeg's one RTSP socket timeout, fixed for the connection's
// life at open: it bounds the TCP connect, every RTSP reply, probing and every
// read. FFmpeg has no separate open timeout, so the smaller of the two is used.
func (c rtspConfig) socketTimeout() time.Duration { return min(c.open, c.read) }

// ffmpegOptions is this camera's entry for ffmpegOptionsEnv. Options the operator
// set in the variable (prev) are kept; ours come last, and FFmpeg lets a later key
// override an earlier one.
func (c rtspConfig) ffmpegOptions(prev string) string {
	opts := "rtsp_transport;" + c.transport + "|timeout;" + strconv.FormatInt(c.socketTimeout().Microseconds(), 10)
	if prev = strings.Trim(prev, "|"); prev != "" {
		opts = prev + "|" + opts
	}
	return opts
}

// parseRTSPSpec checks an rtsp Spec. Its errors never contain the URL's password.
func parseRTSPSpec(s Spec) (rtspConfig, error) {
	u, err := url.Parse(s.Target)
	if err != nil {
		// url.Error repeats the whole URL, password included; keep only the reason.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return rtspConfig{}, fmt.Errorf("rtsp camera URL does not parse: %v", err)
	}
	if u.Scheme != "rtsp" && u.Scheme != "rtsps" || u.Host == "" {
		return rtspConfig{}, fmt.Errorf("rtsp camera URL %s: want rtsp://[user:password@]host[:port]/path", redact.URL(u.String()))
	}
	c := rtspConfig{url: u, transport: strings.ToLower(s.Transport), open: s.OpenTimeout, read: s.ReadTimeout}
	switch c.transport {
	case "":
		c.transport = "tcp"
	case "tcp", "udp":
	default:
		return rtspConfig{}, fmt.Errorf("rtsp camera %s: transport %q: want tcp or udp", redact.URL(u.String()), s.Transport)
	}
	if c.open < 0 || c.read < 0 {
		return rtspConfig{}, fmt.Errorf("rtsp camera %s: negative timeout (open %v, read %v)", redact.URL(u.String()), c.open, c.read)
	}
	if c.open == 0 {
		c.open = DefaultRTSPTimeout
	}
	if c.read == 0 {
		c.read = DefaultRTSPTimeout
	}
	if c.socketTimeout() < time.Millisecond {
		return rtspConfig{}, fmt.Errorf("rtsp camera %s: timeouts under 1ms (open %v, read %v)", redact.URL(u.String()), c.open, c.read)
	}
	return c, nil
}

// openRTSP opens an RTSP stream with OpenCV's FFmpeg backend. OpenCV says only
// whether the open worked, so on failure a DESCRIBE with gortsplib finds out why
// (refused, 401, 404, ...) for the error.
func openRTSP(ctx context.Context, s Spec) (Source, error) {
	c, err := parseRTSPSpec(s)
	if err != nil {
		return nil, err
	}
	name := redact.URL(c.url.String())
	start := time.Now()
	vc, err := openFFmpegWithOptions(ctx, s.Target, c.ffmpegOptions)
	if err != nil {
		return nil, fmt.Errorf("open rtsp %s: %w", name, err)
	}
	if vc == nil {
		return nil, fmt.Errorf("open rtsp %s: %s", name, diagnoseRTSP(ctx, c))
	}
	// FFmpeg "opens" a stream whose server answered but sent nothing once its socket
	// timeout ends its probing: no size, no frames.
	if vc.Get(gocv.VideoCaptureFrameWidth) <= 0 || vc.Get(gocv.VideoCaptureFrameHeight) <= 0 {
		vc.Close()
		return nil, fmt.Errorf("open rtsp %s: the camera answered but sent no video within %v (open timeout)",
			name, time.Since(start).Round(100*time.Millisecond))
	}
	return &videoSource{kind: "rtsp", name: name, vc: vc, stall: c.socketTimeout()}, nil
}

// openFFmpegWithOptions opens target with OpenCV's FFmpeg backend while
// ffmpegOptionsEnv holds options(previous value), then restores the variable. It
// returns nil and no error if OpenCV could not open the target; gocv's own error
// is dropped because it repeats the URL with its password.
func openFFmpegWithOptions(ctx context.Context, target string, options func(prev string) string) (*gocv.VideoCapture, error) {
	select {
	case ffmpegEnvLock <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-ffmpegEnvLock }()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	prev, had := os.LookupEnv(ffmpegOptionsEnv)
	if err := os.Setenv(ffmpegOptionsEnv, options(prev)); err != nil {
		return nil, fmt.Errorf("set %s: %w", ffmpegOptionsEnv, err)
	}
	defer func() {
		if had {
			os.Setenv(ffmpegOptionsEnv, prev)
		} else {
			os.Unsetenv(ffmpegOptionsEnv)
		}
	}()
	vc, err := gocv.OpenVideoCaptureWithAPI(target, gocv.VideoCaptureFFmpeg)
	if err != nil || !vc.IsOpened() {
		if vc != nil {
			vc.Close()
		}
		return nil, nil
	}
	return vc, nil
}

// diagnoseRTSP asks the server for the stream with a DESCRIBE and says, in words
// for the person configuring the camera, why the open failed. It never repeats the
// password.
func diagnoseRTSP(ctx context.Context, c rtspConfig) string {
	timeout := c.socketTimeout()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	u, err := base.ParseURL(c.url.String())
	if err != nil {
		return "OpenCV could not open the stream, and the URL is not one an RTSP client accepts"
	}
	var d net.Dialer
	client := gortsplib.Client{
		ReadTimeout:  timeout,
		WriteTimeout: timeout,
		DialContext: func(_ context.Context, network, address string) (net.Conn, error) {
			return d.DialContext(ctx, network, address)
		},
	}
	if err := client.Start(u.Scheme, u.Host); err != nil {
		return fmt.Sprintf("OpenCV could not open the stream (%s)", redact.Error(err, c.url))
	}
	defer client.Close()
	_, _, err = client.Describe(u)
	var bad liberrors.ErrClientBadStatusCode
	switch {
	case err == nil:
		return "the camera offers the stream, but OpenCV/FFmpeg could not open it (no video it can decode?)"
	case errors.As(err, &bad) && bad.Code == base.StatusUnauthorized && c.url.User == nil:
		return "the camera requires a user name and password (401 Unauthorized): put user:password@ in the URL"
	case errors.As(err, &bad) && bad.Code == base.StatusUnauthorized:
		return fmt.Sprintf("the camera rejected user %q or its password (401 Unauthorized)", c.url.User.Username())
	case errors.As(err, &bad) && bad.Code == base.StatusNotFound:
		return fmt.Sprintf("the camera has no stream at path %q (404 Not Found): check the URL's path", c.url.Path)
	case errors.As(err, &bad):
		return fmt.Sprintf("the camera answered %d %s", bad.Code, bad.Message)
	}
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("connection refused: nothing listens at %s", c.url.Host)
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer from %s within %v (open timeout)", c.url.Host, timeout)
	}
	return fmt.Sprintf("cannot reach the camera: %s", redact.Error(err, c.url))
}
