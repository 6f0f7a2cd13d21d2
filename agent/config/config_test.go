package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/assets"
	"github.com/vigil-edge/vigil/capture/camurl"
)

func TestGoodConfig(t *testing.T) {
	cfg, err := Load(filepath.Join("testdata", "good.yaml"))
	if err != nil {
		t.Fatalf("good config rejected:\n%v", err)
	}
	if cfg.Device.ID != "gate-07" || cfg.HTTP.Token != "secret" || cfg.Log.Format != "json" {
		t.Errorf("scalars not read: %+v", cfg)
	}
	door, bench := cfg.Cameras[0], cfg.Cameras[1]
	if door.RTSPTransport != "tcp" || door.StallTimeout != 10*time.Second || door.Backoff.Max != 30*time.Second || door.Model != "default" {
		t.Errorf("camera defaults not applied: %+v", door)
	}
	if bench.RTSPTransport != "udp" || bench.Backoff.Min != 100*time.Millisecond || bench.DetectFPS != 5 {
		t.Errorf("camera values not read: %+v", bench)
	}
	if r := cfg.Rules[0]; r.MinScore != 0 || r.Frames != (Frames{3, 5}) || len(r.Zone) != 4 {
		t.Errorf("an explicit min_score 0 must stay 0, frames and zone read: %+v", r)
	}
	if r := cfg.Rules[1]; r.MinScore != 0.5 || r.Frames != (Frames{1, 1}) || r.Action.State != "low" || r.OnStall != "hold" {
		t.Errorf("rule defaults: %+v", r)
	}
	if a := cfg.Actuators[2]; a.Driver != "gpio" || a.Chip != "/dev/gpiochip0" || a.Line != "17" || !a.ActiveLow || a.Safe != "low" {
		t.Errorf("gpio actuator: %+v", a)
	}
	if in := cfg.Inputs[0]; in.Driver != "gpio" || in.Line != "GPIO27" || !in.ActiveLow || in.Debounce != 50*time.Millisecond {
		t.Errorf("gpio input: %+v", in)
	}
	if in := cfg.Inputs[1]; in.ActiveLow || in.Line != "0" || in.Debounce != 50*time.Millisecond {
		t.Errorf("input defaults: %+v", in)
	}
	if in := cfg.Inputs[2]; in.Driver != "sim" {
		t.Errorf("sim input: %+v", in)
	}
	if cfg.Outbox.MaxBytes != 64<<20 || cfg.Outbox.Fsync != "always" {
		t.Errorf("outbox: %+v", cfg.Outbox)
	}
	if u := cfg.Samples.Upload; u.Via != "http" || u.URL != "https://samples.example.com/in" || u.Token != "t0k" ||
		u.ChunkSize != 64<<10 || u.Backoff != (Backoff{time.Second, 5 * time.Minute}) {
		t.Errorf("samples.upload: %+v", u)
	}
}

