package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"

	"github.com/vigil-edge/vigil/assets"
)

// DefaultPath is where Load looks when no path is given.
const DefaultPath = "/etc/vigil/vigil.yaml"

// EnvPrefix starts every environment override: VIGIL_HTTP_LISTEN, VIGIL_MQTT_ENABLED, ...
const EnvPrefix = "VIGIL"

// Load reads the config at path, or the embedded defaults when path is "" and
// DefaultPath does not exist, applies environment overrides and validates. A config
// with problems returns Errors, one per problem, each naming its key.
func Load(path string) (*Config, error) {
	source := path
	if source == "" {
		if _, err := os.Stat(DefaultPath); err == nil {
			source = DefaultPath
		}
	}

	v := viper.New()
	v.SetConfigType("yaml")
	for key, value := range scalarDefaults() {
		v.SetDefault(key, value)
	}
	// A config without a models section still has the bundled model, as "default".
	v.SetDefault("models", []any{map[string]any{"name": "default"}})
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()

	if source != "" {
		f, err := os.Open(source)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		err = v.ReadConfig(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("config %s: %w", source, err)
		}
	} else {
		for key, value := range sampleDefaults(v.GetString("device.state_dir")) {
			v.SetDefault(key, value)
		}
	}

	// List items get their defaults key by key, before decoding, so an explicit zero
	// (min_score: 0) stays zero.
	settings := v.AllSettings()
	for list, defaults := range itemDefaults {
		items, _ := settings[list].([]any)
		for _, item := range items {
			if m, ok := item.(map[string]any); ok {
				fillDefaults(m, defaults)
			}
		}
	}

	var cfg Config
	dc := &mapstructure.DecoderConfig{
		Result:           &cfg,
		ErrorUnused:      true,
		WeaklyTypedInput: true, // environment values arrive as strings
		DecodeHook:       mapstructure.ComposeDecodeHookFunc(durationHook, byteSizeHook, stringListHook),
	}
	dec, err := mapstructure.NewDecoder(dc)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var errs Errors
	if err := dec.Decode(settings); err != nil {
		errs = append(errs, decodeErrors(err)...)
	}
	cfg.Source = source
	// A key that could not be decoded holds its zero value: say what was wrong with
	// it once, not again as "0 must be greater than 0".
	for _, e := range cfg.validate() {
		if !slices.ContainsFunc(errs, func(d Error) bool { return d.Key == e.Key }) {
			errs = append(errs, e)
		}
	}
	errs = append(errs, unknownEnv(v)...)
	if len(errs) > 0 {
		errs.sort()
		return &cfg, errs
	}
	return &cfg, nil
}

// scalarDefaults are the defaults of every key outside the lists. Setting them also
// tells viper which VIGIL_ environment variables exist.
func scalarDefaults() map[string]any {
	return map[string]any{
		"device.id":               defaultDeviceID(),
		"device.group":            "",
		"device.state_dir":        "./var",
		"log.level":               "info",
		"log.format":              "text",
		"http.listen":             "127.0.0.1:8080",
		"http.token":              "",
		"http.read_token":         "",
		"http.infer_max_bytes":    "8MiB",
		"http.infer_concurrency":  1,
		"mqtt.enabled":            false,
		"mqtt.brokers":            []string{"tcp://127.0.0.1:1883"},
		"mqtt.username":           "",
		"mqtt.password":           "",
		"mqtt.ca_file":            "",
		"mqtt.cert_file":          "",
		"mqtt.key_file":           "",
		"mqtt.server_name":        "",
		"mqtt.topic_prefix":       "vigil",
		"mqtt.telemetry_interval": "30s",
		"mqtt.keepalive":          "30s",
		"mqtt.backoff.min":        "1s",
		"mqtt.backoff.max":        "60s",
		"mqtt.inflight":           64,
		"outbox.max_bytes":        "256MiB",
		"outbox.fsync":            "interval",
		"outbox.fsync_interval":   "100ms",
		"trust.keys":              []string{},
		"runtimes.onnxruntime":    "",
		"snapshots.max_bytes":     "64MiB",
		"deploy.max_bytes":        "512MiB",
		"deploy.warmup_runs":      5,
		"deploy.warmup_budget":    "2s",
		"deploy.watch":            "30s",
		"deploy.max_slowdown":     3.0,
		"deploy.stall_timeout":    "2m",
		"samples.max_bytes":       "256MiB",
		"samples.near":            0.1,
		"samples.interval":        "10s",
		"drift.enabled":           true,
		"drift.every":             5,
		"drift.baseline":          600,
		"drift.window":            600,
		"drift.threshold":         0.25,
		"drift.clear":             0.1,
		"runtimes.tflite":         "",
		"runtimes.openvino":       "",

		// Uploading samples (samples.upload) is off until a destination is chosen.
		"samples.upload.via":         "off",
		"samples.upload.url":         "",
		"samples.upload.token":       "",
		"samples.upload.ca_file":     "",
		"samples.upload.chunk_size":  "64KiB",
		"samples.upload.backoff.min": "1s",
		"samples.upload.backoff.max": "5m",
	}
}

