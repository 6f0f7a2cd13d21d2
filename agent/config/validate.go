package config

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-edge/vigil/assets"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/internal/redact"
)

// Names of cameras, models, actuators, inputs and rules appear in URLs, metrics and
// MQTT topics, so they are kept to a safe alphabet.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// Backends a model may name. Whether one is available on this machine is checked at
// start, not here: a config stays valid across machines.
var Backends = []string{"onnxruntime", "tflite", "openvino", "opencv"}

// CameraURL is a camera's url split into its kind and target.
type CameraURL struct {
	Kind   string // rtsp | file | v4l2 | pattern
	Target string // the stream URL (rtsp), the file or device path, or the pattern name
	// For files: Loop starts over at the end (default true); Realtime delivers frames
	// at the file's own rate (default true), or as fast as they decode.
	Loop, Realtime bool
	// For v4l2 devices: the size, rate and pixel format (FOURCC) to ask for.
	Width, Height int
	FPS           float64
	PixelFormat   string
}

// ParseCameraURL reads rtsp://, rtsps://, file:///path.mp4 (or file:relative.mp4, with
// ?loop=false and ?realtime=false), v4l2:///dev/video0 and pattern:// URLs.
func ParseCameraURL(raw string) (CameraURL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return CameraURL{}, fmt.Errorf("not a URL: %w", err)
	}
	switch u.Scheme {
	case "rtsp", "rtsps":
		if u.Host == "" {
			return CameraURL{}, fmt.Errorf("%s has no host", Redact(raw))
		}
		return CameraURL{Kind: "rtsp", Target: raw}, nil
	case "file", "v4l2":
		p := u.Path
		if u.Opaque != "" {
			p = u.Opaque
		}
		if u.Host != "" && u.Host != "localhost" {
			// file://./clip.mp4 and file://clip.mp4 put the start of a relative path in
			// the host; take it back.
			p = u.Host + p
		}
		if p == "" {
			return CameraURL{}, fmt.Errorf("%s has no path", raw)
		}
		c := CameraURL{Kind: u.Scheme, Target: p, Loop: true, Realtime: true}
		for key, vals := range u.Query() {
			if err := c.setOption(key, vals[0]); err != nil {
				return CameraURL{}, fmt.Errorf("%s: %w", raw, err)
			}
		}
		return c, nil
	case "pattern":
		c := CameraURL{Kind: "pattern", Target: u.Host + u.Path}
		for key, vals := range u.Query() {
			if err := c.setOption(key, vals[0]); err != nil {
				return CameraURL{}, fmt.Errorf("%s: %w", raw, err)
			}
		}
		return c, nil
	case "":
		return CameraURL{}, fmt.Errorf("%q has no scheme; use rtsp://, rtsps://, file://, v4l2:// or pattern://", raw)
	}
	return CameraURL{}, fmt.Errorf("scheme %q is not one of rtsp, rtsps, file, v4l2, pattern", u.Scheme)
}

// setOption applies one URL query option: loop and realtime for files; width,
// height, fps and format for v4l2 devices; width, height and fps for the pattern (a
// small, slow pattern lets one machine simulate many cameras).
func (c *CameraURL) setOption(key, val string) error {
	switch {
	case c.Kind == "file" && (key == "loop" || key == "realtime"):
		b, err := strconv.ParseBool(val)
		if err != nil {
			return fmt.Errorf("%s=%q is not true or false", key, val)
		}
		if key == "loop" {
			c.Loop = b
		} else {
			c.Realtime = b
		}
	case (c.Kind == "v4l2" || c.Kind == "pattern") && (key == "width" || key == "height"):
		n, err := strconv.Atoi(val)
		if err != nil || n <= 0 {
			return fmt.Errorf("%s=%q is not a positive number of pixels", key, val)
		}
		if key == "width" {
			c.Width = n
		} else {
			c.Height = n
		}
	case (c.Kind == "v4l2" || c.Kind == "pattern") && key == "fps":
		f, err := strconv.ParseFloat(val, 64)
		if err != nil || f <= 0 {
			return fmt.Errorf("fps=%q is not a positive rate", val)
		}
		c.FPS = f
	case c.Kind == "v4l2" && key == "format":
		if len(val) != 4 {
			return fmt.Errorf("format=%q is not a four-character pixel format such as MJPG or YUYV", val)
		}
		c.PixelFormat = val
	default:
		return fmt.Errorf("unknown option %q (file URLs take loop and realtime; v4l2 URLs take width, height, fps and format; pattern URLs take width, height and fps)", key)
	}
	return nil
}

