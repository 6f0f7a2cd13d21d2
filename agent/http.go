package agent

import (
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vigil-edge/vigil/capture/stills"
	"github.com/vigil-edge/vigil/hal"
)

//go:embed page.html
var statusPage []byte

// routes is the HTTP API of DESIGN.md.
func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(statusPage)
	})
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Status(true))
	})
	mux.HandleFunc("GET /api/events", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("limit"))
		if err != nil || n <= 0 {
			n = 100
		}
		writeJSON(w, http.StatusOK, a.events.recent(n))
	})
	mux.HandleFunc("GET /api/events/stream", a.eventStream)
	mux.HandleFunc("GET /api/cameras/{name}/snapshot.jpg", a.snapshot)
	mux.HandleFunc("GET /api/snapshots/{file}", a.savedSnapshot)
	mux.HandleFunc("GET /api/samples/{file}", func(w http.ResponseWriter, r *http.Request) {
		serveStored(w, r, a.samples)
	})
	mux.HandleFunc("POST /api/cameras/{name}/sample", a.requireToken(a.flagSample))
	mux.HandleFunc("POST /api/actuators/{name}", a.requireToken(a.commandActuator))
	mux.HandleFunc("POST /api/rules/{name}/ack", a.requireToken(a.acknowledgeRule))
	mux.HandleFunc("POST /api/inputs/{name}", a.requireToken(a.setSimInput))
	mux.HandleFunc("POST /api/infer", a.inferImage)
	mux.HandleFunc("POST /api/reload", a.requireToken(func(w http.ResponseWriter, r *http.Request) {
		res, err := a.ReloadFromFile("http api")
		code := http.StatusOK
		if err != nil {
			code = http.StatusUnprocessableEntity
		}
		writeJSON(w, code, res)
	}))
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ok, missing := a.parts().readiness(); !ok {
			http.Error(w, "not ready: "+strings.Join(missing, "; "), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	return a.requireRead(mux)
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

func (a *Agent) snapshot(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	for _, cam := range a.parts().cameras {
		if cam.cfg().Name != name {
			continue
		}
		jpeg, taken := cam.snap.Get()
		if jpeg == nil {
			writeError(w, http.StatusServiceUnavailable, "camera %s has no frame yet", name)
			return
		}
		w.Header().Set("Content-Type", "image/jpeg")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Frame-Age-Ms", strconv.FormatInt(time.Since(taken).Milliseconds(), 10))
		w.Write(jpeg)
		return
	}
	writeError(w, http.StatusNotFound, "no camera named %q", name)
}

// eventStream sends each new event as a server-sent event until the client leaves or
// the agent stops.
func (a *Agent) eventStream(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "streaming unsupported")
		return
	}
	ch, unsubscribe := a.events.subscribe()
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
			fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", e.Seq, e.Kind, mustJSON(e))
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
func (a *Agent) requireRead(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := a.parts().cfg.HTTP
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
func (a *Agent) requireToken(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token := a.parts().cfg.HTTP.Token
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

// actuatorCommand is the body of POST /api/actuators/<name>: one of state, pulse or safe.
type actuatorCommand struct {
	State   string `json:"state,omitempty"`    // low | high
	PulseMS int64  `json:"pulse_ms,omitempty"` // milliseconds
	Pulse   string `json:"pulse,omitempty"`    // the same as a duration, e.g. 500ms
	Safe    bool   `json:"safe,omitempty"`
}

func (a *Agent) commandActuator(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	act, ok := a.parts().actuators[name]
	if !ok {
		writeError(w, http.StatusNotFound, "no actuator named %q", name)
		return
	}
	var cmd actuatorCommand
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cmd); err != nil {
		writeError(w, http.StatusBadRequest, "body: %v; want {\"state\":\"high\"}, {\"pulse_ms\":500} or {\"safe\":true}", err)
		return
	}
	const reason = "http api"
	if cmd.PulseMS != 0 {
		if cmd.Pulse != "" {
			writeError(w, http.StatusBadRequest, "give exactly one of state, pulse_ms or safe")
			return
		}
		cmd.Pulse = (time.Duration(cmd.PulseMS) * time.Millisecond).String()
	}
	var err error
	switch {
	case cmd.Safe && cmd.State == "" && cmd.Pulse == "":
		err = act.Safe(reason)
	case cmd.State != "" && cmd.Pulse == "" && !cmd.Safe:
		level, perr := hal.ParseLevel(cmd.State)
		if perr != nil {
			writeError(w, http.StatusBadRequest, "state: %v", perr)
			return
		}
		err = act.Set(level, reason)
	case cmd.Pulse != "" && cmd.State == "" && !cmd.Safe:
		d, perr := time.ParseDuration(cmd.Pulse)
		if perr != nil || d <= 0 || d > time.Hour {
			writeError(w, http.StatusBadRequest, "pulse: %q is not a duration between 0 and 1h", cmd.Pulse)
			return
		}
		err = act.Pulse(d, reason)
	default:
		writeError(w, http.StatusBadRequest, "give exactly one of state, pulse or safe")
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	body := map[string]any{"actuator": name, "command": cmd, "source": "http", "remote": r.RemoteAddr}
	a.recordEvent(r.Context(), "actuator", body)
	writeJSON(w, http.StatusOK, act.State())
}

// savedSnapshot serves a frame saved with a rule's event.
func (a *Agent) savedSnapshot(w http.ResponseWriter, r *http.Request) {
	serveStored(w, r, a.snapshots)
}

// serveStored serves a file of a snapshot store (a frame, or a sample's sidecar).
func serveStored(w http.ResponseWriter, r *http.Request, s *stills.Store) {
	path := s.Path(r.PathValue("file"))
	if path == "" {
		writeError(w, http.StatusNotFound, "no file named %q", r.PathValue("file"))
		return
	}
	if strings.HasSuffix(path, ".jpg") {
		w.Header().Set("Content-Type", "image/jpeg")
	}
	http.ServeFile(w, r, path)
}

// flagSample keeps the camera's next frame as a sample for retraining (an operator
// saw something the model got wrong).
func (a *Agent) flagSample(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	for _, cam := range a.parts().cameras {
		if cam.cfg().Name == name {
			if !cam.cfg().StoreFrames {
				writeError(w, http.StatusConflict, "camera %s has store_frames: false", name)
				return
			}
			cam.flagged.Store(true)
			writeJSON(w, http.StatusAccepted, map[string]string{"camera": name, "sample": "the next frame"})
			return
		}
	}
	writeError(w, http.StatusNotFound, "no camera named %q", name)
}

// acknowledgeRule releases a rule latched with `until: ack`: its actuator returns to
// its normal level (unless another rule holds it).
func (a *Agent) acknowledgeRule(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	p := a.parts()
	if p.cfg.RuleNamed(name) == nil {
		writeError(w, http.StatusNotFound, "no rule named %q", name)
		return
	}
	fire, ok := p.rules.Acknowledge(name, "ack")
	if !ok {
		writeError(w, http.StatusConflict, "rule %s is not latched waiting for an acknowledge", name)
		return
	}
	fire.Reason += " over http by " + r.RemoteAddr
	a.release(r.Context(), p, fire)
	writeJSON(w, http.StatusOK, map[string]any{"rule": name, "released": true})
}

// setSimInput sets a simulated input ({"state":"high"}), to try rules that wait for a
// button or an interlock without the hardware. A gpio input is read, never set.
func (a *Agent) setSimInput(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	in, ok := a.parts().inputs[name]
	if !ok {
		writeError(w, http.StatusNotFound, "no input named %q", name)
		return
	}
	if in.sim == nil {
		writeError(w, http.StatusConflict, "input %s is a %s input: it is read from the hardware, not set", name, in.State().Driver)
		return
	}
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
	in.sim.Set(level)
	writeJSON(w, http.StatusOK, map[string]string{"input": name, "state": level.String()})
}
