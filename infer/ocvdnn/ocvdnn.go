// Package ocvdnn is the opencv backend: ONNX models on OpenCV's DNN module (the system
// OpenCV 4.6 that gocv links too), a fallback for machines where no other runtime is
// installed (OpenCV is there anyway, for capture).
//
// OpenCV throws a C++ exception on a missing or malformed model file, on an operator
// its importer does not know, on a graph whose shapes do not add up and on a DNN backend
// or target the build lacks; gocv does not catch these, so through gocv the whole
// process aborts. This backend therefore makes its few OpenCV calls through a small C++
// shim (shim.cpp) that catches every exception and returns it as an error, and before
// that checks the model in Go (infer/modelfile; see Check), so the usual problems get a
// clear message naming the operator or tensor. OpenCV reads the network from the bytes
// that were checked, so the file cannot change between the check and the load. Only
// the CPU is used: the OpenCV this project builds against (Debian 12's 4.6) has no
// other DNN target (with gocv, asking for one aborts at the first Forward).
//
// Threads: OpenCV's worker pool is process-wide (cv::setNumThreads) and shared with
// capture and pre-processing, so LoadOptions.Threads is not applied per model (one
// model's setting would silently change every other OpenCV user's): OpenCV uses one
// thread per core, or the number in the OPENCV_FOR_THREADS_NUM environment variable,
// read when the process starts.
package ocvdnn

// #cgo pkg-config: opencv4
// #cgo CXXFLAGS: --std=c++11
// #include <stdlib.h>
// #include "shim.h"
import "C"

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"unsafe"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/modelfile"
)

// Backend loads ONNX models into OpenCV's DNN module. It holds no state; one may be
// shared by every model.
type Backend struct{}

// New returns the opencv backend.
func New() *Backend { return &Backend{} }

// Name is the backend's name in config and model.yaml.
func (b *Backend) Name() string { return "opencv" }

// Available is always nil: OpenCV is linked into the program (without its libraries
// the program does not start at all).
func (b *Backend) Available() error { return nil }

// Load reads an .onnx file, checks that OpenCV 4.6 can run it (Check) and loads it.
// Device must be "" or CPU; Threads and Optimization are not applied (see the package
// comment).
func (b *Backend) Load(path string, opts infer.LoadOptions) (infer.Engine, error) {
	if opts.Device != "" && !strings.EqualFold(opts.Device, "CPU") {
		return nil, fmt.Errorf("opencv: device %q: this OpenCV build runs DNN models on the CPU only (it has no OpenVINO, CUDA or OpenCL target); use device CPU, or another backend for %s", opts.Device, opts.Device)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("opencv: read model: %w", err)
	}
	model, err := modelfile.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("opencv: model %s: %w", path, err)
	}
	if err := Check(model); err != nil {
		return nil, fmt.Errorf("opencv: model %s: %w", path, err)
	}
	if len(data) == 0 {
		return nil, fmt.Errorf("opencv: model %s is empty", path)
	}
	e := &engine{inputs: model.Inputs, outputs: model.Outputs}
	if err := shimErr(C.ocvdnn_read_onnx((*C.char)(unsafe.Pointer(&data[0])), C.size_t(len(data)), &e.net)); err != nil {
		return nil, fmt.Errorf("opencv: load model %s: %w", path, err)
	}
	if err := e.prepare(); err != nil {
		e.Close()
		return nil, fmt.Errorf("opencv: model %s: %w", path, err)
	}
	return e, nil
}

// Check says whether OpenCV 4.6's DNN module can load and run a model: an ONNX model
// with no external data, float32 inputs and outputs of static shapes (the batch may
// be dynamic and is run as 1), and only node types its ONNX importer knows (ops.go).
// An unknown operator is an error naming it.
func Check(m *modelfile.Model) error {
	if m.Format != modelfile.ONNX {
		return fmt.Errorf("a %s model; the opencv backend reads ONNX models only", m.Format)
	}
	if m.ExternalTensors > 0 {
		return fmt.Errorf("%d tensors keep their data in external files; the opencv backend needs a self-contained .onnx file", m.ExternalTensors)
	}
	if len(m.Inputs) == 0 || len(m.Outputs) == 0 {
		return fmt.Errorf("the model has %d inputs and %d outputs", len(m.Inputs), len(m.Outputs))
	}
	var errs []error
	for _, list := range []struct {
		what    string
		tensors []infer.TensorInfo
	}{{"input", m.Inputs}, {"output", m.Outputs}} {
		for _, t := range list.tensors {
			if err := checkTensor(t); err != nil {
				errs = append(errs, fmt.Errorf("%s %q: %w", list.what, t.Name, err))
			}
		}
	}
	var unknown []string
	for _, op := range m.Operators {
		if !supported(op.Domain, op.Type) {
			name := op.Type
			if op.Domain != "" {
				name = op.Domain + "." + op.Type
			}
			unknown = append(unknown, fmt.Sprintf("%s (%d nodes)", name, op.Count))
		}
	}
	if len(unknown) > 0 {
		errs = append(errs, fmt.Errorf("operator(s) that OpenCV 4.6's ONNX importer does not support: %s; use another backend (onnxruntime)", strings.Join(unknown, ", ")))
	}
	return errors.Join(errs...)
}