// Redact hides the password in a URL, for logs, status and events.
func Redact(raw string) string {
	return redact.URL(raw)
}

// validate checks what decoding cannot: ranges, choices, references between sections
// and files that must exist. It returns one Error per problem.
func (c *Config) validate() Errors {
	var errs Errors
	bad := func(key, format string, args ...any) {
		errs = append(errs, Error{Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	oneOf := func(key, v string, choices ...string) {
		if !slices.Contains(choices, v) {
			bad(key, "%q is not one of %s", v, strings.Join(choices, ", "))
		}
	}
	topicSegment := func(key, v string, required bool) {
		if v == "" {
			if required {
				bad(key, "must not be empty")
			}
			return
		}
		if strings.ContainsAny(v, "/+#") || strings.TrimSpace(v) != v {
			bad(key, "%q cannot be an MQTT topic segment (no '/', '+', '#' or surrounding spaces)", v)
		}
	}
	unique := func(list, key string, names []string) map[string]int {
		seen := map[string]int{}
		for i, n := range names {
			k := fmt.Sprintf("%s[%d].%s", list, i, key)
			switch {
			case n == "":
				bad(k, "missing")
			case !nameRE.MatchString(n):
				bad(k, "%q: use letters, digits, '.', '_' and '-' (up to 63)", n)
			default:
				if j, dup := seen[n]; dup {
					bad(k, "%q is already the name of %s[%d]", n, list, j)
				} else {
					seen[n] = i
				}
			}
		}
		return seen
	}
	fileExists := func(key, path string) {
		if path == "" {
			return
		}
		if _, err := os.Stat(path); err != nil {
			bad(key, "%v", err)
		}
	}

	topicSegment("device.id", c.Device.ID, true)
	topicSegment("device.group", c.Device.Group, false)
	if c.Device.StateDir == "" {
		bad("device.state_dir", "must not be empty")
	}
	oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	oneOf("log.format", c.Log.Format, "text", "json")
	if _, port, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
		bad("http.listen", "%q is not host:port: %v", c.HTTP.Listen, err)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		bad("http.listen", "port %q is not a number from 0 to 65535", port)
	}

	// Models first: cameras and rules refer to them.
	models := unique("models", "name", namesOf(c.Models, func(m Model) string { return m.Name }))
	manifests := map[string]*infer.Manifest{}
	for i, m := range c.Models {
		key := fmt.Sprintf("models[%d]", i)
		if m.Backend != "" {
			oneOf(key+".backend", m.Backend, Backends...)
		}
		if m.Threads < 0 {
			bad(key+".threads", "%d is negative", m.Threads)
		}
		if m.Shadow.Bundle != "" {
			if _, err := infer.LoadManifest(m.Shadow.Bundle); err != nil {
				bad(key+".shadow.bundle", "%v", err)
			}
			if m.Shadow.Backend != "" {
				oneOf(key+".shadow.backend", m.Shadow.Backend, Backends...)
			}
			if m.Shadow.Every < 0 {
				bad(key+".shadow.every", "%d is negative", m.Shadow.Every)
			}
		}
		if m.Optimization != "" {
			oneOf(key+".optimization", m.Optimization, "all", "extended", "basic", "disabled")
		}
		var man *infer.Manifest
		var err error
		if m.Bundle == "" {
			man, err = infer.ParseManifest(assets.DefaultManifest())
		} else {
			man, err = infer.LoadManifest(m.Bundle)
		}
		if err != nil {
			bad(key+".bundle", "%v", err)
			continue
		}
		manifests[m.Name] = man
	}

	cameras := unique("cameras", "name", namesOf(c.Cameras, func(c Camera) string { return c.Name }))
	for i, cam := range c.Cameras {
		key := fmt.Sprintf("cameras[%d]", i)
		if cam.URL == "" {
			bad(key+".url", "missing")
		} else if _, err := ParseCameraURL(cam.URL); err != nil {
			// A file or device that is missing now is not a config error: the camera is
			// retried like any other that fails, and says why on the status page.
			bad(key+".url", "%v", err)
		}
		oneOf(key+".rtsp_transport", cam.RTSPTransport, "tcp", "udp")
		if cam.DetectFPS <= 0 {
			bad(key+".detect_fps", "%v must be greater than 0", cam.DetectFPS)
		}
		if cam.StallTimeout <= 0 {
			bad(key+".stall_timeout", "%v must be greater than 0", cam.StallTimeout)
		}
		if cam.Backoff.Min <= 0 {
			bad(key+".backoff.min", "%v must be greater than 0", cam.Backoff.Min)
		}
		if cam.Backoff.Max < cam.Backoff.Min {
			bad(key+".backoff.max", "%v is less than backoff.min %v", cam.Backoff.Max, cam.Backoff.Min)
		}
		if _, ok := models[cam.Model]; !ok {
			bad(key+".model", "%q is not the name of a model in models", cam.Model)
		}
	}

	// gpio lines: each needs a chip and a line, and one line serves one actuator or input.
	lineUsers := map[string]string{} // "chip line" -> the key of its first user
	gpioLine := func(key, chip, line string) {
		if chip == "" {
			bad(key+".chip", "the gpio driver needs a chip, e.g. gpiochip0 or /dev/gpiochip0")
		} else if strings.TrimSpace(chip) != chip {
			bad(key+".chip", "%q has surrounding spaces", chip)
		}
		switch off, err := strconv.Atoi(line); {
		case line == "":
			bad(key+".line", "the gpio driver needs a line name or offset, e.g. GPIO17 or 17")
		case err == nil && off < 0:
			bad(key+".line", "%d is a negative offset; give a line name (GPIO17) or an offset from 0", off)
		case strings.TrimSpace(line) != line:
			bad(key+".line", "%q has surrounding spaces", line)
		}
		if chip == "" || line == "" {
			return
		}
		id := strings.TrimPrefix(chip, "/dev/") + " line " + line
		if first, ok := lineUsers[id]; ok {
			bad(key+".line", "%s is already used by %s", id, first)
			return
		}
		lineUsers[id] = key
	}

	actuators := unique("actuators", "name", namesOf(c.Actuators, func(a Actuator) string { return a.Name }))
	for i, a := range c.Actuators {
		key := fmt.Sprintf("actuators[%d]", i)
		oneOf(key+".driver", a.Driver, "sim", "gpio")
		oneOf(key+".safe", a.Safe, "low", "high")
		if a.Driver == "gpio" {
			gpioLine(key, a.Chip, a.Line)
		}
	}

	inputs := unique("inputs", "name", namesOf(c.Inputs, func(in Input) string { return in.Name }))
	for i, in := range c.Inputs {
		key := fmt.Sprintf("inputs[%d]", i)
		oneOf(key+".driver", in.Driver, "sim", "gpio")
		if in.Debounce < 0 {
			bad(key+".debounce", "%v is negative", in.Debounce)
		}
		if in.Driver == "gpio" {
			gpioLine(key, in.Chip, in.Line)
		}
	}

	unique("rules", "name", namesOf(c.Rules, func(r Rule) string { return r.Name }))
	for i, r := range c.Rules {
		key := fmt.Sprintf("rules[%d]", i)
		if ci, ok := cameras[r.Camera]; !ok {
			bad(key+".camera", "%q is not the name of a camera in cameras", r.Camera)
		} else if man := manifests[c.Cameras[ci].Model]; man != nil {
			for j, l := range r.Labels {
				if !slices.Contains(man.Labels, l) {
					bad(fmt.Sprintf("%s.labels[%d]", key, j), "%q is not a label of model %s (%s)", l, c.Cameras[ci].Model, man.Name)
				}
			}
		}
		if r.MinScore < 0 || r.MinScore > 1 {
			bad(key+".min_score", "%v is outside 0..1", r.MinScore)
		}
		if r.MinArea < 0 || r.MinArea > 1 {
			bad(key+".min_area", "%v is outside 0..1 (a fraction of the frame)", r.MinArea)
		}
		if len(r.Zone) > 0 && len(r.Zone) < 3 {
			bad(key+".zone", "a polygon needs at least 3 points, got %d", len(r.Zone))
		}
		for j, p := range r.Zone {
			if len(p) != 2 || p[0] < 0 || p[0] > 1 || p[1] < 0 || p[1] > 1 {
				bad(fmt.Sprintf("%s.zone[%d]", key, j), "%v is not a point [x, y] in normalised coordinates 0..1", p)
			}
		}
		if r.Frames.Of < 1 || r.Frames.N < 1 || r.Frames.N > r.Frames.Of {
			bad(key+".frames", "n %d of %d: need 1 <= n <= of", r.Frames.N, r.Frames.Of)
		}
		if r.Cooldown < 0 {
			bad(key+".cooldown", "%v is negative", r.Cooldown)
		}
		oneOf(key+".on_stall", r.OnStall, "safe", "hold")
		if r.ZoneMode != "" {
			oneOf(key+".zone_mode", r.ZoneMode, "center", "inside", "overlaps")
		}
		if r.Interlock != "" {
			if _, ok := inputs[r.Interlock]; !ok {
				bad(key+".interlock", "%q is not the name of an input in inputs", r.Interlock)
			}
		}
		a := r.Action
		if a.Actuator == "" {
			// An event-only rule: it records what it saw and moves nothing.
			if a.Pulse != 0 || a.State != "" || a.Until != "" || r.Hold != 0 {
				bad(key+".action.actuator", "pulse, state, until and hold need an actuator")
			}
		} else if _, ok := actuators[a.Actuator]; !ok {
			bad(key+".action.actuator", "%q is not the name of an actuator in actuators", a.Actuator)
		} else {
			switch {
			case a.Pulse > 0 && a.State != "":
				bad(key+".action", "set either pulse or state, not both")
			case a.Pulse < 0:
				bad(key+".action.pulse", "%v is negative", a.Pulse)
			case a.Pulse == 0 && a.State == "":
				bad(key+".action", "needs pulse (e.g. 500ms) or state (low or high)")
			case a.State != "":
				oneOf(key+".action.state", a.State, "low", "high")
			}
		}
		if a.Until != "" {
			if a.State == "" {
				bad(key+".action.until", "only a state action can be latched")
			} else if _, ok := inputs[a.Until]; !ok && a.Until != "ack" {
				bad(key+".action.until", "%q is neither an input in inputs nor \"ack\"", a.Until)
			}
		}
		switch {
		case r.Hold < 0:
			bad(key+".hold", "%v is negative", r.Hold)
		case r.Hold > 0 && (a.State == "" || a.Until != ""):
			bad(key+".hold", "hold applies to a state action without until")
		}
	}
	for i, a := range c.Actuators {
		if a.Initial != "" {
			oneOf(fmt.Sprintf("actuators[%d].initial", i), a.Initial, "low", "high")
		}
	}

	m := c.MQTT
	if m.Enabled && len(m.Brokers) == 0 {
		bad("mqtt.brokers", "needs at least one broker URL")
	}
	for i, b := range m.Brokers {
		u, err := url.Parse(b)
		if err != nil || u.Host == "" || !slices.Contains([]string{"tcp", "ssl", "tls", "ws", "wss", "mqtt", "mqtts"}, u.Scheme) {
			bad(fmt.Sprintf("mqtt.brokers[%d]", i), "%q is not a broker URL like tcp://host:1883 or ssl://host:8883", b)
		}
	}
	fileExists("mqtt.ca_file", m.CAFile)
	fileExists("mqtt.cert_file", m.CertFile)
	fileExists("mqtt.key_file", m.KeyFile)
	if (m.CertFile == "") != (m.KeyFile == "") {
		bad("mqtt.key_file", "cert_file and key_file go together")
	}
	if m.TopicPrefix == "" || strings.ContainsAny(m.TopicPrefix, "+#") {
		bad("mqtt.topic_prefix", "%q must be non-empty and free of MQTT wildcards", m.TopicPrefix)
	}
	if m.TelemetryInterval <= 0 {
		bad("mqtt.telemetry_interval", "%v must be greater than 0", m.TelemetryInterval)
	}
	if m.KeepAlive < time.Second {
		bad("mqtt.keepalive", "%v is below 1s", m.KeepAlive)
	}
	if m.Backoff.Min <= 0 {
		bad("mqtt.backoff.min", "%v must be greater than 0", m.Backoff.Min)
	}
	if m.Backoff.Max < m.Backoff.Min {
		bad("mqtt.backoff.max", "%v is less than backoff.min %v", m.Backoff.Max, m.Backoff.Min)
	}
	if m.Inflight < 1 || m.Inflight > 65535 {
		bad("mqtt.inflight", "%d is outside 1..65535", m.Inflight)
	}

	if c.Outbox.MaxBytes < 1<<20 {
		bad("outbox.max_bytes", "%v is below the minimum of 1MiB", c.Outbox.MaxBytes)
	}
	oneOf("outbox.fsync", c.Outbox.Fsync, "always", "interval")
	if c.Outbox.FsyncInterval <= 0 {
		bad("outbox.fsync_interval", "%v must be greater than 0", c.Outbox.FsyncInterval)
	}

	if c.HTTP.InferMaxBytes < 1<<10 {
		bad("http.infer_max_bytes", "%v is below the minimum of 1KiB", c.HTTP.InferMaxBytes)
	}
	if c.HTTP.InferConcurrency < 1 {
		bad("http.infer_concurrency", "%d: at least 1", c.HTTP.InferConcurrency)
	}
	if c.Deploy.MaxBytes < 1<<20 {
		bad("deploy.max_bytes", "%v is below the minimum of 1MiB", c.Deploy.MaxBytes)
	}
	if c.Deploy.WarmupRuns < 1 {
		bad("deploy.warmup_runs", "%d: at least 1 inference must pass before a model goes live", c.Deploy.WarmupRuns)
	}
	if c.Deploy.WarmupBudget <= 0 {
		bad("deploy.warmup_budget", "%v must be greater than 0", c.Deploy.WarmupBudget)
	}
	if c.Deploy.Watch < 0 {
		bad("deploy.watch", "%v is negative", c.Deploy.Watch)
	}
	if d := c.Drift; d.Enabled {
		if d.Every < 1 {
			bad("drift.every", "%d: at least 1", d.Every)
		}
		if d.Baseline < 10 || d.Window < 10 {
			bad("drift", "baseline %d and window %d: at least 10 samples each", d.Baseline, d.Window)
		}
		if d.Clear <= 0 || d.Clear > d.Threshold {
			bad("drift.clear", "%v must be above 0 and at most drift.threshold (%v)", d.Clear, d.Threshold)
		}
	}
	if u := c.Samples.Upload; u.Via != "off" {
		oneOf("samples.upload.via", u.Via, "off", "http", "mqtt")
		switch u.Via {
		case "http":
			if pu, err := url.Parse(u.URL); u.URL == "" {
				bad("samples.upload.url", "missing: the HTTP(S) endpoint samples are PUT to")
			} else if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" || pu.RawQuery != "" || pu.Fragment != "" {
				bad("samples.upload.url", "%q is not a URL like https://host/samples", Redact(u.URL))
			}
			fileExists("samples.upload.ca_file", u.CAFile)
		case "mqtt":
			if !c.MQTT.Enabled {
				bad("samples.upload.via", "mqtt needs mqtt.enabled: true")
			}
			if u.ChunkSize < 1<<10 || u.ChunkSize > 16<<20 {
				bad("samples.upload.chunk_size", "%v is outside 1KiB..16MiB", u.ChunkSize)
			}
		}
		if u.Backoff.Min <= 0 {
			bad("samples.upload.backoff.min", "%v must be greater than 0", u.Backoff.Min)
		}
		if u.Backoff.Max < u.Backoff.Min {
			bad("samples.upload.backoff.max", "%v is less than backoff.min %v", u.Backoff.Max, u.Backoff.Min)
		}
	}
	if c.Deploy.StallTimeout <= 0 {
		bad("deploy.stall_timeout", "%v must be greater than 0", c.Deploy.StallTimeout)
	}
	if c.Deploy.MaxSlowdown < 1 {
		bad("deploy.max_slowdown", "%v: a factor of at least 1", c.Deploy.MaxSlowdown)
	}
	for i, k := range c.Trust.Keys {
		if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != 32 {
			bad(fmt.Sprintf("trust.keys[%d]", i), "not a base64 Ed25519 public key (32 bytes)")
		}
	}
	fileExists("runtimes.onnxruntime", c.Runtimes.ONNXRuntime)
	fileExists("runtimes.tflite", c.Runtimes.TFLite)
	fileExists("runtimes.openvino", c.Runtimes.OpenVINO)
	return errs
}

func namesOf[T any](items []T, name func(T) string) []string {
	names := make([]string, len(items))
	for i, it := range items {
		names[i] = name(it)
	}
	return names
}