func TestEmbeddedDefaults(t *testing.T) {
	t.Chdir(t.TempDir()) // no ./var, and /etc/vigil/vigil.yaml must not exist on test machines
	if _, err := os.Stat(DefaultPath); err == nil {
		t.Skipf("SKIPPED: %s exists on this machine, so the embedded defaults are not used", DefaultPath)
	}
	cfg, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Source != "" || len(cfg.Cameras) != 1 || cfg.Cameras[0].Name != SampleCamera || cfg.MQTT.Enabled {
		t.Fatalf("unexpected defaults: %+v", cfg)
	}
	if u, err := camurl.Parse(cfg.Cameras[0].URL); err != nil || u.Kind != "file" || u.Target != filepath.Join("var", "bundled", assets.SampleClip) {
		t.Errorf("sample camera url %q -> %+v, %v", cfg.Cameras[0].URL, u, err)
	}
	if r := cfg.Rules[0]; r.Action.Actuator != "line-stop" || r.Action.Pulse != 500*time.Millisecond || !slices.Equal(r.Labels, []string{"person"}) {
		t.Errorf("default rule: %+v", r)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	t.Setenv("VIGIL_HTTP_LISTEN", "0.0.0.0:9090")
	t.Setenv("VIGIL_OUTBOX_FSYNC", "always")
	t.Setenv("VIGIL_DEVICE_STATE_DIR", "/srv/vigil")
	t.Setenv("VIGIL_MQTT_BROKERS", "tcp://a:1883, ssl://b:8883")
	cfg, err := Load(filepath.Join("testdata", "good.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTP.Listen != "0.0.0.0:9090" || cfg.Outbox.Fsync != "always" || cfg.Device.StateDir != "/srv/vigil" {
		t.Errorf("environment did not override the file: %+v", cfg)
	}
	if !slices.Equal(cfg.MQTT.Brokers, []string{"tcp://a:1883", "ssl://b:8883"}) {
		t.Errorf("brokers from env: %q", cfg.MQTT.Brokers)
	}
}

func TestUnknownEnvironmentVariable(t *testing.T) {
	t.Setenv("VIGIL_HTTP_LISTN", "0.0.0.0:9090")
	_, err := Load(filepath.Join("testdata", "good.yaml"))
	if err == nil || !strings.Contains(err.Error(), "VIGIL_HTTP_LISTN: environment variable matches no config key") {
		t.Fatalf("typo in an environment variable not reported: %v", err)
	}
}

// Every key outside the lists has its VIGIL_ variable, derived from the struct tags.
func TestEnvKeys(t *testing.T) {
	keys := envKeys()
	for _, k := range []string{"device.id", "http.listen", "mqtt.brokers", "mqtt.backoff.min", "trust.keys", "samples.upload.backoff.max", "runtimes.openvino"} {
		if !slices.Contains(keys, k) {
			t.Errorf("%s cannot be set from the environment", k)
		}
	}
	for _, k := range keys {
		if strings.HasPrefix(k, "cameras") || strings.HasPrefix(k, "models") || strings.HasPrefix(k, "rules") || k == "source" {
			t.Errorf("%s: list items and Source cannot be set from the environment", k)
		}
	}
	t.Setenv("VIGIL_SAMPLES_UPLOAD_BACKOFF_MAX", "1m")
	t.Setenv("VIGIL_DEPLOY_MAX_SLOWDOWN", "2.5")
	cfg, err := Load(filepath.Join("testdata", "good.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Samples.Upload.Backoff.Max != time.Minute || cfg.Deploy.MaxSlowdown != 2.5 {
		t.Errorf("nested overrides not applied: %+v, %+v", cfg.Samples.Upload.Backoff, cfg.Deploy)
	}
}

// Each bad config must produce exactly these messages, one per problem, naming the key.
var badConfigs = map[string][]string{
	"unknown-key": {
		"cameras[0].detect_fsp: unknown key",
		"htp: unknown key",
	},
	"unknown-key-beside-bad-value": {
		`cameras[0].detect_fps: cannot read "fast" as a number`,
		"cameras[0].stall_timout: unknown key",
		"htp: unknown key",
		`mqtt.enabled: cannot read "maybe" as true or false`,
		"mqtt.keep_alive: unknown key",
	},
	"wrong-type": {
		`cameras[0].detect_fps: cannot read "fast" as a number`,
		`mqtt.enabled: cannot read "maybe" as true or false`,
	},
	"negative-fps": {
		"cameras[0].detect_fps: -2 must be greater than 0",
	},
	"duplicate-camera": {
		`cameras[1].name: "door" is already the name of cameras[0]`,
	},
	"missing-model-file": {
		"models[0].bundle: read model bundle: open no/such/bundle/model.yaml: no such file or directory",
	},
	"unknown-actuator": {
		`rules[0].action.actuator: "linestop" is not the name of an actuator in actuators`,
	},
	"duration-without-unit": {
		"cameras[0].stall_timeout: 10 has no unit; write a duration like 500ms or 10s",
	},
	"bad-references": {
		`cameras[0].model: "big" is not the name of a model in models`,
		`rules[0].action.state: "on" is not one of low, high`,
		`rules[0].camera: "gate" is not the name of a camera in cameras`,
		"rules[1].action: set either pulse or state, not both",
		"rules[1].frames: n 4 of 2: need 1 <= n <= of",
		"rules[1].zone: a polygon needs at least 3 points, got 2",
		"rules[1].zone[1]: [2 0] is not a point [x, y] in normalised coordinates 0..1",
	},
	"bad-rules": {
		`actuators[0].initial: "on" is not one of low, high`,
		"rules[0].action.until: only a state action can be latched",
		`rules[0].interlock: "running" is not the name of an input in inputs`,
		`rules[0].zone_mode: "around" is not one of center, inside, overlaps`,
		`rules[1].action.until: "button" is neither an input in inputs nor "ack"`,
		"rules[1].hold: hold applies to a state action without until",
		"rules[2].action.actuator: pulse, state, until and hold need an actuator",
	},
	"bad-gpio-lines": {
		"actuators[1].line: gpiochip0 line GPIO17 is already used by actuators[0]",
		"actuators[2].chip: the gpio driver needs a chip: its label (pinctrl-rp1 on a Raspberry Pi 5, pinctrl-bcm2711 on a Pi 4), name (gpiochip0) or path (/dev/gpiochip0)",
		"actuators[2].line: -3 is a negative offset; give a line name (GPIO17) or an offset from 0",
		`inputs[0].line: "GPIO27 " has surrounding spaces`,
		"inputs[1].line: the gpio driver needs a line name or offset, e.g. GPIO17 or 17",
		"inputs[2].line: gpiochip0 line GPIO17 is already used by actuators[0]",
	},
	"bad-samples-upload-http": {
		"samples.upload.backoff.min: 0s must be greater than 0",
		"samples.upload.ca_file: stat no/such/ca.pem: no such file or directory",
		`samples.upload.url: "ftp://user:xxxxx@host/samples" is not a URL like https://host/samples`,
	},
	"bad-samples-upload-mqtt": {
		"samples.upload.backoff.max: 1s is less than backoff.min 2s",
		"samples.upload.chunk_size: 100B is outside 1KiB..16MiB",
		"samples.upload.via: mqtt needs mqtt.enabled: true",
	},
	"bad-samples-upload-via": {
		`samples.upload.via: "s3" is not one of off, http, mqtt`,
	},
	"bad-scalars": {
		`cameras[0].name: "my door": use letters, digits, '.', '_' and '-' (up to 63)`,
		`cameras[0].url: scheme "ftp" is not one of rtsp, rtsps, file, v4l2, pattern`,
		`device.id: "gate/07" cannot be an MQTT topic segment (no '/', '+', '#' or surrounding spaces)`,
		`http.listen: "8080" is not host:port: address 8080: missing port in address`,
		`log.format: "xml" is not one of text, json`,
		`log.level: "loud" is not one of debug, info, warn, error`,
		`outbox.fsync: "sometimes" is not one of always, interval`,
		"outbox.max_bytes: 10KiB is below the minimum of 1MiB",
	},
}

func TestBadConfigs(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.bad.yaml"))
	if len(files) != len(badConfigs) {
		t.Errorf("%d bad configs in testdata, %d expectations", len(files), len(badConfigs))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".bad.yaml")
		t.Run(name, func(t *testing.T) {
			_, err := Load(f)
			errs, ok := err.(Errors)
			if !ok {
				t.Fatalf("want config.Errors, got %T: %v", err, err)
			}
			var got []string
			for _, e := range errs {
				got = append(got, e.Error())
			}
			if want := badConfigs[name]; !slices.Equal(got, want) {
				t.Errorf("messages:\n got  %q\n want %q", got, want)
			}
		})
	}
}

func TestMissingExplicitFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml: no such file") {
		t.Fatalf("missing config file: %v", err)
	}
}

