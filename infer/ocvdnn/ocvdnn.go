// Package ocvdnn is the opencv backend: ONNX models on OpenCV's DNN module through gocv,
// a fallback for machines where no other runtime is installed (OpenCV is there anyway
// for capture).
//
// OpenCV throws a C++ exception on a missing or malformed model file, on an operator
// its importer does not know and on a DNN backend or target the build lacks, and gocv
// does not catch it, so the whole process aborts. This backend therefore never hands
// OpenCV anything unchecked: the model file is read once, parsed and checked in Go
// (infer/modelfile; see Check), and OpenCV reads the network from those same bytes, so
// the file cannot change between the check and the load. Only the CPU is used: the
// OpenCV this project builds against (Debian 12's 4.6) has no other DNN target, and
// asking for one aborts at the first Forward.
//
// What the check cannot rule out: a model made only of supported operators whose
// attributes OpenCV 4.6 still rejects (an unusual Resize mode, say) can make the
// importer throw. Models from the usual exporters are fine; catching every such case
// would need OpenCV called inside a C++ try/catch, which gocv v0.32 does not do.
//
// Threads: OpenCV's worker pool is process-wide (cv::setNumThreads) and shared with
// capture and pre-processing, and gocv v0.32 does not expose it, so LoadOptions.Threads
// is not applied per model: OpenCV uses one thread per core, or the number in the
// OPENCV_FOR_THREADS_NUM environment variable, read when the process starts.
package ocvdnn

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"gocv.io/x/gocv"

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
	net, err := gocv.ReadNetFromONNXBytes(data)
	if err != nil {
		return nil, fmt.Errorf("opencv: load model %s: %w", path, err)
	}
	e := &engine{net: net, inputs: model.Inputs, outputs: model.Outputs}
	if net.Empty() {
		e.Close()
		return nil, fmt.Errorf("opencv: load model %s: OpenCV built an empty network", path)
	}
	// Forward with a name OpenCV does not know throws; make sure it knows them all.
	if err := e.checkOutputs(); err != nil {
		e.Close()
		return nil, fmt.Errorf("opencv: model %s: %w", path, err)
	}
	// The OpenCV backend on the CPU target exists in every build; nothing else is
	// asked for.
	net.SetPreferableBackend(gocv.NetBackendOpenCV)
	net.SetPreferableTarget(gocv.NetTargetCPU)
	for _, t := range e.inputs {
		// The input buffer is the memory of a Mat OpenCV allocated, so Run hands it
		// over without copying it in Go (OpenCV's setInput copies it once).
		m := gocv.NewMatWithSizes(staticShape(t.Shape), gocv.MatTypeCV32F)
		buf, err := m.DataPtrFloat32()
		if err == nil && len(buf) != t.Elements() {
			err = fmt.Errorf("OpenCV made %d elements, want %d", len(buf), t.Elements())
		}
		e.inMats = append(e.inMats, m)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("opencv: input buffer %s: %w", t, err)
		}
		e.in = append(e.in, buf)
	}
	for _, t := range e.outputs {
		e.out = append(e.out, make([]float32, t.Elements()))
		e.outNames = append(e.outNames, t.Name)
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
	net             gocv.Net
	closed          bool
	inputs, outputs []infer.TensorInfo
	inMats          []gocv.Mat // own the input buffers' memory
	in, out         [][]float32
	outNames        []string
}

func (e *engine) Inputs() []infer.TensorInfo  { return e.inputs }
func (e *engine) Outputs() []infer.TensorInfo { return e.outputs }
func (e *engine) Input(i int) []float32       { return e.in[i] }
func (e *engine) Output(i int) []float32      { return e.out[i] }

// checkOutputs makes sure each ONNX graph output is an output layer of the network
// OpenCV built, which Forward needs.
func (e *engine) checkOutputs() error {
	var have []string
	for _, id := range e.net.GetUnconnectedOutLayers() {
		l := e.net.GetLayer(id)
		have = append(have, l.GetName())
		l.Close()
	}
	for _, t := range e.outputs {
		if !slices.Contains(have, t.Name) {
			return fmt.Errorf("output %q is not an output of the network OpenCV built from it (those are %q)", t.Name, have)
		}
	}
	return nil
}

func (e *engine) Run() error {
	if e.closed {
		return errors.New("opencv: run: engine is closed")
	}
	for i, t := range e.inputs {
		e.net.SetInput(e.inMats[i], t.Name)
	}
	if len(e.outNames) == 1 {
		m := e.net.Forward(e.outNames[0])
		defer m.Close()
		return e.copyOut(0, m)
	}
	mats := e.net.ForwardLayers(e.outNames)
	defer func() {
		for _, m := range mats {
			m.Close()
		}
	}()
	if len(mats) != len(e.out) {
		return fmt.Errorf("opencv: run: %d outputs, want %d", len(mats), len(e.out))
	}
	for i, m := range mats {
		if err := e.copyOut(i, m); err != nil {
			return err
		}
	}
	return nil
}

// copyOut copies OpenCV's result for output i into the engine's buffer.
func (e *engine) copyOut(i int, m gocv.Mat) error {
	data, err := m.DataPtrFloat32()
	if err != nil {
		return fmt.Errorf("opencv: run: output %s: %w", e.outputs[i].Name, err)
	}
	if len(data) != len(e.out[i]) {
		return fmt.Errorf("opencv: run: output %s: OpenCV computed shape %v (%d elements), the model declares %d", e.outputs[i], m.Size(), len(data), len(e.out[i]))
	}
	copy(e.out[i], data)
	return nil
}

func (e *engine) Close() error {
	if e.closed {
		return errors.New("opencv: engine already closed")
	}
	e.closed = true
	for _, m := range e.inMats {
		m.Close()
	}
	e.inMats = nil
	return e.net.Close()
}
