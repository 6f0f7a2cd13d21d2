// Package web serves the device's status page and its HTTP API (docs/http-api.md): the
// routes, who may call them (http.token, http.read_token), how much of a request is read,
// and the JSON shapes of the answers. What a request does is the agent's, which this
// package reaches through Device, declared here.
package web

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/hal"
)

//go:embed page.html
var statusPage []byte

// Device is what the API asks of the running agent. A method that refuses a request
// returns an Error with the HTTP status to answer; any other error is a 500.
type Device interface {
	// Settings are the http section of the config now (a reload may change the tokens).
	Settings() config.HTTP
	Status(withHistory bool) Status
	// Ready says whether every model loaded and every camera has detected, else what not.
	Ready() (ok bool, missing []string)
	// Frame is a camera's newest frame as JPEG with its detections drawn.
	Frame(camera string) (jpeg []byte, taken time.Time, err error)
	// StoredFile is the path of a file kept in store ("snapshots" or "samples"), or ""
	// when name is not one of its files.
	StoredFile(store, name string) string
	// FlagSample keeps the camera's next frame as a sample for retraining.
	FlagSample(camera string) error
	// Command moves an actuator by hand and records it as an event.
	Command(ctx context.Context, actuator string, cmd Command, remote string) (hal.State, error)
	// Acknowledge releases a rule latched until an acknowledge.
	Acknowledge(ctx context.Context, rule, by string) error
	// SetInput sets a simulated input.
	SetInput(name string, level hal.Level) error
	// Reload loads the config file again and applies it.
	Reload(trigger string) (ReloadResult, error)
	// Detect runs a model ("" for the first) on an image (JPEG or PNG bytes, checked).
	Detect(model string, image []byte) (InferResult, error)
}

// Error is a request the device refuses, with the status to answer.
type Error struct {
	Code int
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

// Errorf is an Error with status code.
func Errorf(code int, format string, args ...any) error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// Command is the body of POST /api/actuators/<name>, checked: exactly one of Safe, Level
// or Pulse.
type Command struct {
	Safe  bool
	Level *hal.Level
	Pulse time.Duration
	// Body is the request as sent, for the event that records it.
	Body CommandBody
}

// CommandBody is POST /api/actuators/<name>'s JSON: one of state, pulse or safe.
type CommandBody struct {
	State   string `json:"state,omitempty"`    // low | high
	PulseMS int64  `json:"pulse_ms,omitempty"` // milliseconds
	Pulse   string `json:"pulse,omitempty"`    // the same as a duration, e.g. 500ms
	Safe    bool   `json:"safe,omitempty"`
}

// api serves the routes.
type api struct {
	dev        Device
	events     *Events
	metrics    http.Handler
	inferSlots chan struct{} // POST /api/infer requests running
}

// New is the status page and API over dev. events is the recent-events feed (the agent
// adds to it), metrics serves /metrics, and inferConcurrency bounds the POST /api/infer
// requests running at once.
func New(dev Device, events *Events, metrics http.Handler, inferConcurrency int) http.Handler {
	s := &api{dev: dev, events: events, metrics: metrics, inferSlots: make(chan struct{}, max(inferConcurrency, 1))}
	return s.routes()
}

func (s *api) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(statusPage)
	})
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.dev.Status(true))
	})
	mux.HandleFunc("GET /api/events", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("limit"))
		if err != nil || n <= 0 {
			n = 100
		}
		writeJSON(w, http.StatusOK, s.events.Recent(n))
	})
	mux.HandleFunc("GET /api/events/stream", s.eventStream)
	mux.HandleFunc("GET /api/cameras/{name}/snapshot.jpg", s.frame)
	mux.HandleFunc("GET /api/snapshots/{file}", s.stored("snapshots"))
	mux.HandleFunc("GET /api/samples/{file}", s.stored("samples"))
	mux.HandleFunc("POST /api/cameras/{name}/sample", s.requireToken(s.flagSample))
	mux.HandleFunc("POST /api/actuators/{name}", s.requireToken(s.command))
	mux.HandleFunc("POST /api/rules/{name}/ack", s.requireToken(s.acknowledge))
	mux.HandleFunc("POST /api/inputs/{name}", s.requireToken(s.setInput))
	mux.HandleFunc("POST /api/infer", s.infer)
	mux.HandleFunc("POST /api/reload", s.requireToken(func(w http.ResponseWriter, r *http.Request) {
		res, err := s.dev.Reload("http api")
		code := http.StatusOK
		if err != nil {
			code = http.StatusUnprocessableEntity
		}
		writeJSON(w, code, res)
	}))
	mux.Handle("GET /metrics", s.metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ok, missing := s.dev.Ready(); !ok {
			http.Error(w, "not ready: "+strings.Join(missing, "; "), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return s.requireRead(mux)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// writeErr answers a device's error: its own status for an Error, else 500.
func writeErr(w http.ResponseWriter, err error) {
	var e *Error
	if errors.As(err, &e) {
		writeError(w, e.Code, "%s", e.Msg)
		return
	}
	writeError(w, http.StatusInternalServerError, "%v", err)
}

func (s *api) frame(w http.ResponseWriter, r *http.Request) {
	jpeg, taken, err := s.dev.Frame(r.PathValue("name"))
	if err != nil {
		writeErr(w, err)
		return
	}
	w.Header().Set("Content-Type", "image/jpeg")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Frame-Age-Ms", strconv.FormatInt(time.Since(taken).Milliseconds(), 10))
	w.Write(jpeg)
}

// eventStream sends each new event as a server-sent event until the client leaves or
// the agent stops.
func (s *api) eventStream(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	ch, unsubscribe := s.events.subscribe()
	defer unsubscribe()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keepalive.C:
			fmt.Fprint(w, ": keepalive\n\n")
		case e := <-ch:
			data, _ := json.Marshal(e) // an envelope always encodes
			fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Kind, data)
		}
		flusher.Flush()
	}
}

