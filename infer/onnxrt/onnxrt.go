// Package onnxrt is the onnxruntime backend: ONNX models on ONNX Runtime's C API
// through github.com/yalue/onnxruntime_go. The runtime library is opened with dlopen
// when first needed, so the vigil binary starts (and its cameras, actuators and outbox
// run) on machines without it; Available then says what is missing.
package onnxrt

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/vigil-edge/vigil/infer"
)

// DefaultLibraries are tried in order when no library path is configured: the soname
// that scripts/install-deps registers with ldconfig, then the paths it installs to.
var DefaultLibraries = []string{"libonnxruntime.so.1", "/usr/local/lib/libonnxruntime.so.1", "/usr/lib/vigil/libonnxruntime.so.1"}

// Backend loads ONNX models. ONNX Runtime keeps one environment per process, so a
// program should make one Backend and share it.
type Backend struct {
	libraries []string

	once    sync.Once
	initErr error
	loaded  string // the library that was opened
}

// New returns a backend that opens library, or DefaultLibraries when library is "".
func New(library string) *Backend {
	libs := DefaultLibraries
	if library != "" {
		libs = []string{library}
	}
	return &Backend{libraries: libs}
}

// Name is the backend's name in config and model.yaml.
func (b *Backend) Name() string { return "onnxruntime" }

// Available opens the runtime library on first use and reports whether it worked.
func (b *Backend) Available() error {
	b.once.Do(func() { b.initErr = b.initialize() })
	return b.initErr
}

// Library is the path or soname of the runtime library that was loaded, and its version.
func (b *Backend) Library() string {
	if b.Available() != nil {
		return ""
	}
	return fmt.Sprintf("%s (onnxruntime %s)", b.loaded, ort.GetVersion())
}

// sharedEnvironment is Backend.loaded when another Backend opened the library.
const sharedEnvironment = "shared environment"

func (b *Backend) initialize() error {
	if ort.IsInitialized() {
		// Another Backend in this process already set the environment up.
		b.loaded = sharedEnvironment
		return nil
	}
	var errs []string
	for _, lib := range b.libraries {
		ort.SetSharedLibraryPath(lib)
		err := ort.InitializeEnvironment(ort.WithLogLevelError())
		if err == nil {
			b.loaded = lib
			return nil
		}
		errs = append(errs, err.Error())
	}
	return fmt.Errorf("onnxruntime: cannot load the ONNX Runtime library (tried %s): %s; install it with scripts/install-deps, or set runtimes.onnxruntime to the path of libonnxruntime.so.1",
		strings.Join(b.libraries, ", "), strings.Join(errs, "; "))
}

// Load opens an .onnx file. Inputs and outputs must be float32 tensors with fixed
// shapes (a dynamic batch dimension is run as 1).
//
// opts.Device picks the execution provider: CPU (or empty: ONNX Runtime's default CPU
// provider), CUDA (alias GPU), TensorRT, OpenVINO or OpenVINO:<device> (OpenVINO:GPU,
// OpenVINO:NPU, ...). A provider the loaded library lacks is an error naming it and
// the providers the library has. opts.Optimization is the graph optimisation level
// (all, the default; extended; basic; disabled), opts.Threads the intra-op threads.
func (b *Backend) Load(path string, opts infer.LoadOptions) (infer.Engine, error) {
	if err := b.Available(); err != nil {
		return nil, err
	}
	prov, err := parseDevice(opts.Device)
	if err != nil {
		return nil, fmt.Errorf("onnxruntime: model %s: %w", path, err)
	}
	level, err := optimizationLevel(opts.Optimization)
	if err != nil {
		return nil, fmt.Errorf("onnxruntime: model %s: %w", path, err)
	}
	ins, outs, err := ort.GetInputOutputInfo(path)
	if err != nil {
		return nil, fmt.Errorf("onnxruntime: read model %s: %w", path, err)
	}
	e := &engine{}
	if e.inputs, err = describe(ins, "input"); err != nil {
		return nil, fmt.Errorf("onnxruntime: model %s: %w", path, err)
	}
	if e.outputs, err = describe(outs, "output"); err != nil {
		return nil, fmt.Errorf("onnxruntime: model %s: %w", path, err)
	}

	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("onnxruntime: session options: %w", err)
	}
	defer so.Destroy()
	if opts.Threads > 0 {
		if err := so.SetIntraOpNumThreads(opts.Threads); err != nil {
			return nil, fmt.Errorf("onnxruntime: threads: %w", err)
		}
	}
	// ONNX Runtime's workers spin while they wait for work. On a small device the
	// camera's decoder needs those cycles: spinning made the two-core pipeline 35%
	// slower than inference alone, without it the two overlap.
	if err := so.AddSessionConfigEntry("session.intra_op.allow_spinning", "0"); err != nil {
		return nil, fmt.Errorf("onnxruntime: session options: %w", err)
	}
	// One model runs one frame at a time; inter-op parallelism only adds threads.
	if err := so.SetInterOpNumThreads(1); err != nil {
		return nil, fmt.Errorf("onnxruntime: inter-op threads: %w", err)
	}
	if err := so.SetGraphOptimizationLevel(level); err != nil {
		return nil, fmt.Errorf("onnxruntime: graph optimisation: %w", err)
	}
	if prov != nil {
		lib, available, err := b.providers()
		if err != nil {
			return nil, fmt.Errorf("onnxruntime: model %s: device %q: %w", path, opts.Device, err)
		}
		if err := appendProvider(so, prov, lib, available); err != nil {
			return nil, fmt.Errorf("onnxruntime: model %s: %w", path, err)
		}
	}

	// The tensors wrap Go slices that the engine owns, made once here and bound to
	// the session, so Run neither copies nor allocates.
	alloc := func(infos []infer.TensorInfo, bufs *[][]float32, vals *[]ort.Value) error {
		for _, info := range infos {
			buf := make([]float32, info.Elements())
			t, err := ort.NewTensor(staticShape(info.Shape), buf)
			if err != nil {
				return fmt.Errorf("onnxruntime: tensor %s: %w", info.Name, err)
			}
			*bufs = append(*bufs, buf)
			*vals = append(*vals, t)
		}
		return nil
	}
	if err := alloc(e.inputs, &e.in, &e.inVals); err != nil {
		e.destroyTensors()
		return nil, err
	}
	if err := alloc(e.outputs, &e.out, &e.outVals); err != nil {
		e.destroyTensors()
		return nil, err
	}
	names := func(ts []infer.TensorInfo) []string {
		n := make([]string, len(ts))
		for i, t := range ts {
			n[i] = t.Name
		}
		return n
	}
	e.session, err = ort.NewAdvancedSession(path, names(e.inputs), names(e.outputs), e.inVals, e.outVals, so)
	if err != nil {
		e.destroyTensors()
		return nil, fmt.Errorf("onnxruntime: load model %s: %w", path, err)
	}
	return e, nil
}

