// Package config loads and validates Vigil's configuration: one YAML file (or the
// embedded defaults when there is none) with VIGIL_<SECTION>_<KEY> environment
// overrides. It is the only package that imports viper; everything after Load works
// with the typed Config. Only cmd/vigil and agent import it.
//
// # Defaults
//
// Each section and each list item fills its own defaults (setDefaults, beside its
// type). Load starts from Config's defaults, and the decoder starts every mapping it
// reads into a type that has them (a camera, a rule, a section) from that type's
// defaults, so a key left out keeps its default and an explicit zero (min_score: 0)
// stays zero.
package config

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/vigil-edge/vigil/assets"
)

// Config is the whole configuration. The key names are a contract with users and
// their tools (DESIGN.md, Configuration): add keys freely, rename none.
type Config struct {
	Device    Device     `mapstructure:"device" json:"device"`
	Log       Log        `mapstructure:"log" json:"log"`
	HTTP      HTTP       `mapstructure:"http" json:"http"`
	Cameras   []Camera   `mapstructure:"cameras" json:"cameras"`
	Models    []Model    `mapstructure:"models" json:"models"`
	Actuators []Actuator `mapstructure:"actuators" json:"actuators"`
	Inputs    []Input    `mapstructure:"inputs" json:"inputs"`
	Rules     []Rule     `mapstructure:"rules" json:"rules"`
	MQTT      MQTT       `mapstructure:"mqtt" json:"mqtt"`
	Outbox    Outbox     `mapstructure:"outbox" json:"outbox"`
	Trust     Trust      `mapstructure:"trust" json:"trust"`
	Runtimes  Runtimes   `mapstructure:"runtimes" json:"runtimes"`
	Snapshots Snapshots  `mapstructure:"snapshots" json:"snapshots"`
	Deploy    Deploy     `mapstructure:"deploy" json:"deploy"`
	Drift     Drift      `mapstructure:"drift" json:"drift"`
	Samples   Samples    `mapstructure:"samples" json:"samples"`

	// Source is the file the config came from; "" for the embedded defaults.
	Source string `mapstructure:"-" json:"source"`
}

// setDefaults fills every section. The lists start empty: their items get their
// defaults as the decoder reads them, and setListDefaults fills lists left out.
func (c *Config) setDefaults() {
	c.Device.setDefaults()
	c.Log.setDefaults()
	c.HTTP.setDefaults()
	c.MQTT.setDefaults()
	c.Outbox.setDefaults()
	c.Trust.setDefaults()
	c.Snapshots.setDefaults()
	c.Deploy.setDefaults()
	c.Drift.setDefaults()
	c.Samples.setDefaults()
}

// setListDefaults fills the lists a config leaves out. It runs after decoding: a
// missing models list and an empty one differ (models: [] loads no model), and the
// sample camera's clip lies under device.state_dir, which the environment may set.
// Without a config file (fromFile false) Vigil watches the bundled clip: a file
// camera, the bundled model, a simulated relay and a rule that pulses it when a person
// appears.
func (c *Config) setListDefaults(fromFile bool) {
	if c.Models == nil {
		// A config without a models section still has the bundled model, as "default".
		m := Model{}
		m.setDefaults()
		m.Name = "default"
		c.Models = []Model{m}
	}
	if fromFile {
		return
	}
	cam := Camera{}
	cam.setDefaults()
	cam.Name, cam.URL, cam.DetectFPS = SampleCamera, "file://"+filepath.ToSlash(sampleClip(c.Device.StateDir)), 10
	relay := Actuator{}
	relay.setDefaults()
	relay.Name, relay.Driver, relay.Safe = "line-stop", "sim", "low"
	rule := Rule{}
	rule.setDefaults()
	rule.Name, rule.Camera, rule.Labels, rule.MinScore = "stop-on-person", SampleCamera, []string{"person"}, 0.5
	rule.Cooldown, rule.Action = 5*time.Second, Action{Actuator: relay.Name, Pulse: 500 * time.Millisecond}
	c.Cameras, c.Actuators, c.Rules = []Camera{cam}, []Actuator{relay}, []Rule{rule}
}

