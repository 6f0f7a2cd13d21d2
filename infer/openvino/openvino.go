// Package openvino is the openvino backend: OpenVINO IR (.xml with its .bin) and ONNX
// models on Intel's OpenVINO runtime through its C API (ov_core_*, OpenVINO 2023.0 to
// 2025.x), on CPU, GPU, NPU or any device OpenVINO reports.
//
// The package declares the few C types and functions it uses itself and opens
// libopenvino_c.so with dlopen when first needed: it builds without OpenVINO's headers,
// and the vigil binary starts (and its cameras, actuators and outbox run) on machines
// without the runtime; Available then says what is missing and how to install it.
//
// What is verified, and what is not: the runtime cannot be had where Vigil is built and
// tested. The tests exercise the missing-runtime path, and the whole binding (every
// function it declares, called through dlopen, with its shapes, error paths and memory
// handling) against a small fake libopenvino_c.so built from testdata/fake_openvino.c
// with the signatures of OpenVINO's headers. That verifies the binding against the C
// API as declared, not against Intel's runtime.
//
// Errors carry OpenVINO's status name and, from 2024.0, ov_get_last_err_msg. That
// message is one per process in OpenVINO, so two engines failing at the same moment
// may see each other's message.
package openvino

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"github.com/vigil-edge/vigil/infer"
)

// #include <stdlib.h>
// #include "vov.h"
import "C"

// DefaultLibraries are tried in order when no library path is configured: the
// development name on the loader path (Intel's APT packages, or setupvars.sh's
// LD_LIBRARY_PATH), the sonames of recent releases (the runtime packages and pip
// wheels ship only these: 2025.0 to 2025.4, 2024.6 LTS), and the archive's usual home.
var DefaultLibraries = []string{
	"libopenvino_c.so",
	"libopenvino_c.so.2540", "libopenvino_c.so.2530", "libopenvino_c.so.2520", "libopenvino_c.so.2510", "libopenvino_c.so.2500",
	"libopenvino_c.so.2460",
	"/opt/intel/openvino/runtime/lib/intel64/libopenvino_c.so",
}

// Backend loads models on OpenVINO. It holds one OpenVINO core, shared by its engines;
// a program should make one Backend and share it. The library, once opened, stays
// loaded for the life of the process.
type Backend struct {
	libraries []string

	once    sync.Once
	initErr error
	api     *api
}

// New returns a backend that opens library (the runtimes.openvino setting), or
// DefaultLibraries when library is "".
func New(library string) *Backend {
	libs := DefaultLibraries
	if library != "" {
		libs = []string{library}
	}
	return &Backend{libraries: libs}
}

// Name is the backend's name in config and model.yaml.
func (b *Backend) Name() string { return "openvino" }

// Available opens the runtime library on first use and reports whether it worked.
func (b *Backend) Available() error {
	b.once.Do(func() { b.initErr = b.initialize() })
	return b.initErr
}

// Library is the path or soname of the library that was loaded.
func (b *Backend) Library() string {
	if b.Available() != nil {
		return ""
	}
	return b.api.path
}

// Devices lists the devices OpenVINO can run on here.
func (b *Backend) Devices() ([]string, error) {
	if err := b.Available(); err != nil {
		return nil, err
	}
	return b.api.devices()
}

func (b *Backend) initialize() error {
	var errs []string
	for _, lib := range b.libraries {
		a, err := open(lib)
		if err == nil {
			b.api = a
			return nil
		}
		errs = append(errs, err.Error())
	}
	return fmt.Errorf("openvino: cannot load the OpenVINO runtime's C library libopenvino_c.so (tried %s): %s; install OpenVINO 2023.0 or newer (Intel's APT repository: apt install openvino; or Intel's archive unpacked to /opt/intel/openvino), and set runtimes.openvino to the path of libopenvino_c.so if it is not on the loader path",
		strings.Join(b.libraries, ", "), strings.Join(errs, "; "))
}

// virtualDevices are OpenVINO's devices that stand for others; they are not in the
// list of available devices, so they are passed to OpenVINO unchecked.
var virtualDevices = []string{"AUTO", "MULTI", "HETERO", "BATCH"}

