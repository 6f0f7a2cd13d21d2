package redact

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"user and password", "rtsp://admin:secret@cam.local:554/stream", "rtsp://admin:xxxxx@cam.local:554/stream"},
		{"broker", "ssl://vigil:hunter2@broker:8883", "ssl://vigil:xxxxx@broker:8883"},
		{"escaped password", "tcp://u:p%40ss%2Fw@host:1883", "tcp://u:xxxxx@host:1883"},
		{"empty password", "tcp://u:@host:1883", "tcp://u:xxxxx@host:1883"},
		{"user only", "tcp://vigil@host:1883", "tcp://vigil@host:1883"},
		{"no userinfo", "https://host/samples?x=1", "https://host/samples?x=1"},
		{"not a URL", "pattern://", "pattern://"},
		{"empty", "", ""},
		{"unparsable with password", "rtsp://admin:secret@host:port/x", "rtsp://admin:xxxxx@host:port/x"},
		{"unparsable, / in the password", "rtsp://admin:pa/ss@host/x", "rtsp://admin:xxxxx@host/x"},
		{"unparsable, @ in the path", "rtsp://host:port/a@b", "rtsp://host:xxxxx@b"},
		{"unparsable, no @", "rtsp://host:port/x", "rtsp://host:port/x"},
		{"unparsable, user only", "rtsp://admin@host:port/x", "rtsp://admin@host:port/x"},
		{"unparsable, no scheme", "%zz:secret@host", "%zz:secret@host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := URL(tc.in); got != tc.want {
				t.Errorf("URL(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestError(t *testing.T) {
	withPassword, _ := url.Parse("https://up:s3cr%2Ft@host/samples")
	userOnly, _ := url.Parse("https://up@host/samples")
	cause := errors.New("connection refused")
	for _, tc := range []struct {
		name string
		err  error
		u    *url.URL
		want string
	}{
		{"url.Error with the URL", &url.Error{Op: "Put", URL: "https://up:s3cr%2Ft@host/samples/a.jpg", Err: cause},
			withPassword, `Put "https://up:xxxxx@host/samples/a.jpg": connection refused`},
		{"url.Error as net/http strips it", &url.Error{Op: "Put", URL: "https://up:***@host/samples/a.jpg", Err: cause},
			withPassword, `Put "https://up:xxxxx@host/samples/a.jpg": connection refused`},
		{"wrapped url.Error", fmt.Errorf("put a.jpg: %w", &url.Error{Op: "Put", URL: "https://up:s3cr%2Ft@host/a", Err: cause}),
			withPassword, `put a.jpg: Put "https://up:xxxxx@host/a": connection refused`},
		{"password in plain text", errors.New("auth s3cr/t refused"), withPassword, "auth xxxxx refused"},
		{"no password", errors.New("s3cr/t"), userOnly, "s3cr/t"},
		{"no URL", errors.New("s3cr/t"), nil, "s3cr/t"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Error(tc.err, tc.u)
			if got.Error() != tc.want {
				t.Errorf("got %q, want %q", got.Error(), tc.want)
			}
			if !errors.Is(got, tc.err) {
				t.Error("does not unwrap to the original")
			}
		})
	}
	if Error(nil, withPassword) != nil {
		t.Error("nil error not nil")
	}
}

// A real failed request from net/http shows no password.
func TestErrorFromHTTPClient(t *testing.T) {
	u, _ := url.Parse("http://up:s3cret@127.0.0.1:1/samples")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), nil)
	_, err := http.DefaultClient.Do(req)
	if err == nil {
		t.Fatal("no error")
	}
	got := Error(err, u)
	if strings.Contains(got.Error(), "s3cret") || !strings.Contains(got.Error(), "up:xxxxx@127.0.0.1:1") {
		t.Errorf("%q", got)
	}
	if !errors.Is(got, context.Canceled) {
		t.Errorf("%v is not context.Canceled", got)
	}
}