// SampleCamera is the camera Vigil watches without a config file: the bundled clip.
const SampleCamera = "sample"

// sampleClip is the bundled clip's path under the state directory: the agent extracts
// the assets to device.state_dir/bundled at start (agent.New), and assets owns where
// the clip sits among them.
func sampleClip(stateDir string) string {
	return filepath.Join(stateDir, "bundled", assets.SampleClip)
}

// Device identifies this device.
type Device struct {
	ID       string `mapstructure:"id" json:"id"`       // default: hostname
	Group    string `mapstructure:"group" json:"group"` // optional
	StateDir string `mapstructure:"state_dir" json:"state_dir"`
}

func (d *Device) setDefaults() {
	d.ID = defaultDeviceID()
	d.StateDir = "./var"
}

var hostnameJunk = regexp.MustCompile(`[^a-z0-9_-]+`)

// defaultDeviceID is the hostname, made fit for an MQTT topic segment.
func defaultDeviceID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "vigil"
	}
	return strings.Trim(hostnameJunk.ReplaceAllString(strings.ToLower(h), "-"), "-")
}

// Log sets the logger.
type Log struct {
	Level  string `mapstructure:"level" json:"level"`   // debug | info | warn | error
	Format string `mapstructure:"format" json:"format"` // text | json
}

func (l *Log) setDefaults() {
	l.Level, l.Format = "info", "text"
}

// HTTP is the status page and API.
type HTTP struct {
	Listen string `mapstructure:"listen" json:"listen"`
	Token  string `mapstructure:"token" json:"-"`
	// ReadToken, when set, is needed to read the status page, the API and the metrics
	// too (http.token also reads); empty: reading is open on the listen address.
	ReadToken string `mapstructure:"read_token" json:"-"`
	// POST /api/infer: the largest image body, and how many run at once.
	InferMaxBytes    ByteSize `mapstructure:"infer_max_bytes" json:"infer_max_bytes"`
	InferConcurrency int      `mapstructure:"infer_concurrency" json:"infer_concurrency"`
}

func (h *HTTP) setDefaults() {
	h.Listen = "127.0.0.1:8080"
	h.InferMaxBytes, h.InferConcurrency = 8<<20, 1
}

// Camera is one frame source.
type Camera struct {
	Name          string        `mapstructure:"name" json:"name"`
	URL           string        `mapstructure:"url" json:"url"`
	RTSPTransport string        `mapstructure:"rtsp_transport" json:"rtsp_transport"`
	DetectFPS     float64       `mapstructure:"detect_fps" json:"detect_fps"`
	StallTimeout  time.Duration `mapstructure:"stall_timeout" json:"stall_timeout"`
	Backoff       Backoff       `mapstructure:"backoff" json:"backoff"`
	Model         string        `mapstructure:"model" json:"model"`
	// StoreFrames false keeps every frame of this camera off the disk (no samples for
	// retraining; privacy).
	StoreFrames bool `mapstructure:"store_frames" json:"store_frames"`
}

func (c *Camera) setDefaults() {
	c.RTSPTransport = "tcp"
	c.DetectFPS = 5
	c.StallTimeout = 10 * time.Second
	c.Backoff = Backoff{Min: 500 * time.Millisecond, Max: 30 * time.Second}
	c.Model = "default"
	c.StoreFrames = true
}

// Backoff bounds the wait between reconnection attempts.
type Backoff struct {
	Min time.Duration `mapstructure:"min" json:"min"`
	Max time.Duration `mapstructure:"max" json:"max"`
}

// Model is one loaded model bundle.
type Model struct {
	Name    string `mapstructure:"name" json:"name"`
	Bundle  string `mapstructure:"bundle" json:"bundle"`   // directory with model.yaml; "" = the bundled one
	Backend string `mapstructure:"backend" json:"backend"` // "" = the bundle's preference
	Device  string `mapstructure:"device" json:"device"`
	Threads int    `mapstructure:"threads" json:"threads"`
	// Optimization is ONNX Runtime's graph optimisation level; "" = all.
	Optimization string `mapstructure:"optimization" json:"optimization"`
	// Shadow runs a candidate bundle beside this model on a sample of its frames and
	// reports how far they agree, before anyone promotes it.
	Shadow Shadow `mapstructure:"shadow" json:"shadow"`
}

