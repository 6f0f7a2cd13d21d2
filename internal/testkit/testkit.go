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

// pollEvery is how often WaitFor checks its condition.
const pollEvery = 2 * time.Millisecond

// WaitFor checks cond every few milliseconds until it holds, and fails the test
// ("timed out after 5s waiting for <what>") if it still does not once timeout has
// passed. It is the only wait tests need: poll a condition, never sleep a guess.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
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
