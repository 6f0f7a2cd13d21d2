package capture

import (
	"context"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/capture/rtsptest"
	"github.com/vigil-edge/vigil/internal/testkit"
	"gocv.io/x/gocv"
)

// readFrames reads n frames from src and checks their size.
func readFrames(t *testing.T, src Source, n, w, h int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range n {
		m, err := src.Read(ctx)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		cols, rows, typ := m.Cols(), m.Rows(), m.Type()
		m.Close()
		if cols != w || rows != h || typ != gocv.MatTypeCV8UC3 {
			t.Fatalf("frame %d: %dx%d type %v, want %dx%d 8UC3", i, cols, rows, typ, w, h)
		}
	}
}

// TestRTSPSourceTransports opens the stream over tcp and udp at the same time: the
// server must see one of each, so each open read its own options from the
// process-wide environment variable, and the operator's value of it is back after.
func TestRTSPSourceTransports(t *testing.T) {
	srv := rtsptest.Start(t, rtsptest.Options{})
	w, h := srv.FrameSize()
	const operator = "analyzeduration;5000000" // an operator's own FFmpeg option, kept
	t.Setenv(ffmpegOptionsEnv, operator)
	var wg sync.WaitGroup
	for _, tr := range []string{"tcp", "udp"} {
		wg.Go(func() {
			src, err := Open(context.Background(), Spec{Kind: "rtsp", Target: srv.URL("stream"), Transport: tr})
			if err != nil {
				t.Errorf("%s: %v", tr, err)
				return
			}
			defer src.Close()
			t.Run(tr, func(t *testing.T) { readFrames(t, src, 10, w, h) })
		})
	}
	wg.Wait()
	got := srv.Transports()
	slices.Sort(got)
	if !slices.Equal(got, []string{"tcp", "udp"}) {
		t.Errorf("server saw transports %v, want one tcp and one udp", got)
	}
	if v := os.Getenv(ffmpegOptionsEnv); v != operator {
		t.Errorf("%s = %q after the opens, want %q restored", ffmpegOptionsEnv, v, operator)
	}
}

func TestRTSPFFmpegOptions(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		prev string
		want string
	}{
		{Spec{}, "", "rtsp_transport;tcp|timeout;10000000"},
		{Spec{Transport: "UDP", OpenTimeout: 3 * time.Second}, "", "rtsp_transport;udp|timeout;3000000"},
		{Spec{Transport: "tcp", ReadTimeout: 1500 * time.Millisecond}, "probesize;32768|", "probesize;32768|rtsp_transport;tcp|timeout;1500000"},
	} {
		tc.spec.Kind, tc.spec.Target = "rtsp", "rtsp://cam.local/live"
		c, err := parseRTSPSpec(tc.spec)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.ffmpegOptions(tc.prev); got != tc.want {
			t.Errorf("%+v with %q: %q, want %q", tc.spec, tc.prev, got, tc.want)
		}
	}
}

// TestRTSPCameraReconnects kills the server under a streaming camera and brings it
// back on the same port.
func TestRTSPCameraReconnects(t *testing.T) {
	srv := rtsptest.Start(t, rtsptest.Options{})
	spec := Spec{Kind: "rtsp", Target: srv.URL("stream"), ReadTimeout: 3 * time.Second}
	cam, _ := runRTSPCamera(t, "rtsp", spec, 2*time.Second, 200*time.Millisecond)

	testkit.WaitFor(t, 10*time.Second, "streaming", func() bool { st := cam.Status(); return st.State == StateStreaming && st.Frames >= 5 })
	srv.Stop()
	testkit.WaitFor(t, 10*time.Second, "backoff after the server died", func() bool {
		st := cam.Status()
		return st.State == StateBackoff && st.LastError != "" && st.Reconnects > 0
	})
	st := cam.Status()
	t.Logf("server stopped: %s", st.LastError)
	if !strings.Contains(st.LastError, srv.Addr()) {
		t.Errorf("last_error %q does not name the camera", st.LastError)
	}
	frames := st.Frames
	srv.Restart()
	testkit.WaitFor(t, 10*time.Second, "streaming after restart", func() bool {
		st := cam.Status()
		return st.State == StateStreaming && st.Frames >= frames+5
	})
	if st := cam.Status(); st.Reconnects == 0 || st.LastError != "" {
		t.Errorf("after restart: %+v", st)
	}
}

// TestRTSPStallTimesOut pauses the server: the camera reports stalled, the read
// timeout ends the read with an error naming it, and after Resume it streams again.
func TestRTSPStallTimesOut(t *testing.T) {
	srv := rtsptest.Start(t, rtsptest.Options{})
	spec := Spec{Kind: "rtsp", Target: srv.URL("stream"), ReadTimeout: time.Second}
	var errs []string
	cam, _ := runRTSPCamera(t, "stall", spec, 300*time.Millisecond, 100*time.Millisecond)

	testkit.WaitFor(t, 10*time.Second, "streaming", func() bool { st := cam.Status(); return st.State == StateStreaming && st.Frames >= 5 })
	srv.Pause()
	testkit.WaitFor(t, 10*time.Second, "stalled", func() bool { return cam.Status().State == StateStalled })
	testkit.WaitFor(t, 10*time.Second, "the read timeout", func() bool {
		st := cam.Status()
		if st.LastError != "" {
			errs = append(errs, st.LastError)
		}
		return strings.Contains(st.LastError, "read timeout")
	})
	frames := cam.Status().Frames
	srv.Resume()
	testkit.WaitFor(t, 10*time.Second, "streaming after resume", func() bool {
		st := cam.Status()
		return st.State == StateStreaming && st.Frames >= frames+5
	})
	t.Logf("errors while paused: %q", slices.Compact(errs))
}

