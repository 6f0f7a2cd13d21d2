package infer

import (
	"fmt"
	"strings"
)

// DataType is a tensor element type.
type DataType string

// Element types Vigil's pre-processing and decoders handle.
const (
	Float32 DataType = "float32"
	Float16 DataType = "float16"
	Uint8   DataType = "uint8"
	Int8    DataType = "int8"
)

// Quantization maps a quantised tensor's integers to real values:
// real = Scale * (q - ZeroPoint).
type Quantization struct {
	Scale     float32 `json:"scale"`
	ZeroPoint int64   `json:"zero_point"`
}

// TensorInfo describes one model input or output. A dimension of -1 is dynamic.
type TensorInfo struct {
	Name  string   `json:"name"`
	Type  DataType `json:"type"`
	Shape []int64  `json:"shape"`
	// Quant is set for uint8 and int8 tensors that carry a scale and zero point.
	Quant *Quantization `json:"quant,omitempty"`
}

// Elements is the number of elements of the shape, with dynamic dimensions taken as 1.
func (t TensorInfo) Elements() int {
	n := 1
	for _, d := range t.Shape {
		if d > 0 {
			n *= int(d)
		}
	}
	return n
}

func (t TensorInfo) String() string {
	dims := make([]string, len(t.Shape))
	for i, d := range t.Shape {
		dims[i] = fmt.Sprint(d)
	}
	return fmt.Sprintf("%s %s [%s]", t.Name, t.Type, strings.Join(dims, " "))
}

// Engine is one loaded model. It is not safe for concurrent use: one Detector owns it
// and serialises calls.
//
// The engine owns its tensor buffers, so a frame goes from pre-processing into the
// runtime and from the runtime into the decoder without a copy or an allocation: fill
// Input(i), call Run, read Output(i). The buffers are float32 whatever the model's
// element type; an engine whose tensor is quantised or float16 converts at its
// boundary (with the tensor's Quant for uint8 and int8).
type Engine interface {
	Inputs() []TensorInfo
	Outputs() []TensorInfo
	// Input and Output return the buffer of input or output i (in the order of Inputs
	// and Outputs), exactly Elements() long. The slices stay the same, and valid, until
	// Close.
	Input(i int) []float32
	Output(i int) []float32
	// Run executes the model on the input buffers and fills the output buffers.
	Run() error
	// Close frees the model. A second Close returns an error and does nothing else.
	Close() error
}

// LoadOptions are the per-model runtime settings from the config's models section.
type LoadOptions struct {
	// Device is the backend device: CPU, GPU, NPU, EdgeTPU, ...; empty means CPU.
	// Each backend documents the devices it knows.
	Device string
	// Threads bounds the runtime's worker threads; 0 lets the runtime choose.
	Threads int
	// Optimization is the graph optimisation level for runtimes that have one
	// (onnxruntime): all, extended, basic or disabled; empty means all.
	Optimization string
}

// Backend loads engines for one runtime (onnxruntime, tflite, openvino, opencv).
type Backend interface {
	Name() string
	// Available reports whether the runtime can be used on this machine. A non-nil
	// error says what is missing (the library's name) and how to install it.
	Available() error
	// Load opens the model file and prepares it to run.
	Load(path string, opts LoadOptions) (Engine, error)
}

// BackendNames are the inference backends Vigil has, in the order they are offered (the
// first serves a model whose config and bundle name none). This is the one list:
// infer/backends builds each of them, and agent/config accepts these names without
// linking any runtime. Whether a backend works on this machine is checked at start, so
// a config stays valid across machines.
func BackendNames() []string { return []string{"onnxruntime", "tflite", "openvino", "opencv"} }

// Registry holds the backends built into the program, by name. It is built once by the
// program's wiring (no package registers itself), so tests can make their own.
type Registry struct {
	backends []Backend
}

// NewRegistry returns a registry of backends, in the order given (the order in which
// they are listed to users).
func NewRegistry(backends ...Backend) *Registry {
	return &Registry{backends: backends}
}

// Get returns the backend called name. An unknown name is an error that lists the
// backends there are.
func (r *Registry) Get(name string) (Backend, error) {
	for _, b := range r.backends {
		if b.Name() == name {
			return b, nil
		}
	}
	return nil, fmt.Errorf("backend %q is not built into this program (it has %s)", name, strings.Join(r.Names(), ", "))
}

// Names lists the backends' names.
func (r *Registry) Names() []string {
	names := make([]string, len(r.backends))
	for i, b := range r.backends {
		names[i] = b.Name()
	}
	return names
}

// Backends lists the backends in registry order.
func (r *Registry) Backends() []Backend { return r.backends }