// SampleCamera is the camera the embedded defaults watch: the bundled clip.
const SampleCamera = "sample"

// sampleClip is the bundled clip's path under the state directory: the agent extracts
// the assets to device.state_dir/bundled at start (agent.New), and assets owns where
// the clip sits among them.
func sampleClip(stateDir string) string {
	return filepath.Join(stateDir, "bundled", assets.SampleClip)
}

// sampleDefaults are the lists used when there is no config file at all: the bundled
// clip as a file camera, the bundled model, a simulated relay and a rule that pulses
// it when a person appears.
func sampleDefaults(stateDir string) map[string]any {
	return map[string]any{
		"cameras": []any{map[string]any{
			"name": SampleCamera, "url": "file://" + filepath.ToSlash(sampleClip(stateDir)), "detect_fps": 10,
		}},
		"actuators": []any{map[string]any{"name": "line-stop", "driver": "sim", "safe": "low"}},
		"rules": []any{map[string]any{
			"name": "stop-on-person", "camera": SampleCamera, "labels": []any{"person"}, "min_score": 0.5,
			"cooldown": "5s", "action": map[string]any{"actuator": "line-stop", "pulse": "500ms"},
		}},
	}
}

// itemDefaults fill keys missing from each item of a list.
var itemDefaults = map[string]map[string]any{
	"cameras": {
		"rtsp_transport": "tcp", "detect_fps": 5, "stall_timeout": "10s", "model": "default", "store_frames": true,
		"backoff": map[string]any{"min": "500ms", "max": "30s"},
	},
	"models":    {"device": "CPU"},
	"actuators": {"driver": "sim", "safe": "low"},
	"inputs":    {"driver": "gpio", "debounce": "50ms"},
	"rules": {
		"min_score": 0.5, "frames": map[string]any{"n": 1, "of": 1}, "on_stall": "safe",
	},
}

func fillDefaults(item, defaults map[string]any) {
	for k, dv := range defaults {
		cur, ok := item[k]
		if !ok || cur == nil {
			if m, isMap := dv.(map[string]any); isMap {
				dv = copyMap(m)
			}
			item[k] = dv
			continue
		}
		if sub, isMap := dv.(map[string]any); isMap {
			if m, ok := cur.(map[string]any); ok {
				fillDefaults(m, sub)
			}
		}
	}
}

func copyMap(m map[string]any) map[string]any {
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

var hostnameJunk = regexp.MustCompile(`[^a-z0-9_-]+`)

func defaultDeviceID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "vigil"
	}
	return strings.Trim(hostnameJunk.ReplaceAllString(strings.ToLower(h), "-"), "-")
}

var durationType = reflect.TypeOf(time.Duration(0))