// TestRTSPOpenErrors checks that each way to get a camera wrong says what is wrong
// and never shows the password.
func TestRTSPOpenErrors(t *testing.T) {
	const user, password, wrong = "vigil", "s3cret-Pass", "wr0ng-Pass"
	srv := rtsptest.Start(t, rtsptest.Options{User: user, Password: password})
	w, h := srv.FrameSize()

	// The right credentials work.
	src, err := Open(context.Background(), Spec{Kind: "rtsp", Target: srv.URL("stream")})
	if err != nil {
		t.Fatalf("with the right credentials: %v", err)
	}
	readFrames(t, src, 3, w, h)
	src.Close()

	withUser := func(path string, ui *url.Userinfo) string {
		u, err := url.Parse(srv.URL(path))
		if err != nil {
			t.Fatal(err)
		}
		u.User = ui
		return u.String()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().String()
	ln.Close()

	for _, tc := range []struct {
		name string
		spec Spec
		want []string
	}{
		{"wrong password", Spec{Target: withUser("stream", url.UserPassword(user, wrong))},
			[]string{"401", `rejected user "vigil"`, "xxxxx"}},
		{"no credentials", Spec{Target: withUser("stream", nil)},
			[]string{"401", "requires a user name and password"}},
		{"wrong path", Spec{Target: srv.URL("nope")},
			[]string{"404", `"/nope"`, "xxxxx"}},
		{"nothing listening", Spec{Target: "rtsp://" + user + ":" + password + "@" + closedPort + "/stream"},
			[]string{"connection refused", closedPort}},
		{"bad transport", Spec{Target: srv.URL("stream"), Transport: "sctp"},
			[]string{`transport "sctp"`, "tcp or udp"}},
		{"not rtsp", Spec{Target: "http://" + user + ":" + password + "@" + srv.Addr() + "/stream"},
			[]string{"want rtsp://"}},
		{"bad URL", Spec{Target: "rtsp://" + user + ":" + password + "@host:port/x"},
			[]string{"does not parse", "invalid port"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.Kind = "rtsp"
			start := time.Now()
			src, err := Open(context.Background(), tc.spec)
			if err == nil {
				src.Close()
				t.Fatal("opened")
			}
			msg := err.Error()
			t.Logf("%v: %s", time.Since(start).Round(time.Millisecond), msg)
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			for _, secret := range []string{password, wrong} {
				if strings.Contains(msg, secret) {
					t.Errorf("error %q shows a password", msg)
				}
			}
		})
	}
}

// TestSourceSuite runs the same checks on every kind of source.
func TestSourceSuite(t *testing.T) {
	for _, tc := range []struct {
		kind string
		spec func(t *testing.T) Spec
		w, h int
	}{
		{"file", func(*testing.T) Spec { return Spec{Kind: "file", Target: clip, Loop: true} }, 768, 432},
		{"pattern", func(*testing.T) Spec { return Spec{Kind: "pattern"} }, 640, 480},
		{"rtsp", func(t *testing.T) Spec {
			return Spec{Kind: "rtsp", Target: rtsptest.Start(t, rtsptest.Options{Width: 320}).URL("stream")}
		}, 320, 180},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			src, err := Open(context.Background(), tc.spec(t))
			if err != nil {
				t.Fatal(err)
			}
			readFrames(t, src, 5, tc.w, tc.h)

			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if m, err := src.Read(ctx); err == nil {
				m.Close()
				t.Error("Read with a cancelled context returned a frame")
			}

			if err := src.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := src.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
	}
}

// Frames a camera hands on carry rising sequence numbers and capture times.
func TestRTSPFramesRiseInSeqAndTime(t *testing.T) {
	srv := rtsptest.Start(t, rtsptest.Options{})
	spec := Spec{Kind: "rtsp", Target: srv.URL("stream")}
	cam, ctx := runRTSPCamera(t, "door", spec, 5*time.Second, 100*time.Millisecond)
	var prev Frame
	for i := range 20 {
		f, err := cam.Slot().Take(ctx)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if f.Camera != "door" || (i > 0 && (f.Seq <= prev.Seq || !f.Time.After(prev.Time))) {
			t.Fatalf("frame %d: seq %d at %v after seq %d at %v", i, f.Seq, f.Time, prev.Seq, prev.Time)
		}
		prev = f
	}
}

// runRTSPCamera runs a supervised camera on spec until the test ends and returns it
// with the context it runs under.
func runRTSPCamera(t *testing.T, name string, spec Spec, stall, backoffMax time.Duration) (*Camera, context.Context) {
	t.Helper()
	cam := NewCamera(CameraOptions{
		Name: name, StallTimeout: stall, BackoffMin: 20 * time.Millisecond, BackoffMax: backoffMax,
		Open: func(ctx context.Context) (Source, error) { return Open(ctx, spec) },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cam.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return cam, ctx
}