func checkTensor(t infer.TensorInfo) error {
	switch {
	case t.Name == "":
		return errors.New("has no name")
	case t.Type != infer.Float32:
		return fmt.Errorf("has element type %s; the opencv backend feeds and reads float32 only", t.Type)
	case len(t.Shape) == 0:
		return errors.New("has no shape in the model file; the opencv backend needs static shapes")
	}
	for j, d := range t.Shape {
		switch {
		case d == 0:
			return fmt.Errorf("dimension %d of shape %v is 0", j, t.Shape)
		case d < 0 && j > 0:
			return fmt.Errorf("dimension %d of shape %v is dynamic; only the batch may be", j, t.Shape)
		}
	}
	return nil
}

// staticShape runs a dynamic batch as 1.
func staticShape(s []int64) []int {
	shape := make([]int, len(s))
	for i, d := range s {
		shape[i] = int(max(d, 1))
	}
	return shape
}

// engine is one loaded network. Like every Engine it is not safe for concurrent use.
type engine struct {
	net             *C.ocvdnn_net
	closed          bool
	inputs, outputs []infer.TensorInfo
	// The input buffers live in C memory, so OpenCV may read them directly.
	inMem   []unsafe.Pointer
	inDims  [][]C.int
	inNames []*C.char
	// outNames is a C array of C strings, for forward.
	outNames **C.char
	outStrs  []*C.char
	in, out  [][]float32
}

func (e *engine) Inputs() []infer.TensorInfo  { return e.inputs }
func (e *engine) Outputs() []infer.TensorInfo { return e.outputs }
func (e *engine) Input(i int) []float32       { return e.in[i] }
func (e *engine) Output(i int) []float32      { return e.out[i] }

// prepare checks the outputs OpenCV built and makes the buffers.
func (e *engine) prepare() error {
	var cnames *C.char
	if err := shimErr(C.ocvdnn_output_names(e.net, &cnames)); err != nil {
		return fmt.Errorf("list outputs: %w", err)
	}
	have := strings.Split(C.GoString(cnames), "\n")
	C.free(unsafe.Pointer(cnames))
	for _, t := range e.outputs {
		if !slices.Contains(have, t.Name) {
			return fmt.Errorf("output %q is not an output of the network OpenCV built from it (those are %q)", t.Name, have)
		}
	}
	for _, t := range e.inputs {
		n := t.Elements()
		mem := C.calloc(C.size_t(n), 4)
		if mem == nil {
			return fmt.Errorf("input %s: out of memory", t)
		}
		e.inMem = append(e.inMem, mem)
		e.in = append(e.in, unsafe.Slice((*float32)(mem), n))
		var dims []C.int
		for _, d := range staticShape(t.Shape) {
			dims = append(dims, C.int(d))
		}
		e.inDims = append(e.inDims, dims)
		e.inNames = append(e.inNames, C.CString(t.Name))
	}
	e.outNames = (**C.char)(C.malloc(C.size_t(len(e.outputs)) * C.size_t(unsafe.Sizeof((*C.char)(nil)))))
	names := unsafe.Slice(e.outNames, len(e.outputs))
	for i, t := range e.outputs {
		e.outStrs = append(e.outStrs, C.CString(t.Name))
		names[i] = e.outStrs[i]
		e.out = append(e.out, make([]float32, t.Elements()))
	}
	return nil
}

// Run sets the inputs (OpenCV copies each once), runs the network and copies each
// result into its output buffer.
func (e *engine) Run() error {
	if e.closed {
		return errors.New("opencv: run: engine is closed")
	}
	for i, t := range e.inputs {
		err := shimErr(C.ocvdnn_set_input(e.net, e.inNames[i], (*C.float)(e.inMem[i]), &e.inDims[i][0], C.int(len(e.inDims[i]))))
		if err != nil {
			return fmt.Errorf("opencv: run: input %s: %w", t.Name, err)
		}
	}
	if err := shimErr(C.ocvdnn_forward(e.net, e.outNames, C.int(len(e.outputs)))); err != nil {
		return fmt.Errorf("opencv: run: %w", err)
	}
	for i, t := range e.outputs {
		buf := e.out[i]
		if err := shimErr(C.ocvdnn_copy_output(e.net, C.int(i), (*C.float)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))); err != nil {
			return fmt.Errorf("opencv: run: output %s: %w", t, err)
		}
	}
	return nil
}

// Close frees the network and the input buffers; Input's slices are invalid after it.
func (e *engine) Close() error {
	if e.closed {
		return errors.New("opencv: engine already closed")
	}
	e.closed = true
	C.ocvdnn_free(e.net)
	e.net = nil
	for _, m := range e.inMem {
		C.free(m)
	}
	for _, s := range append(e.inNames, e.outStrs...) {
		C.free(unsafe.Pointer(s))
	}
	C.free(unsafe.Pointer(e.outNames))
	e.inMem, e.inNames, e.outStrs, e.outNames, e.in = nil, nil, nil, nil, nil
	return nil
}

// shimErr turns a shim call's result into an error, freeing the message.
func shimErr(msg *C.char) error {
	if msg == nil {
		return nil
	}
	defer C.free(unsafe.Pointer(msg))
	return errors.New(strings.TrimSpace(C.GoString(msg)))
}