func (m *Model) setDefaults() {
	m.Device = "CPU"
}

// Shadow is a candidate model evaluated in the shadow of a running one.
type Shadow struct {
	Bundle  string `mapstructure:"bundle" json:"bundle"`   // "" = no shadow
	Backend string `mapstructure:"backend" json:"backend"` // "" = the bundle's preference
	Every   int    `mapstructure:"every" json:"every"`     // one detected frame in Every; 0 = 10
}

// Actuator is one output.
type Actuator struct {
	Name      string `mapstructure:"name" json:"name"`
	Driver    string `mapstructure:"driver" json:"driver"` // sim | gpio
	Chip      string `mapstructure:"chip" json:"chip"`
	Line      string `mapstructure:"line" json:"line"`
	ActiveLow bool   `mapstructure:"active_low" json:"active_low"`
	Safe      string `mapstructure:"safe" json:"safe"` // low | high
	// Initial is the normal operating level, driven once the pipeline runs and when a
	// rule releases the actuator; "" = the safe level.
	Initial string `mapstructure:"initial" json:"initial"`
}

func (a *Actuator) setDefaults() {
	a.Driver, a.Safe = "sim", "low"
}

// Input is one digital input (an operator's button, an interlock).
type Input struct {
	Name   string `mapstructure:"name" json:"name"`
	Driver string `mapstructure:"driver" json:"driver"` // gpio | sim
	Chip   string `mapstructure:"chip" json:"chip"`
	Line   string `mapstructure:"line" json:"line"`
	// ActiveLow: the input is active (logical high) when the line is electrically low,
	// as with a button to ground and a pull-up.
	ActiveLow bool          `mapstructure:"active_low" json:"active_low"`
	Debounce  time.Duration `mapstructure:"debounce" json:"debounce"`
}

func (in *Input) setDefaults() {
	in.Driver = "gpio"
	in.Debounce = 50 * time.Millisecond
}

// Rule turns detections on one camera into an action.
type Rule struct {
	Name     string      `mapstructure:"name" json:"name"`
	Camera   string      `mapstructure:"camera" json:"camera"`
	Labels   []string    `mapstructure:"labels" json:"labels"` // empty: any label
	MinScore float64     `mapstructure:"min_score" json:"min_score"`
	MinArea  float64     `mapstructure:"min_area" json:"min_area"`   // fraction of the frame, 0..1
	Zone     [][]float64 `mapstructure:"zone" json:"zone"`           // normalised polygon; empty: whole frame
	ZoneMode string      `mapstructure:"zone_mode" json:"zone_mode"` // center | inside | overlaps
	Frames   Frames      `mapstructure:"frames" json:"frames"`
	// Hold keeps a state action's level for this long after the last matching frame.
	Hold     time.Duration `mapstructure:"hold" json:"hold"`
	Cooldown time.Duration `mapstructure:"cooldown" json:"cooldown"`
	// Interlock names an input that must be high for the rule to fire (e.g. "robot
	// running"); "" = always armed.
	Interlock string `mapstructure:"interlock" json:"interlock"`
	Action    Action `mapstructure:"action" json:"action"`
	OnStall   string `mapstructure:"on_stall" json:"on_stall"` // safe | hold
}

func (r *Rule) setDefaults() {
	r.MinScore = 0.5
	r.Frames = Frames{N: 1, Of: 1}
	r.OnStall = "safe"
}

// Frames asks for N matching frames among the last Of.
type Frames struct {
	N  int `mapstructure:"n" json:"n"`
	Of int `mapstructure:"of" json:"of"`
}

