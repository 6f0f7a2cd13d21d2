package web

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/hal"
)

// heldDevice is a Device whose Detect waits until the test lets it go: what a request
// running on a slow model looks like to the API. The agent's own tests run every route
// against the real agent; this one checks what the API itself decides.
type heldDevice struct {
	Device  // the methods this test does not call
	entered chan struct{}
	release chan struct{}
}

func (d heldDevice) Settings() config.HTTP {
	return config.HTTP{InferMaxBytes: 1 << 20, InferConcurrency: 1}
}

func (d heldDevice) Detect(string, []byte) (InferResult, error) {
	d.entered <- struct{}{}
	<-d.release
	return InferResult{Model: "default"}, nil
}

// With every slot taken, the next request is turned away at once (429), not queued
// behind the model; a slot freed takes requests again.
func TestInferIsBoundedByItsSlots(t *testing.T) {
	dev := heldDevice{entered: make(chan struct{}), release: make(chan struct{})}
	srv := httptest.NewServer(New(dev, NewEvents(1), http.NotFoundHandler(), 1))
	defer srv.Close()
	post := func() int {
		resp, err := http.Post(srv.URL+"/api/infer", "image/jpeg", bytes.NewReader([]byte{0xFF, 0xD8, 0xFF, 0}))
		if err != nil {
			t.Error(err)
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	first := make(chan int, 1)
	go func() { first <- post() }()
	<-dev.entered // the first request holds the only slot
	if code := post(); code != http.StatusTooManyRequests {
		t.Errorf("a second request while the first runs: %d, want 429", code)
	}
	dev.release <- struct{}{}
	if code := <-first; code != http.StatusOK {
		t.Errorf("the first request: %d, want 200", code)
	}
	go func() { <-dev.entered; dev.release <- struct{}{} }()
	if code := post(); code != http.StatusOK {
		t.Errorf("a request after the slot was freed: %d, want 200", code)
	}
}

// Commands are checked before the device sees them: exactly one of state, pulse or safe.
func TestCommandBodies(t *testing.T) {
	var got []Command
	dev := commandDevice{got: &got}
	srv := httptest.NewServer(New(dev, NewEvents(1), http.NotFoundHandler(), 1))
	defer srv.Close()
	for body, want := range map[string]int{
		`{"state":"high"}`:             http.StatusOK,
		`{"pulse_ms":500}`:             http.StatusOK,
		`{"pulse":"250ms"}`:            http.StatusOK,
		`{"safe":true}`:                http.StatusOK,
		`{"state":"high","safe":true}`: http.StatusBadRequest,
		`{"pulse_ms":5,"pulse":"5ms"}`: http.StatusBadRequest,
		`{"pulse":"2h"}`:               http.StatusBadRequest,
		`{"state":"sideways"}`:         http.StatusBadRequest,
		`{"stat":"high"}`:              http.StatusBadRequest,
		`{}`:                           http.StatusBadRequest,
	} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/actuators/relay", bytes.NewBufferString(body))
		req.Header.Set("Authorization", "Bearer s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("%s: %d, want %d", body, resp.StatusCode, want)
		}
	}
	if len(got) != 4 {
		t.Fatalf("the device got %d commands, want the 4 valid ones", len(got))
	}
	for _, c := range got {
		n := 0
		if c.Safe {
			n++
		}
		if c.Level != nil {
			n++
		}
		if c.Pulse > 0 {
			n++
		}
		if n != 1 {
			t.Errorf("command %+v is not exactly one of safe, level, pulse", c)
		}
	}
}

type commandDevice struct {
	Device
	got *[]Command
}

func (d commandDevice) Settings() config.HTTP { return config.HTTP{Token: "s3cret"} }

func (d commandDevice) Command(_ context.Context, _ string, c Command, _ string) (hal.State, error) {
	*d.got = append(*d.got, c)
	return hal.State{}, nil
}
