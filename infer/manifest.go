package infer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"gopkg.in/yaml.v3"
)

// ManifestFile is the name of a bundle's manifest inside its directory.
const ManifestFile = "model.yaml"

// Manifest is a model bundle's model.yaml: what the model file is and how to feed it
// and read it.
type Manifest struct {
	Name       string     `yaml:"name"`
	Version    string     `yaml:"version"`
	Task       string     `yaml:"task"`    // detect | classify
	File       string     `yaml:"file"`    // model file, relative to the bundle directory
	Backend    string     `yaml:"backend"` // preferred backend; config may override
	Input      InputSpec  `yaml:"input"`
	Output     OutputSpec `yaml:"output"`
	Labels     []string   `yaml:"labels"`
	Thresholds Thresholds `yaml:"thresholds"`
	// Eval is what a push of this bundle must reach on its labelled images (the
	// bundle's golden/ folder) before it goes live; zero values are not checked.
	Eval EvalSpec `yaml:"eval"`
}

// EvalSpec are minimums on a bundle's own labelled images (infer/eval measures).
type EvalSpec struct {
	MinPrecision float64 `yaml:"min_precision"`
	MinRecall    float64 `yaml:"min_recall"`
	MinMAP50     float64 `yaml:"min_map50"`
}

// InputSpec says how a frame becomes the model's input tensor. Each element is
// (pixel - mean[c]) * scale[c], with pixels 0..255 in the given colour order.
type InputSpec struct {
	Width  int       `yaml:"width"`
	Height int       `yaml:"height"`
	Layout string    `yaml:"layout"` // NCHW | NHWC
	Color  string    `yaml:"color"`  // RGB | BGR
	Resize string    `yaml:"resize"` // letterbox | stretch
	Align  string    `yaml:"align"`  // letterbox placement: top-left | center
	Pad    *float64  `yaml:"pad"`    // letterbox fill, 0..255; default 114
	Mean   []float32 `yaml:"mean"`   // per channel, in Color order; default 0
	Scale  []float32 `yaml:"scale"`  // per channel; default 1
}

// OutputSpec names the decoder that turns output tensors into detections, and the
// settings of that decoder.
type OutputSpec struct {
	Decoder string `yaml:"decoder"` // yolox | yolov8 | ssd | classify
	Strides []int  `yaml:"strides"` // yolox: grid strides
	NMS     string `yaml:"nms"`     // per-class (default) | agnostic
	// MaxDetections caps the detections per frame, best first; default 100.
	MaxDetections int `yaml:"max_detections"`
	// ClassOffset (ssd) is added to the class ids the model outputs to index labels,
	// e.g. 1 for a label list that starts with a background entry the model skips.
	ClassOffset int `yaml:"class_offset"`
	// ScoresOutput (ssd) names the scores output where the output names do not say
	// which of the two [1, N] outputs holds scores and which class ids.
	ScoresOutput string `yaml:"scores_output"`
	// Softmax (classify, required) says whether the output is logits to be turned
	// into probabilities (true) or probabilities already (false).
	Softmax *bool `yaml:"softmax"`
	// TopK (classify) is the number of best classes reported per frame; default 1.
	TopK int `yaml:"top_k"`
}

// Thresholds filter decoded candidates.
type Thresholds struct {
	Score  float32 `yaml:"score"`
	NMSIoU float32 `yaml:"nms_iou"`
}

// Choices for manifest fields; the first of each is the default.
var (
	tasks    = []string{"detect", "classify"}
	layouts  = []string{"NCHW", "NHWC"}
	colors   = []string{"RGB", "BGR"}
	resizes  = []string{"letterbox", "stretch"}
	aligns   = []string{"top-left", "center"}
	nmsKinds = []string{"per-class", "agnostic"}
	decoders = []string{"yolox", "yolov8", "ssd", "classify"}
)

// ParseManifest decodes and validates a model.yaml. Unknown keys are errors, so a typo
// never silently changes how a model is fed.
func ParseManifest(data []byte) (*Manifest, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty manifest")
		}
		return nil, err
	}
	m.setDefaults()
	if err := m.validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// LoadManifest reads dir/model.yaml and checks that the model file it names exists.