// Action is what a rule does when it fires: pulse an actuator, or set it to a state
// (held while the rule matches, or latched until an input or an API acknowledge), or,
// with no actuator, only record the event. Every firing is an event with a snapshot.
type Action struct {
	Actuator string        `mapstructure:"actuator" json:"actuator"`
	Pulse    time.Duration `mapstructure:"pulse" json:"pulse"`
	State    string        `mapstructure:"state" json:"state"` // low | high
	Until    string        `mapstructure:"until" json:"until"` // input name, or "ack"
}

// MQTT is the link to the cloud.
type MQTT struct {
	Enabled           bool          `mapstructure:"enabled" json:"enabled"`
	Brokers           []string      `mapstructure:"brokers" json:"brokers"`
	Username          string        `mapstructure:"username" json:"username"`
	Password          string        `mapstructure:"password" json:"-"`
	CAFile            string        `mapstructure:"ca_file" json:"ca_file"`
	CertFile          string        `mapstructure:"cert_file" json:"cert_file"`
	KeyFile           string        `mapstructure:"key_file" json:"key_file"`
	ServerName        string        `mapstructure:"server_name" json:"server_name"` // TLS name to verify; default: the broker's host
	TopicPrefix       string        `mapstructure:"topic_prefix" json:"topic_prefix"`
	TelemetryInterval time.Duration `mapstructure:"telemetry_interval" json:"telemetry_interval"`
	KeepAlive         time.Duration `mapstructure:"keepalive" json:"keepalive"`
	Backoff           Backoff       `mapstructure:"backoff" json:"backoff"`
	Inflight          int           `mapstructure:"inflight" json:"inflight"` // messages published and not yet acknowledged
}

func (m *MQTT) setDefaults() {
	m.Brokers = []string{"tcp://127.0.0.1:1883"}
	m.TopicPrefix = "vigil"
	m.TelemetryInterval, m.KeepAlive = 30*time.Second, 30*time.Second
	m.Backoff = Backoff{Min: time.Second, Max: time.Minute}
	m.Inflight = 64
}

// Outbox is the durable queue of outgoing messages.
type Outbox struct {
	MaxBytes      ByteSize      `mapstructure:"max_bytes" json:"max_bytes"`
	Fsync         string        `mapstructure:"fsync" json:"fsync"` // always | interval
	FsyncInterval time.Duration `mapstructure:"fsync_interval" json:"fsync_interval"`
}

func (o *Outbox) setDefaults() {
	o.MaxBytes = 256 << 20
	o.Fsync, o.FsyncInterval = "interval", 100*time.Millisecond
}

// Trust lists the keys that may sign model deployments.
type Trust struct {
	Keys []string `mapstructure:"keys" json:"keys"`
}

func (t *Trust) setDefaults() {
	t.Keys = []string{} // no keys; empty rather than nil, as it always decoded
}

// Deploy governs models pushed over MQTT (trust.keys says who may sign them).
type Deploy struct {
	// MaxBytes refuses a bundle larger than this before any of it is downloaded.
	MaxBytes ByteSize `mapstructure:"max_bytes" json:"max_bytes"`
	// WarmupRuns inferences must each finish within WarmupBudget before a new model
	// goes live.
	WarmupRuns   int           `mapstructure:"warmup_runs" json:"warmup_runs"`
	WarmupBudget time.Duration `mapstructure:"warmup_budget" json:"warmup_budget"`
	// Watch is how long after going live a model is rolled back on detection errors or
	// when its median inference time exceeds MaxSlowdown times the previous model's.
	Watch       time.Duration `mapstructure:"watch" json:"watch"`
	MaxSlowdown float64       `mapstructure:"max_slowdown" json:"max_slowdown"`
	// StallTimeout rejects a transfer that receives nothing for this long (after one
	// renewed subscription), so that it cannot block the deployments behind it.
	StallTimeout time.Duration `mapstructure:"stall_timeout" json:"stall_timeout"`
}

func (d *Deploy) setDefaults() {
	d.MaxBytes = 512 << 20
	d.WarmupRuns, d.WarmupBudget = 5, 2*time.Second
	d.Watch, d.MaxSlowdown = 30*time.Second, 3
	d.StallTimeout = 2 * time.Minute
}

