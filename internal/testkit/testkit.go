// Package testkit is what tests across the tree share: waiting on a condition
// (WaitFor), a clock the test moves (Clock), a real HTTP endpoint that keeps what is
// PUT to it (PutServer) and a request with a bearer token (Request). It imports only
// the standard library, so tests of gocv-free packages (sync/..., hal/...) may use it;
// only _test.go files import it.
package testkit

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"
)

// WaitFor's polling: the first checks come quickly, then the pause doubles up to
// pollMax, so a condition that holds soon is seen soon, and a long wait on one that
// asks a running agent for its whole status (an HTTP request) does not load the machine
// the test is measuring.
const (
	pollFirst = time.Millisecond
	pollMax   = 20 * time.Millisecond
)

// WaitFor checks cond until it holds, and fails the test ("timed out after 5s waiting
// for <what>") if it still does not once timeout has passed. It is the only wait tests
// need: poll a condition, never sleep a guess.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	pause := pollFirst
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(pause)
		pause = min(2*pause, pollMax)
	}
}

// Request sends method to url with body ("Authorization: Bearer <token>" unless token
// is empty) and returns the status code and the reply's body. A request that gets no
// answer fails the test.
func Request(t testing.TB, method, url, token string, body []byte) (status int, reply string) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read the reply: %v", method, url, err)
	}
	return resp.StatusCode, string(b)
}
