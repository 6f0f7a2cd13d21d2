package testkit

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

func TestWaitFor(t *testing.T) {
	var n atomic.Int32
	go func() {
		for range 3 {
			n.Add(1)
		}
	}()
	WaitFor(t, 5*time.Second, "three increments", func() bool { return n.Load() == 3 })
}

// fatalRecorder is a testing.TB whose Fatalf records the message and stops the goroutine.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}
func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = format
	panic(f)
}

func TestWaitForTimesOut(t *testing.T) {
	rec := &fatalRecorder{TB: t}
	func() {
		defer func() { recover() }()
		WaitFor(rec, 10*time.Millisecond, "never", func() bool { return false })
	}()
	if rec.msg != "timed out after %v waiting for %s" {
		t.Errorf("Fatalf %q", rec.msg)
	}
}

func TestClock(t *testing.T) {
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	c := NewClock(start)
	if !c.Now().Equal(start) || !c.Now().Equal(start) {
		t.Fatal("moved by itself")
	}
	c.Advance(time.Second)
	if got := c.Now(); !got.Equal(start.Add(time.Second)) {
		t.Errorf("after Advance: %v", got)
	}
}

func TestPutServer(t *testing.T) {
	s := NewPutServer(t, "t0k", 1)
	for _, tc := range []struct {
		method, token string
		want          int
	}{
		{http.MethodPut, "", http.StatusUnauthorized},
		{http.MethodPost, "t0k", http.StatusMethodNotAllowed},
		{http.MethodPut, "t0k", http.StatusServiceUnavailable},
		{http.MethodPut, "t0k", http.StatusCreated},
	} {
		if code, _ := Request(t, tc.method, s.URL+"/in/a", tc.token, []byte("x")); code != tc.want {
			t.Errorf("%s with token %q: %d, want %d", tc.method, tc.token, code, tc.want)
		}
	}
	s.SetFail(-1)
	for range 2 {
		if code, _ := Request(t, http.MethodPut, s.URL+"/in/b", "t0k", nil); code != http.StatusServiceUnavailable {
			t.Errorf("while down: %d", code)
		}
	}
	got := s.Received()
	if string(got.Bodies["/in/a"]) != "x" || got.Times["/in/a"] != 1 || len(got.Order) != 1 || got.Refused != 3 {
		t.Errorf("%+v", got)
	}
}