func TestMalformedYAML(t *testing.T) {
	p := filepath.Join(t.TempDir(), "broken.yaml")
	os.WriteFile(p, []byte("cameras:\n  - name: door\n   url: x\n"), 0o644)
	_, err := Load(p)
	if err == nil || !strings.Contains(err.Error(), "broken.yaml") || !strings.Contains(err.Error(), "line ") {
		t.Fatalf("malformed YAML should name the file and line: %v", err)
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"256MiB": 256 << 20, "1GiB": 1 << 30, "512KiB": 512 << 10, "1000": 1000, "2MB": 2e6, "1.5KiB": 1536} {
		if got, err := ParseByteSize(in); err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "-1MiB", "5XB"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) accepted", in)
		}
	}
}

func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	for _, s := range seeds {
		b, _ := os.ReadFile(s)
		f.Add(b)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "fuzz.yaml")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(p) // must not panic
		if err == nil && cfg == nil {
			t.Fatal("nil config without error")
		}
	})
}

func TestExampleConfigs(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("..", "..", "configs", "*.yaml"))
	if len(files) == 0 {
		t.Fatal("no example configs found in configs/")
	}
	for _, f := range files {
		if _, err := Load(f); err != nil {
			t.Errorf("%s:\n%v", f, err)
		}
	}
}
