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
	"github.com/vigil-edge/vigil/capture/camurl"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/internal/redact"
)

// Names of cameras, models, actuators, inputs and rules appear in URLs, metrics and
// MQTT topics, so they are kept to a safe alphabet.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// validate checks what decoding cannot: ranges, choices, references between sections
// and files that must exist. It returns one Error per problem.
//
// Each section is checked on its own; the lists record their items' names as they go,
// and references then checks, in one place, every name one section gives another (a
// camera's model, a rule's camera, actuator and inputs).
func (c *Config) validate() Errors {
	v := &validation{lineUsers: map[string]string{}}
	v.device(c.Device)
	v.log(c.Log)
	v.http(c.HTTP)
	v.models(c.Models)
	v.cameras(c.Cameras)
	v.actuators(c.Actuators) // before inputs: a gpio line belongs to its first user
	v.inputs(c.Inputs)
	v.rules(c.Rules)
	v.mqtt(c.MQTT)
	v.outbox(c.Outbox)
	v.deploy(c.Deploy)
	v.drift(c.Drift)
	v.samples(c.Samples, c.MQTT.Enabled)
	v.trust(c.Trust)
	v.runtimes(c.Runtimes)
	v.references(c)
	return v.errs
}

// validation is one run of validate: the problems found so far, and the names the
// lists define, for references.
type validation struct {
	errs Errors

	// Each list's valid, unique names, with the index of the item that has it.
	modelNames, cameraNames, actuatorNames, inputNames map[string]int
	// manifests are the models' bundle manifests, by model name, for rule labels.
	manifests map[string]*infer.Manifest
	// lineUsers maps "chip line N" to the key of the actuator or input that uses it.
	lineUsers map[string]string
}