func LoadManifest(dir string) (*Manifest, error) {
	path := filepath.Join(dir, ManifestFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read model bundle: %w", err)
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if _, err := os.Stat(m.Path(dir)); err != nil {
		return nil, fmt.Errorf("%s: file: %w", path, err)
	}
	return m, nil
}

// Path is the model file's path for a bundle in dir.
func (m *Manifest) Path(dir string) string { return filepath.Join(dir, m.File) }

// PadValue is the letterbox fill.
func (s InputSpec) PadValue() float64 {
	if s.Pad == nil {
		return 114
	}
	return *s.Pad
}

func (m *Manifest) setDefaults() {
	def := func(s *string, choices []string) {
		if *s == "" {
			*s = choices[0]
		}
	}
	def(&m.Task, tasks)
	def(&m.Input.Layout, layouts)
	def(&m.Input.Color, colors)
	def(&m.Input.Resize, resizes)
	def(&m.Input.Align, aligns)
	def(&m.Output.NMS, nmsKinds)
	if m.Input.Mean == nil {
		m.Input.Mean = []float32{0, 0, 0}
	}
	if m.Input.Scale == nil {
		m.Input.Scale = []float32{1, 1, 1}
	}
	if m.Output.MaxDetections == 0 {
		m.Output.MaxDetections = DefaultMaxDetections
	}
	if m.Output.Decoder == "classify" && m.Output.TopK == 0 {
		m.Output.TopK = 1
	}
	if m.Thresholds.NMSIoU == 0 {
		m.Thresholds.NMSIoU = 0.45
	}
}

func (m *Manifest) validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	oneOf := func(key, v string, choices []string) {
		if !slices.Contains(choices, v) {
			bad(key, "%q is not one of %v", v, choices)
		}
	}
	if m.Name == "" {
		bad("name", "missing")
	}
	for _, e := range []struct {
		key string
		v   float64
	}{{"eval.min_precision", m.Eval.MinPrecision}, {"eval.min_recall", m.Eval.MinRecall}, {"eval.min_map50", m.Eval.MinMAP50}} {
		if e.v < 0 || e.v > 1 {
			bad(e.key, "%v is outside 0..1", e.v)
		}
	}
	if m.Version == "" {
		bad("version", "missing")
	}
	if m.File == "" {
		bad("file", "missing")
	} else if filepath.IsAbs(m.File) || !filepath.IsLocal(m.File) {
		bad("file", "%q must be a path inside the bundle directory", m.File)
	}
	oneOf("task", m.Task, tasks)
	if m.Input.Width <= 0 || m.Input.Height <= 0 {
		bad("input", "width and height must be positive, got %dx%d", m.Input.Width, m.Input.Height)
	}
	oneOf("input.layout", m.Input.Layout, layouts)
	oneOf("input.color", m.Input.Color, colors)
	oneOf("input.resize", m.Input.Resize, resizes)
	oneOf("input.align", m.Input.Align, aligns)
	if p := m.Input.PadValue(); p < 0 || p > 255 {
		bad("input.pad", "%v is outside 0..255", p)
	}
	if len(m.Input.Mean) != 3 {
		bad("input.mean", "needs 3 values, got %d", len(m.Input.Mean))
	}
	if len(m.Input.Scale) != 3 {
		bad("input.scale", "needs 3 values, got %d", len(m.Input.Scale))
	}
	for _, s := range m.Input.Scale {
		if s == 0 {
			bad("input.scale", "values must not be 0")
			break
		}
	}
	oneOf("output.decoder", m.Output.Decoder, decoders)
	oneOf("output.nms", m.Output.NMS, nmsKinds)
	m.validateOutput(bad)
	if len(m.Labels) == 0 {
		bad("labels", "missing")
	}
	if t := m.Thresholds.Score; t < 0 || t >= 1 {
		bad("thresholds.score", "%v is outside [0, 1)", t)
	}
	if t := m.Thresholds.NMSIoU; t <= 0 || t > 1 {
		bad("thresholds.nms_iou", "%v is outside (0, 1]", t)
	}
	return errors.Join(errs...)
}

// validateOutput checks the decoder's settings: those it needs, and that no setting of
// another decoder is given (a misplaced key would otherwise be silently ignored).
func (m *Manifest) validateOutput(bad func(key, format string, args ...any)) {
	o := m.Output
	dec := o.Decoder
	switch {
	case m.Task == "classify" && dec != "classify":
		bad("task", "classify needs output.decoder: classify, not %q", dec)
	case m.Task != "classify" && dec == "classify":
		bad("output.decoder", "the classify decoder goes with task: classify, not %q", m.Task)
	}
	if o.MaxDetections < 0 {
		bad("output.max_detections", "%d must be positive", o.MaxDetections)
	}
	only := func(key, decoder string, set bool) {
		if set && dec != decoder {
			bad(key, "only the %s decoder uses it, this bundle's decoder is %q", decoder, dec)
		}
	}
	only("output.strides", "yolox", len(o.Strides) > 0)
	only("output.class_offset", "ssd", o.ClassOffset != 0)
	only("output.scores_output", "ssd", o.ScoresOutput != "")
	only("output.softmax", "classify", o.Softmax != nil)
	only("output.top_k", "classify", o.TopK != 0)
	switch dec {
	case "yolox":
		if len(o.Strides) == 0 {
			bad("output.strides", "the yolox decoder needs its grid strides, e.g. [8, 16, 32]")
		}
		for _, s := range o.Strides {
			if s <= 0 || m.Input.Width%s != 0 || m.Input.Height%s != 0 {
				bad("output.strides", "stride %d must be positive and divide the input size %dx%d", s, m.Input.Width, m.Input.Height)
			}
		}
	case "classify":
		if o.Softmax == nil {
			bad("output.softmax", "missing: the classify decoder needs true (the output is logits) or false (probabilities)")
		}
		if o.TopK < 1 {
			bad("output.top_k", "%d must be at least 1", o.TopK)
		}
	}
}
