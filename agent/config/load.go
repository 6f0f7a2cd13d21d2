package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
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
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	keys := envKeys()
	for _, k := range keys {
		_ = v.BindEnv(k) // fails only without a key
	}

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
	}
	settings := v.AllSettings()

	var cfg Config
	cfg.setDefaults()
	errs, err := decode(settings, &cfg)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg.setListDefaults(source != "")
	cfg.Source = source
	// A value that could not be decoded leaves its field at its default (or zero): say
	// what was wrong with it once, not again as "missing" or "0 must be greater than 0".
	for _, e := range cfg.validate() {
		if !slices.ContainsFunc(errs, func(d Error) bool { return d.Key == e.Key }) {
			errs = append(errs, e)
		}
	}
	errs = append(errs, unknownEnv(keys)...)
	if len(errs) > 0 {
		errs.sort()
		return &cfg, errs
	}
	return &cfg, nil
}

// decode reads settings over cfg, which holds its defaults. It returns one Error per
// value that cannot be read and per key that matches no field.
func decode(settings map[string]any, cfg *Config) (Errors, error) {
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:           cfg,
		WeaklyTypedInput: true, // environment values arrive as strings
		DecodeHook:       mapstructure.ComposeDecodeHookFunc(defaultsHook, durationHook, byteSizeHook, stringListHook),
	})
	if err != nil {
		return nil, err
	}
	var errs Errors
	if err := dec.Decode(settings); err != nil {
		errs = decodeErrors(err)
	}
	unknown, err := unknownKeys(settings)
	if err != nil {
		return nil, err
	}
	for _, k := range unknown {
		errs = append(errs, Error{Key: k, Msg: "unknown key"})
	}
	return errs, nil
}

// defaulter is a config type that fills in its own defaults.
type defaulter interface{ setDefaults() }

// defaultsHook starts every mapping the decoder reads into a type with defaults from
// those defaults, before the mapping's keys are decoded over them: a key left out keeps
// its default, and one that is there wins even when it is zero (min_score: 0). This is
// how list items, which the decoder creates as it reads them, get theirs; a section is
// reset to the defaults Config.setDefaults already gave it, which changes nothing.
func defaultsHook(from, to reflect.Value) (any, error) {
	if from.Kind() == reflect.Map && to.CanAddr() {
		if d, ok := to.Addr().Interface().(defaulter); ok {
			to.SetZero()
			d.setDefaults()
		}
	}
	return from.Interface(), nil
}

// unknownKeys lists the keys in settings that match no field, by path
// (cameras[1].nmae), from the decoder's own metadata (Metadata.Unused). It decodes
// again, into a throwaway Config and through shapeHook, so that nothing can fail:
// mapstructure records a mapping's unused keys only when everything inside the mapping
// decoded, and a misspelled key beside a bad value must still be reported.
func unknownKeys(settings map[string]any) ([]string, error) {
	var md mapstructure.Metadata
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:           new(Config),
		Metadata:         &md,
		WeaklyTypedInput: true,
		DecodeHook:       shapeHook,
	})
	if err != nil {
		return nil, err
	}
	if err := dec.Decode(settings); err != nil {
		return nil, fmt.Errorf("find unknown keys: %w", err)
	}
	return md.Unused, nil
}

// shapeHook keeps the keys of the settings and drops their values: a mapping stays a
// mapping (and anything else where one belongs becomes an empty one), a list stays a
// list, and a value becomes the zero of the field it is decoded into.
func shapeHook(from, to reflect.Value) (any, error) {
	switch to.Kind() {
	case reflect.Struct, reflect.Map:
		if from.Kind() == reflect.Map {
			return from.Interface(), nil
		}
		return map[string]any{}, nil
	case reflect.Slice, reflect.Array:
		return from.Interface(), nil
	}
	return reflect.Zero(to.Type()).Interface(), nil
}

// envKeys are the keys an environment variable can set: every key outside the lists,
// read from Config's mapstructure tags, so a key added to a section can be overridden
// (and its VIGIL_ variable is known) without being listed anywhere else.
func envKeys() []string {
	return fieldKeys(reflect.TypeFor[Config](), "")
}

func fieldKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		name := f.Tag.Get("mapstructure")
		if name == "-" {
			continue
		}
		key := joinKey(prefix, name)
		switch {
		case f.Type.Kind() == reflect.Struct:
			keys = append(keys, fieldKeys(f.Type, key)...)
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() != reflect.String:
			// A list of items (cameras, rules, ...): one variable cannot say which item.
		default:
			keys = append(keys, key) // a value, or a list of strings ("a,b")
		}
	}
	return keys
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
func unknownEnv(keys []string) Errors {
	known := map[string]bool{}
	for _, k := range keys {
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
var nonConfigEnv = []string{"VIGIL_CONFIG", "VIGIL_BIN"} // VIGIL_BIN: the binary make deb-arm64 packages