// Load reads an OpenVINO IR (.xml, with the .bin of the same name beside it) or an
// .onnx file, compiles it for opts.Device and prepares one inference request.
//
// opts.Device: CPU (the default), GPU, NPU, GPU.1, ... (any device OpenVINO reports
// here), or AUTO, MULTI:..., HETERO:..., BATCH:...; a device that is not available is
// an error listing those that are. opts.Threads bounds the CPU's inference threads
// (INFERENCE_NUM_THREADS; other devices have none). Inputs and outputs must be
// float32 with static shapes.
func (b *Backend) Load(path string, opts infer.LoadOptions) (infer.Engine, error) {
	if err := b.Available(); err != nil {
		return nil, err
	}
	a := b.api
	xml, bin, err := modelFiles(path)
	if err != nil {
		return nil, fmt.Errorf("openvino: %w", err)
	}
	device, err := b.device(opts.Device)
	if err != nil {
		return nil, fmt.Errorf("openvino: model %s: %w", path, err)
	}

	cxml := C.CString(xml)
	defer C.free(unsafe.Pointer(cxml))
	var cbin *C.char
	if bin != "" {
		cbin = C.CString(bin)
		defer C.free(unsafe.Pointer(cbin))
	}
	var model unsafe.Pointer
	if s := C.vov_read_model(a.c, cxml, cbin, &model); s != C.VOV_OK {
		return nil, fmt.Errorf("openvino: read model %s: %w", path, a.status(s))
	}
	// The compiled model does not need the model once made.
	defer C.vov_model_free(a.c, model)

	var nin, nout C.size_t
	if s := C.vov_model_sizes(a.c, model, &nin, &nout); s != C.VOV_OK {
		return nil, fmt.Errorf("openvino: model %s: count inputs and outputs: %w", path, a.status(s))
	}
	if nin == 0 || nout == 0 {
		return nil, fmt.Errorf("openvino: model %s has %d inputs and %d outputs; it needs at least one of each", path, nin, nout)
	}
	e := &engine{api: a}
	for i := range int(nin) {
		t, err := describe(a, model, false, i)
		if err != nil {
			return nil, fmt.Errorf("openvino: model %s: %w", path, err)
		}
		e.inputs = append(e.inputs, t)
	}
	for i := range int(nout) {
		t, err := describe(a, model, true, i)
		if err != nil {
			return nil, fmt.Errorf("openvino: model %s: %w", path, err)
		}
		e.outputs = append(e.outputs, t)
	}

	e.c = C.vov_engine_new(nin, nout)
	if e.c == nil {
		return nil, fmt.Errorf("openvino: model %s: out of memory", path)
	}
	cdev := C.CString(device)
	defer C.free(unsafe.Pointer(cdev))
	var cthreads *C.char
	if opts.Threads > 0 && strings.HasPrefix(device, "CPU") {
		cthreads = C.CString(strconv.Itoa(opts.Threads))
		defer C.free(unsafe.Pointer(cthreads))
	}
	if s := C.vov_compile(a.c, model, cdev, cthreads, &e.c.compiled); s != C.VOV_OK {
		e.free()
		return nil, fmt.Errorf("openvino: compile model %s for %s: %w", path, device, a.status(s))
	}
	if s := C.vov_create_request(a.c, e.c); s != C.VOV_OK {
		e.free()
		return nil, fmt.Errorf("openvino: model %s on %s: create inference request: %w", path, device, a.status(s))
	}
	// The buffers are C memory that the engine owns, wrapped as host tensors and set on
	// the request once, so Run neither copies inputs nor allocates.
	for k, t := range slices.Concat(e.inputs, e.outputs) {
		dims := (*C.int64_t)(C.calloc(C.size_t(max(len(t.Shape), 1)), 8))
		for d, v := range t.Shape {
			unsafe.Slice(dims, len(t.Shape))[d] = C.int64_t(v)
		}
		s := C.vov_bind(a.c, e.c, C.size_t(k), C.int64_t(len(t.Shape)), dims, C.size_t(t.Elements()))
		C.free(unsafe.Pointer(dims))
		if s != C.VOV_OK {
			step := e.c.step
			e.free()
			if step == 0 {
				return nil, fmt.Errorf("openvino: model %s: tensor %s: out of memory for its buffer", path, t.Name)
			}
			what := [...]string{"", "wrap its buffer as a tensor", "set it on the request"}[step]
			return nil, fmt.Errorf("openvino: model %s on %s: tensor %s: %s: %w", path, device, t.Name, what, a.status(s))
		}
		buf := unsafe.Slice((*float32)(unsafe.Pointer(C.vov_buf(e.c, C.size_t(k)))), t.Elements())
		if k < len(e.inputs) {
			e.in = append(e.in, buf)
		} else {
			e.out = append(e.out, buf)
		}
	}
	e.device = device
	return e, nil
}

// modelFiles checks the model's files before OpenVINO sees them: an IR's .xml needs
// its .bin beside it (OpenVINO would otherwise load the graph without weights).
func modelFiles(path string) (xml, bin string, err error) {
	if _, err := os.Stat(path); err != nil {
		return "", "", fmt.Errorf("model %s: %w", path, err)
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".xml":
		bin = strings.TrimSuffix(path, filepath.Ext(path)) + ".bin"
		if _, err := os.Stat(bin); err != nil {
			return "", "", fmt.Errorf("model %s: OpenVINO IR needs its weights beside it: %w", path, err)
		}
		return path, bin, nil
	case ".onnx":
		return path, "", nil
	}
	return "", "", fmt.Errorf("model %s: the openvino backend reads OpenVINO IR (.xml with its .bin) or ONNX (.onnx)", path)
}

