package rtsptest

import (
	"errors"
	"testing"

	"github.com/bluenviron/gortsplib/v4"
	"github.com/bluenviron/gortsplib/v4/pkg/base"
	"github.com/bluenviron/gortsplib/v4/pkg/liberrors"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// describe sends one DESCRIBE with a pure-Go client and returns the status code,
// 0 for a transport error.
func describe(t *testing.T, rawURL string) (base.StatusCode, error) {
	t.Helper()
	u, err := base.ParseURL(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	c := gortsplib.Client{}
	if err := c.Start(u.Scheme, u.Host); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, res, err := c.Describe(u)
	var bad liberrors.ErrClientBadStatusCode
	switch {
	case err == nil:
		return res.StatusCode, nil
	case errors.As(err, &bad):
		return bad.Code, nil
	}
	return 0, err
}

func TestServerAnswersAndRestarts(t *testing.T) {
	s := Start(t, Options{User: "u", Password: "p", FPS: 10, Seconds: 2})
	if w, h := s.FrameSize(); w != 320 || h != 180 {
		t.Errorf("frame size %dx%d", w, h)
	}
	if s.Frames() != 20 {
		t.Errorf("%d frames in 2 s at 10 fps", s.Frames())
	}
	if code, err := describe(t, s.URL("stream")); code != base.StatusOK {
		t.Errorf("DESCRIBE with credentials: %v %v", code, err)
	}
	if code, err := describe(t, "rtsp://u:wrong@"+s.Addr()+"/stream"); code != base.StatusUnauthorized {
		t.Errorf("DESCRIBE with a wrong password: %v %v", code, err)
	}
	if code, err := describe(t, s.URL("other")); code != base.StatusNotFound {
		t.Errorf("DESCRIBE of another path: %v %v", code, err)
	}
	s.Pause()
	s.Resume()
	s.Stop()
	if _, err := describe(t, s.URL("stream")); err == nil {
		t.Error("DESCRIBE after Stop got an answer")
	}
	s.Stop() // harmless
	s.Restart()
	if code, err := describe(t, s.URL("stream")); code != base.StatusOK {
		t.Errorf("DESCRIBE after Restart: %v %v", code, err)
	}
}