func (v *validation) bad(key, format string, args ...any) {
	v.errs = append(v.errs, Error{Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (v *validation) oneOf(key, s string, choices ...string) {
	if !slices.Contains(choices, s) {
		v.bad(key, "%q is not one of %s", s, strings.Join(choices, ", "))
	}
}

func (v *validation) topicSegment(key, s string, required bool) {
	if s == "" {
		if required {
			v.bad(key, "must not be empty")
		}
		return
	}
	if strings.ContainsAny(s, "/+#") || strings.TrimSpace(s) != s {
		v.bad(key, "%q cannot be an MQTT topic segment (no '/', '+', '#' or surrounding spaces)", s)
	}
}

// unique checks the names of a list's items and returns the valid ones, each with
// the index of its first item.
func (v *validation) unique(list, key string, names []string) map[string]int {
	seen := map[string]int{}
	for i, n := range names {
		k := fmt.Sprintf("%s[%d].%s", list, i, key)
		switch {
		case n == "":
			v.bad(k, "missing")
		case !nameRE.MatchString(n):
			v.bad(k, "%q: use letters, digits, '.', '_' and '-' (up to 63)", n)
		default:
			if j, dup := seen[n]; dup {
				v.bad(k, "%q is already the name of %s[%d]", n, list, j)
			} else {
				seen[n] = i
			}
		}
	}
	return seen
}

func (v *validation) fileExists(key, path string) {
	if path == "" {
		return
	}
	if _, err := os.Stat(path); err != nil {
		v.bad(key, "%v", err)
	}
}

func (v *validation) backoff(key string, b Backoff) {
	if b.Min <= 0 {
		v.bad(key+".min", "%v must be greater than 0", b.Min)
	}
	if b.Max < b.Min {
		v.bad(key+".max", "%v is less than backoff.min %v", b.Max, b.Min)
	}
}

func (v *validation) device(d Device) {
	v.topicSegment("device.id", d.ID, true)
	v.topicSegment("device.group", d.Group, false)
	if d.StateDir == "" {
		v.bad("device.state_dir", "must not be empty")
	}
}

func (v *validation) log(l Log) {
	v.oneOf("log.level", l.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", l.Format, "text", "json")
}

func (v *validation) http(h HTTP) {
	if _, port, err := net.SplitHostPort(h.Listen); err != nil {
		v.bad("http.listen", "%q is not host:port: %v", h.Listen, err)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		v.bad("http.listen", "port %q is not a number from 0 to 65535", port)
	}
	if h.InferMaxBytes < 1<<10 {
		v.bad("http.infer_max_bytes", "%v is below the minimum of 1KiB", h.InferMaxBytes)
	}
	if h.InferConcurrency < 1 {
		v.bad("http.infer_concurrency", "%d: at least 1", h.InferConcurrency)
	}
}

// models also reads each model's bundle manifest (the bundled one for bundle ""), for
// the labels rules name.
func (v *validation) models(models []Model) {
	v.modelNames = v.unique("models", "name", namesOf(models, func(m Model) string { return m.Name }))
	v.manifests = map[string]*infer.Manifest{}
	for i, m := range models {
		key := fmt.Sprintf("models[%d]", i)
		if m.Backend != "" {
			v.oneOf(key+".backend", m.Backend, infer.BackendNames()...)
		}
		if m.Threads < 0 {
			v.bad(key+".threads", "%d is negative", m.Threads)
		}
		if m.Shadow.Bundle != "" {
			if _, err := infer.LoadManifest(m.Shadow.Bundle); err != nil {
				v.bad(key+".shadow.bundle", "%v", err)
			}
			if m.Shadow.Backend != "" {
				v.oneOf(key+".shadow.backend", m.Shadow.Backend, infer.BackendNames()...)
			}
			if m.Shadow.Every < 0 {
				v.bad(key+".shadow.every", "%d is negative", m.Shadow.Every)
			}
		}
		if m.Optimization != "" {
			v.oneOf(key+".optimization", m.Optimization, "all", "extended", "basic", "disabled")
		}
		var man *infer.Manifest
		var err error
		if m.Bundle == "" {
			man, err = infer.ParseManifest(assets.DefaultManifest())
		} else {
			man, err = infer.LoadManifest(m.Bundle)
		}
		if err != nil {
			v.bad(key+".bundle", "%v", err)
			continue
		}
		v.manifests[m.Name] = man
	}
}

func (v *validation) cameras(cameras []Camera) {
	v.cameraNames = v.unique("cameras", "name", namesOf(cameras, func(c Camera) string { return c.Name }))
	for i, cam := range cameras {
		key := fmt.Sprintf("cameras[%d]", i)
		if cam.URL == "" {
			v.bad(key+".url", "missing")
		} else if _, err := camurl.Parse(cam.URL); err != nil {
			// A file or device that is missing now is not a config error: the camera is
			// retried like any other that fails, and says why on the status page.
			v.bad(key+".url", "%v", err)
		}
		v.oneOf(key+".rtsp_transport", cam.RTSPTransport, "tcp", "udp")
		if cam.DetectFPS <= 0 {
			v.bad(key+".detect_fps", "%v must be greater than 0", cam.DetectFPS)
		}
		if cam.StallTimeout <= 0 {
			v.bad(key+".stall_timeout", "%v must be greater than 0", cam.StallTimeout)
		}
		v.backoff(key+".backoff", cam.Backoff)
	}
}

func (v *validation) actuators(actuators []Actuator) {
	v.actuatorNames = v.unique("actuators", "name", namesOf(actuators, func(a Actuator) string { return a.Name }))
	for i, a := range actuators {
		key := fmt.Sprintf("actuators[%d]", i)
		v.oneOf(key+".driver", a.Driver, "sim", "gpio")
		v.oneOf(key+".safe", a.Safe, "low", "high")
		if a.Initial != "" {
			v.oneOf(key+".initial", a.Initial, "low", "high")
		}
		if a.Driver == "gpio" {
			v.gpioLine(key, a.Chip, a.Line)
		}
	}
}

func (v *validation) inputs(inputs []Input) {
	v.inputNames = v.unique("inputs", "name", namesOf(inputs, func(in Input) string { return in.Name }))
	for i, in := range inputs {
		key := fmt.Sprintf("inputs[%d]", i)
		v.oneOf(key+".driver", in.Driver, "sim", "gpio")
		if in.Debounce < 0 {
			v.bad(key+".debounce", "%v is negative", in.Debounce)
		}
		if in.Driver == "gpio" {
			v.gpioLine(key, in.Chip, in.Line)
		}
	}
}

// gpioLine checks the chip and line of a gpio actuator or input at key: each needs
// both, and one line serves one actuator or input.
func (v *validation) gpioLine(key, chip, line string) {
	if chip == "" {
		v.bad(key+".chip", "the gpio driver needs a chip: its label (pinctrl-rp1 on a Raspberry Pi 5, pinctrl-bcm2711 on a Pi 4), name (gpiochip0) or path (/dev/gpiochip0)")
	} else if strings.TrimSpace(chip) != chip {
		v.bad(key+".chip", "%q has surrounding spaces", chip)
	}
	switch off, err := strconv.Atoi(line); {
	case line == "":
		v.bad(key+".line", "the gpio driver needs a line name or offset, e.g. GPIO17 or 17")
	case err == nil && off < 0:
		v.bad(key+".line", "%d is a negative offset; give a line name (GPIO17) or an offset from 0", off)
	case strings.TrimSpace(line) != line:
		v.bad(key+".line", "%q has surrounding spaces", line)
	}
	if chip == "" || line == "" {
		return
	}
	id := strings.TrimPrefix(chip, "/dev/") + " line " + line
	if first, ok := v.lineUsers[id]; ok {
		v.bad(key+".line", "%s is already used by %s", id, first)
		return
	}
	v.lineUsers[id] = key
}

// rules checks each rule on its own; the names it gives (camera, interlock, actuator,
// until) are checked by references.
func (v *validation) rules(rules []Rule) {
	v.unique("rules", "name", namesOf(rules, func(r Rule) string { return r.Name }))
	for i, r := range rules {
		key := fmt.Sprintf("rules[%d]", i)
		if r.MinScore < 0 || r.MinScore > 1 {
			v.bad(key+".min_score", "%v is outside 0..1", r.MinScore)
		}
		if r.MinArea < 0 || r.MinArea > 1 {
			v.bad(key+".min_area", "%v is outside 0..1 (a fraction of the frame)", r.MinArea)
		}
		if len(r.Zone) > 0 && len(r.Zone) < 3 {
			v.bad(key+".zone", "a polygon needs at least 3 points, got %d", len(r.Zone))
		}
		for j, p := range r.Zone {
			if len(p) != 2 || p[0] < 0 || p[0] > 1 || p[1] < 0 || p[1] > 1 {
				v.bad(fmt.Sprintf("%s.zone[%d]", key, j), "%v is not a point [x, y] in normalised coordinates 0..1", p)
			}
		}
		if r.Frames.Of < 1 || r.Frames.N < 1 || r.Frames.N > r.Frames.Of {
			v.bad(key+".frames", "n %d of %d: need 1 <= n <= of", r.Frames.N, r.Frames.Of)
		}
		if r.Cooldown < 0 {
			v.bad(key+".cooldown", "%v is negative", r.Cooldown)
		}
		v.oneOf(key+".on_stall", r.OnStall, "safe", "hold")
		if r.ZoneMode != "" {
			v.oneOf(key+".zone_mode", r.ZoneMode, "center", "inside", "overlaps")
		}
		a := r.Action
		if _, known := v.actuatorNames[a.Actuator]; a.Actuator == "" {
			// An event-only rule: it records what it saw and moves nothing.
			if a.Pulse != 0 || a.State != "" || a.Until != "" || r.Hold != 0 {
				v.bad(key+".action.actuator", "pulse, state, until and hold need an actuator")
			}
		} else if known {
			// (An action on an actuator that does not exist is reported as that alone.)
			switch {
			case a.Pulse > 0 && a.State != "":
				v.bad(key+".action", "set either pulse or state, not both")
			case a.Pulse < 0:
				v.bad(key+".action.pulse", "%v is negative", a.Pulse)
			case a.Pulse == 0 && a.State == "":
				v.bad(key+".action", "needs pulse (e.g. 500ms) or state (low or high)")
			case a.State != "":
				v.oneOf(key+".action.state", a.State, "low", "high")
			}
		}
		if a.Until != "" && a.State == "" {
			v.bad(key+".action.until", "only a state action can be latched")
		}
		switch {
		case r.Hold < 0:
			v.bad(key+".hold", "%v is negative", r.Hold)
		case r.Hold > 0 && (a.State == "" || a.Until != ""):
			v.bad(key+".hold", "hold applies to a state action without until")
		}
	}
}

func (v *validation) mqtt(m MQTT) {
	if m.Enabled && len(m.Brokers) == 0 {
		v.bad("mqtt.brokers", "needs at least one broker URL")
	}
	for i, b := range m.Brokers {
		u, err := url.Parse(b)
		if err != nil || u.Host == "" || !slices.Contains([]string{"tcp", "ssl", "tls", "ws", "wss", "mqtt", "mqtts"}, u.Scheme) {
			v.bad(fmt.Sprintf("mqtt.brokers[%d]", i), "%q is not a broker URL like tcp://host:1883 or ssl://host:8883", b)
		}
	}
	v.fileExists("mqtt.ca_file", m.CAFile)
	v.fileExists("mqtt.cert_file", m.CertFile)
	v.fileExists("mqtt.key_file", m.KeyFile)
	if (m.CertFile == "") != (m.KeyFile == "") {
		v.bad("mqtt.key_file", "cert_file and key_file go together")
	}
	if m.TopicPrefix == "" || strings.ContainsAny(m.TopicPrefix, "+#") {
		v.bad("mqtt.topic_prefix", "%q must be non-empty and free of MQTT wildcards", m.TopicPrefix)
	}
	if m.TelemetryInterval <= 0 {
		v.bad("mqtt.telemetry_interval", "%v must be greater than 0", m.TelemetryInterval)
	}
	if m.KeepAlive < time.Second {
		v.bad("mqtt.keepalive", "%v is below 1s", m.KeepAlive)
	}
	v.backoff("mqtt.backoff", m.Backoff)
	if m.Inflight < 1 || m.Inflight > 65535 {
		v.bad("mqtt.inflight", "%d is outside 1..65535", m.Inflight)
	}
}

func (v *validation) outbox(o Outbox) {
	if o.MaxBytes < 1<<20 {
		v.bad("outbox.max_bytes", "%v is below the minimum of 1MiB", o.MaxBytes)
	}
	v.oneOf("outbox.fsync", o.Fsync, "always", "interval")
	if o.FsyncInterval <= 0 {
		v.bad("outbox.fsync_interval", "%v must be greater than 0", o.FsyncInterval)
	}
}

func (v *validation) deploy(d Deploy) {
	if d.MaxBytes < 1<<20 {
		v.bad("deploy.max_bytes", "%v is below the minimum of 1MiB", d.MaxBytes)
	}
	if d.WarmupRuns < 1 {
		v.bad("deploy.warmup_runs", "%d: at least 1 inference must pass before a model goes live", d.WarmupRuns)
	}
	if d.WarmupBudget <= 0 {
		v.bad("deploy.warmup_budget", "%v must be greater than 0", d.WarmupBudget)
	}
	if d.Watch < 0 {
		v.bad("deploy.watch", "%v is negative", d.Watch)
	}
	if d.StallTimeout <= 0 {
		v.bad("deploy.stall_timeout", "%v must be greater than 0", d.StallTimeout)
	}
	if d.MaxSlowdown < 1 {
		v.bad("deploy.max_slowdown", "%v: a factor of at least 1", d.MaxSlowdown)
	}
}

func (v *validation) drift(d Drift) {
	if !d.Enabled {
		return
	}
	if d.Every < 1 {
		v.bad("drift.every", "%d: at least 1", d.Every)
	}
	if d.Baseline < 10 || d.Window < 10 {
		v.bad("drift", "baseline %d and window %d: at least 10 samples each", d.Baseline, d.Window)
	}
	if d.Clear <= 0 || d.Clear > d.Threshold {
		v.bad("drift.clear", "%v must be above 0 and at most drift.threshold (%v)", d.Clear, d.Threshold)
	}
}

// samples checks samples.upload; uploading over MQTT needs the MQTT link.
func (v *validation) samples(s Samples, mqttEnabled bool) {
	u := s.Upload
	if u.Via == "off" {
		return
	}
	v.oneOf("samples.upload.via", u.Via, "off", "http", "mqtt")
	switch u.Via {
	case "http":
		if pu, err := url.Parse(u.URL); u.URL == "" {
			v.bad("samples.upload.url", "missing: the HTTP(S) endpoint samples are PUT to")
		} else if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" || pu.RawQuery != "" || pu.Fragment != "" {
			v.bad("samples.upload.url", "%q is not a URL like https://host/samples", redact.URL(u.URL))
		}
		v.fileExists("samples.upload.ca_file", u.CAFile)
	case "mqtt":
		if !mqttEnabled {
			v.bad("samples.upload.via", "mqtt needs mqtt.enabled: true")
		}
		if u.ChunkSize < 1<<10 || u.ChunkSize > 16<<20 {
			v.bad("samples.upload.chunk_size", "%v is outside 1KiB..16MiB", u.ChunkSize)
		}
	}
	v.backoff("samples.upload.backoff", u.Backoff)
}

func (v *validation) trust(t Trust) {
	for i, k := range t.Keys {
		if b, err := base64.StdEncoding.DecodeString(k); err != nil || len(b) != 32 {
			v.bad(fmt.Sprintf("trust.keys[%d]", i), "not a base64 Ed25519 public key (32 bytes)")
		}
	}
}

func (v *validation) runtimes(r Runtimes) {
	v.fileExists("runtimes.onnxruntime", r.ONNXRuntime)
	v.fileExists("runtimes.tflite", r.TFLite)
	v.fileExists("runtimes.openvino", r.OpenVINO)
}

// references checks every name one section gives another, against the names the
// lists defined: a camera's model, and a rule's camera (and that camera's model's
// labels), interlock, actuator and until.
func (v *validation) references(c *Config) {
	for i, cam := range c.Cameras {
		if _, ok := v.modelNames[cam.Model]; !ok {
			v.bad(fmt.Sprintf("cameras[%d].model", i), "%q is not the name of a model in models", cam.Model)
		}
	}
	for i, r := range c.Rules {
		key := fmt.Sprintf("rules[%d]", i)
		if ci, ok := v.cameraNames[r.Camera]; !ok {
			v.bad(key+".camera", "%q is not the name of a camera in cameras", r.Camera)
		} else if model := c.Cameras[ci].Model; v.manifests[model] != nil {
			man := v.manifests[model]
			for j, l := range r.Labels {
				if !slices.Contains(man.Labels, l) {
					v.bad(fmt.Sprintf("%s.labels[%d]", key, j), "%q is not a label of model %s (%s)", l, model, man.Name)
				}
			}
		}
		if r.Interlock != "" {
			if _, ok := v.inputNames[r.Interlock]; !ok {
				v.bad(key+".interlock", "%q is not the name of an input in inputs", r.Interlock)
			}
		}
		a := r.Action
		if a.Actuator != "" {
			if _, ok := v.actuatorNames[a.Actuator]; !ok {
				v.bad(key+".action.actuator", "%q is not the name of an actuator in actuators", a.Actuator)
			}
		}
		if a.Until != "" && a.State != "" {
			if _, ok := v.inputNames[a.Until]; !ok && a.Until != "ack" {
				v.bad(key+".action.until", "%q is neither an input in inputs nor \"ack\"", a.Until)
			}
		}
	}
}

func namesOf[T any](items []T, name func(T) string) []string {
	names := make([]string, len(items))
	for i, it := range items {
		names[i] = name(it)
	}
	return names
}