// durationHook accepts Go durations ("500ms", "10s"). A bare number is refused: 500
// would silently mean 500 nanoseconds.
func durationHook(from, to reflect.Type, data any) (any, error) {
	if to != durationType {
		return data, nil
	}
	switch from.Kind() {
	case reflect.String:
		d, err := time.ParseDuration(data.(string))
		if err != nil {
			return nil, fmt.Errorf("%q is not a duration; write it with a unit, like 500ms or 10s", data)
		}
		return d, nil
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint64, reflect.Float64, reflect.Float32:
		if reflect.ValueOf(data).IsZero() {
			return time.Duration(0), nil
		}
		return nil, fmt.Errorf("%v has no unit; write a duration like 500ms or 10s", data)
	}
	return data, nil
}

var byteSizeType = reflect.TypeOf(ByteSize(0))

func byteSizeHook(from, to reflect.Type, data any) (any, error) {
	if to != byteSizeType || from.Kind() != reflect.String {
		return data, nil
	}
	return ParseByteSize(data.(string))
}

// stringListHook lets an environment variable set a list: VIGIL_MQTT_BROKERS="tcp://a:1883,tcp://b:1883".
func stringListHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String || to.Kind() != reflect.Slice || to.Elem().Kind() != reflect.String {
		return data, nil
	}
	s := strings.TrimSpace(data.(string))
	if s == "" {
		return []string{}, nil
	}
	parts := strings.Split(s, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts, nil
}

// decodeErrors turns mapstructure's wrapped and joined errors into one Error per key.
func decodeErrors(err error) Errors {
	var out Errors
	var walk func(error)
	walk = func(err error) {
		if de, ok := err.(*mapstructure.DecodeError); ok {
			out = append(out, fromDecodeError(de)...)
			return
		}
		if joined, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range joined.Unwrap() {
				walk(e)
			}
			return
		}
		if inner := errors.Unwrap(err); inner != nil {
			walk(inner)
			return
		}
		out = append(out, Error{Msg: err.Error()})
	}
	walk(err)
	return out
}

func fromDecodeError(de *mapstructure.DecodeError) Errors {
	inner := de.Unwrap()
	var parseErr *mapstructure.ParseError
	var typeErr *mapstructure.UnconvertibleTypeError
	switch {
	case strings.HasPrefix(inner.Error(), "has invalid keys: "):
		var out Errors
		for _, k := range strings.Split(strings.TrimPrefix(inner.Error(), "has invalid keys: "), ", ") {
			out = append(out, Error{Key: joinKey(de.Name(), k), Msg: "unknown key"})
		}
		return out
	case errors.As(inner, &parseErr):
		return Errors{{Key: de.Name(), Msg: fmt.Sprintf("cannot read %q as %s", fmt.Sprint(parseErr.Value), typeName(parseErr.Expected.Type()))}}
	case errors.As(inner, &typeErr):
		return Errors{{Key: de.Name(), Msg: fmt.Sprintf("want %s, got %s %v", typeName(typeErr.Expected.Type()), typeName(reflect.TypeOf(typeErr.Value)), typeErr.Value)}}
	}
	return Errors{{Key: de.Name(), Msg: inner.Error()}}
}

// typeName says a Go type in the words of a YAML user.
func typeName(t reflect.Type) string {
	if t == nil {
		return "nothing"
	}
	switch t.Kind() {
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping"
	}
	return t.String()
}

func joinKey(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// unknownEnv reports VIGIL_ variables that match no key: a typo in a unit file's
// Environment= would otherwise be ignored without a word.
func unknownEnv(v *viper.Viper) Errors {
	known := map[string]bool{}
	for _, k := range v.AllKeys() {
		known[EnvPrefix+"_"+strings.ToUpper(strings.ReplaceAll(k, ".", "_"))] = true
	}
	var errs Errors
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix+"_") || known[name] || slices.Contains(nonConfigEnv, name) {
			continue
		}
		errs = append(errs, Error{Key: name, Msg: "environment variable matches no config key (overrides are VIGIL_<SECTION>_<KEY>, e.g. VIGIL_HTTP_LISTEN; list items cannot be overridden)"})
	}
	return errs
}

// nonConfigEnv are VIGIL_ variables with other meanings.
var nonConfigEnv = []string{"VIGIL_CONFIG"}