// Drift compares what each camera sees (brightness, contrast, sharpness, colour, objects, scores, classes)
// with a baseline recorded when its model went live (infer/drift).
type Drift struct {
	Enabled bool `mapstructure:"enabled" json:"enabled"`
	// Every samples one detected frame in Every; Baseline and Window are in samples.
	Every     int     `mapstructure:"every" json:"every"`
	Baseline  int     `mapstructure:"baseline" json:"baseline"`
	Window    int     `mapstructure:"window" json:"window"`
	Threshold float64 `mapstructure:"threshold" json:"threshold"` // PSI above which a camera drifts
	Clear     float64 `mapstructure:"clear" json:"clear"`         // PSI below which it stops
}

func (d *Drift) setDefaults() {
	d.Enabled = true
	d.Every, d.Baseline, d.Window = 5, 600, 600
	d.Threshold, d.Clear = 0.25, 0.1
}

// Samples are frames kept for retraining: where the model is unsure, where the camera
// drifts, or that an operator flags.
type Samples struct {
	MaxBytes ByteSize      `mapstructure:"max_bytes" json:"max_bytes"` // 0: none are kept
	Near     float64       `mapstructure:"near" json:"near"`           // "unsure": a score under the threshold + near
	Interval time.Duration `mapstructure:"interval" json:"interval"`   // at most one sample per camera this often
	Upload   SamplesUpload `mapstructure:"upload" json:"upload"`
}

func (s *Samples) setDefaults() {
	s.MaxBytes = 256 << 20
	s.Near, s.Interval = 0.1, 10*time.Second
	s.Upload.setDefaults()
}

// SamplesUpload sends the samples off the device, oldest first, each once.
type SamplesUpload struct {
	Via string `mapstructure:"via" json:"via"` // off | http | mqtt
	// http: each file is PUT to URL/<device>/<file>, with Token as a bearer token if
	// set; CAFile is the CA to trust for https (default: the system's roots).
	URL    string `mapstructure:"url" json:"url"`
	Token  string `mapstructure:"token" json:"-"`
	CAFile string `mapstructure:"ca_file" json:"ca_file"`
	// mqtt: each file goes over the MQTT link in chunks of at most ChunkSize.
	ChunkSize ByteSize `mapstructure:"chunk_size" json:"chunk_size"`
	// Backoff is the delay before retrying while the endpoint or broker is down.
	Backoff Backoff `mapstructure:"backoff" json:"backoff"`
}

// setDefaults leaves uploading off until a destination is chosen.
func (u *SamplesUpload) setDefaults() {
	u.Via = "off"
	u.ChunkSize = 64 << 10
	u.Backoff = Backoff{Min: time.Second, Max: 5 * time.Minute}
}

// Snapshots are the frames saved with rule events.
type Snapshots struct {
	MaxBytes ByteSize `mapstructure:"max_bytes" json:"max_bytes"` // 0: none are saved
}

func (s *Snapshots) setDefaults() {
	s.MaxBytes = 64 << 20
}

// Runtimes locates inference runtime libraries; empty means the system's search path.
type Runtimes struct {
	ONNXRuntime string `mapstructure:"onnxruntime" json:"onnxruntime"` // libonnxruntime.so.1
	TFLite      string `mapstructure:"tflite" json:"tflite"`           // libtensorflowlite_c.so
	OpenVINO    string `mapstructure:"openvino" json:"openvino"`       // libopenvino_c.so
}

// ModelNamed returns the model with the given name, or nil.
func (c *Config) ModelNamed(name string) *Model {
	for i := range c.Models {
		if c.Models[i].Name == name {
			return &c.Models[i]
		}
	}
	return nil
}

// RuleNamed returns the rule with the given name, or nil.
func (c *Config) RuleNamed(name string) *Rule {
	for i := range c.Rules {
		if c.Rules[i].Name == name {
			return &c.Rules[i]
		}
	}
	return nil
}

// ActuatorNamed returns the actuator with the given name, or nil.
func (c *Config) ActuatorNamed(name string) *Actuator {
	for i := range c.Actuators {
		if c.Actuators[i].Name == name {
			return &c.Actuators[i]
		}
	}
	return nil
}