// providers lists the execution providers of the library in use, and names it.
func (b *Backend) providers() (string, []string, error) {
	if b.loaded != sharedEnvironment {
		p, err := availableProviders(b.loaded)
		return b.loaded, p, err
	}
	// Another Backend loaded the library: find which of the usual ones is loaded.
	var errs []string
	for _, lib := range append(b.libraries, DefaultLibraries...) {
		p, err := availableProviders(lib)
		if err == nil {
			return lib, p, nil
		}
		errs = append(errs, err.Error())
	}
	return "", nil, errors.New(strings.Join(errs, "; "))
}

func describe(infos []ort.InputOutputInfo, what string) ([]infer.TensorInfo, error) {
	ts := make([]infer.TensorInfo, len(infos))
	for i, info := range infos {
		if info.OrtValueType != ort.ONNXTypeTensor {
			return nil, fmt.Errorf("%s %q is a %s; only tensors are supported", what, info.Name, info.OrtValueType)
		}
		if info.DataType != ort.TensorElementDataTypeFloat {
			return nil, fmt.Errorf("%s %q has element type %s; this backend feeds and reads float32 only", what, info.Name, info.DataType)
		}
		shape := []int64(info.Dimensions.Clone())
		for j, d := range shape {
			if d < 0 && j > 0 {
				return nil, fmt.Errorf("%s %q has dynamic dimension %d in shape %v; only a dynamic batch is supported", what, info.Name, j, shape)
			}
		}
		ts[i] = infer.TensorInfo{Name: info.Name, Type: infer.Float32, Shape: shape}
	}
	return ts, nil
}

type engine struct {
	session         *ort.AdvancedSession // bound to inVals and outVals
	inputs          []infer.TensorInfo
	outputs         []infer.TensorInfo
	in, out         [][]float32
	inVals, outVals []ort.Value
}

func (e *engine) Inputs() []infer.TensorInfo  { return e.inputs }
func (e *engine) Outputs() []infer.TensorInfo { return e.outputs }
func (e *engine) Input(i int) []float32       { return e.in[i] }
func (e *engine) Output(i int) []float32      { return e.out[i] }

func (e *engine) Run() error {
	if e.session == nil {
		return errors.New("onnxruntime: run: engine is closed")
	}
	if err := e.session.Run(); err != nil {
		return fmt.Errorf("onnxruntime: run: %w", err)
	}
	return nil
}

func (e *engine) Close() error {
	if e.session == nil {
		return errors.New("onnxruntime: engine already closed")
	}
	err := e.session.Destroy()
	e.session = nil
	e.destroyTensors()
	return err
}

// destroyTensors frees the tensors, after the session that uses them.
func (e *engine) destroyTensors() {
	for _, v := range append(e.inVals, e.outVals...) {
		v.Destroy()
	}
	e.inVals, e.outVals = nil, nil
}

// staticShape runs a dynamic batch dimension as 1.
func staticShape(s []int64) ort.Shape {
	shape := make(ort.Shape, len(s))
	for i, d := range s {
		shape[i] = max(d, 1)
	}
	return shape
}
