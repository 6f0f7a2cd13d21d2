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
	Uint8   DataType = "uint8"
	Int8    DataType = "int8"
)

// TensorInfo describes one model input or output. A dimension of -1 is dynamic.
type TensorInfo struct {
	Name  string   `json:"name"`
	Type  DataType `json:"type"`
	Shape []int64  `json:"shape"`
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
type Engine interface {
	Inputs() []TensorInfo
	Outputs() []TensorInfo
	// Run executes the model. in and out hold one slice per input and output, in the
	// order of Inputs and Outputs, each exactly Elements() long; Run reads in and
	// fills out without allocating them.
	Run(in, out [][]float32) error
	Close() error
}

// LoadOptions are the per-model runtime settings from the config's models section.
type LoadOptions struct {
	// Device is the backend device: CPU, GPU, NPU, EdgeTPU, ...; empty means CPU.
	Device string
	// Threads bounds the runtime's worker threads; 0 lets the runtime choose.
	Threads int
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