// device checks a model's device against those OpenVINO reports and returns the name
// to compile for.
func (b *Backend) device(want string) (string, error) {
	if want == "" {
		want = "CPU"
	}
	want = strings.ToUpper(want)
	base, _, _ := strings.Cut(want, ":")
	if slices.Contains(virtualDevices, base) {
		return want, nil
	}
	have, err := b.api.devices()
	if err != nil {
		return "", fmt.Errorf("device %q: %w", want, err)
	}
	// One GPU is reported as GPU, several as GPU.0, GPU.1, ...; OpenVINO takes GPU
	// for the first and GPU.0 for the only one.
	kind, _, _ := strings.Cut(want, ".")
	for _, h := range have {
		if h == want || h == kind || strings.HasPrefix(h, want+".") {
			return want, nil
		}
	}
	return "", fmt.Errorf("device %q is not available here; OpenVINO (%s) reports %s (or use AUTO)", want, b.api.path, strings.Join(have, ", "))
}

// describe reads input or output i of model: float32 with a static shape only.
func describe(a *api, model unsafe.Pointer, output bool, i int) (infer.TensorInfo, error) {
	var (
		cname *C.char
		typ   C.ov_element_type_e
		rank  C.int64_t
		dims  [8]C.int64_t
		step  C.int
		isOut C.int
	)
	label := fmt.Sprintf("input %d", i)
	if output {
		isOut = 1
		label = fmt.Sprintf("output %d", i)
	}
	s := C.vov_port(a.c, model, isOut, C.size_t(i), &cname, &typ, &rank, &dims[0], &step)
	var name string
	if cname != nil {
		name = C.GoString(cname)
		C.free(unsafe.Pointer(cname))
		label = fmt.Sprintf("%s %q", strings.Fields(label)[0], name)
	}
	if s != C.VOV_OK {
		doing := [...]string{"get the port", "get its name", "get its element type", "get its shape (only static shapes are supported: convert the model with a fixed input shape)"}[step]
		return infer.TensorInfo{}, fmt.Errorf("%s: %s: %w", label, doing, a.status(s))
	}
	if typ != C.VOV_F32 {
		return infer.TensorInfo{}, fmt.Errorf("%s has element type %s; this backend feeds and reads float32 only", label, elementTypeName(typ))
	}
	if rank < 0 || rank > 8 {
		return infer.TensorInfo{}, fmt.Errorf("%s has rank %d; at most 8 dimensions are supported", label, rank)
	}
	t := infer.TensorInfo{Name: name, Type: infer.Float32, Shape: make([]int64, rank)}
	for d := range t.Shape {
		t.Shape[d] = int64(dims[d])
		if t.Shape[d] <= 0 {
			return infer.TensorInfo{}, fmt.Errorf("%s has dimension %d of size %d in shape %v", label, d, t.Shape[d], t.Shape)
		}
	}
	return t, nil
}

type engine struct {
	api             *api
	c               *C.vov_engine // nil once closed
	device          string
	inputs, outputs []infer.TensorInfo
	in, out         [][]float32 // views of the C buffers
}

func (e *engine) Inputs() []infer.TensorInfo  { return e.inputs }
func (e *engine) Outputs() []infer.TensorInfo { return e.outputs }
func (e *engine) Input(i int) []float32       { return e.in[i] }
func (e *engine) Output(i int) []float32      { return e.out[i] }

func (e *engine) Run() error {
	if e.c == nil {
		return errors.New("openvino: run: engine is closed")
	}
	s := C.vov_run(e.api.c, e.c)
	if s == C.VOV_OK {
		return nil
	}
	step, name := e.c.step, ""
	if step > 0 {
		name = e.outputs[e.c.which].Name
	}
	switch step {
	case 0:
		return fmt.Errorf("openvino: run on %s: %w", e.device, e.api.status(s))
	case 4:
		return fmt.Errorf("openvino: run on %s: output %q has %d bytes, want %d", e.device, name, int(e.c.got), 4*e.outputs[e.c.which].Elements())
	}
	return fmt.Errorf("openvino: run on %s: read output %q: %w", e.device, name, e.api.status(s))
}

func (e *engine) Close() error {
	if e.c == nil {
		return errors.New("openvino: engine already closed")
	}
	e.free()
	return nil
}

// free releases the request, tensors, buffers and compiled model; the buffer views
// go with them.
func (e *engine) free() {
	C.vov_engine_free(e.api.c, e.c)
	e.c = nil
	e.in, e.out = nil, nil
}