// tokenOf is the token a request carries: the bearer header, or, where a browser cannot
// set headers (an <img>, an EventSource, a link), the token query parameter.
func tokenOf(r *http.Request) string {
	if got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return got
	}
	return r.URL.Query().Get("token")
}

func sameToken(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// requireRead guards the read side when http.read_token is set: the read token or the
// change token is needed for everything but the health checks.
func (s *api) requireRead(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := s.dev.Settings()
		if c.ReadToken != "" && r.URL.Path != "/healthz" && r.URL.Path != "/readyz" {
			if got := tokenOf(r); !sameToken(got, c.ReadToken) && !sameToken(got, c.Token) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="vigil"`)
				writeError(w, http.StatusUnauthorized, "this device needs its read token (http.read_token): open the page as /?token=...")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// requireToken guards a mutating endpoint with http.token. With no token configured
// every such request is refused: a LAN page must not move a weld robot by default.
func (s *api) requireToken(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token := s.dev.Settings().Token
		if token == "" {
			writeError(w, http.StatusForbidden, "set http.token in the config to allow changes over HTTP")
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || !sameToken(got, token) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="vigil"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		next(w, r)
	}
}

// command moves an actuator by hand: exactly one of state, pulse (or pulse_ms) or safe.
func (s *api) command(w http.ResponseWriter, r *http.Request) {
	var body CommandBody
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, "body: %v; want {\"state\":\"high\"}, {\"pulse_ms\":500} or {\"safe\":true}", err)
		return
	}
	if body.PulseMS != 0 {
		if body.Pulse != "" {
			writeError(w, http.StatusBadRequest, "give exactly one of state, pulse_ms or safe")
			return
		}
		body.Pulse = (time.Duration(body.PulseMS) * time.Millisecond).String()
	}
	cmd := Command{Body: body}
	switch {
	case body.Safe && body.State == "" && body.Pulse == "":
		cmd.Safe = true
	case body.State != "" && body.Pulse == "" && !body.Safe:
		level, err := hal.ParseLevel(body.State)
		if err != nil {
			writeError(w, http.StatusBadRequest, "state: %v", err)
			return
		}
		cmd.Level = &level
	case body.Pulse != "" && body.State == "" && !body.Safe:
		d, err := time.ParseDuration(body.Pulse)
		if err != nil || d <= 0 || d > time.Hour {
			writeError(w, http.StatusBadRequest, "pulse: %q is not a duration between 0 and 1h", body.Pulse)
			return
		}
		cmd.Pulse = d
	default:
		writeError(w, http.StatusBadRequest, "give exactly one of state, pulse or safe")
		return
	}
	st, err := s.dev.Command(r.Context(), r.PathValue("name"), cmd, r.RemoteAddr)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// stored serves a file kept in a store (a frame, or a sample's sidecar).
func (s *api) stored(store string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		path := s.dev.StoredFile(store, r.PathValue("file"))
		if path == "" {
			writeError(w, http.StatusNotFound, "no file named %q", r.PathValue("file"))
			return
		}
		if strings.HasSuffix(path, ".jpg") {
			w.Header().Set("Content-Type", "image/jpeg")
		}
		http.ServeFile(w, r, path)
	}
}

// flagSample keeps the camera's next frame as a sample for retraining (an operator
// saw something the model got wrong).
func (s *api) flagSample(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := s.dev.FlagSample(name); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"camera": name, "sample": "the next frame"})
}

// acknowledge releases a rule latched with `until: ack`: its actuator returns to its
// normal level (unless another rule holds it).
func (s *api) acknowledge(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := s.dev.Acknowledge(r.Context(), name, "over http by "+r.RemoteAddr); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"rule": name, "released": true})
}

// setInput sets a simulated input ({"state":"high"}), to try rules that wait for a
// button or an interlock without the hardware. A gpio input is read, never set.
func (s *api) setInput(w http.ResponseWriter, r *http.Request) {
	var body struct {
		State string `json:"state"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1024))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, "body: %v; want {\"state\":\"high\"}", err)
		return
	}
	level, err := hal.ParseLevel(body.State)
	if err != nil {
		writeError(w, http.StatusBadRequest, "state: %v", err)
		return
	}
	name := r.PathValue("name")
	if err := s.dev.SetInput(name, level); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"input": name, "state": level.String()})
}
