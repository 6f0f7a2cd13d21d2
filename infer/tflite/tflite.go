// Package tflite is the tflite backend: .tflite models on the TensorFlow Lite C API.
// The library (libtensorflowlite_c.so) is opened with dlopen when first needed, not
// linked, so the vigil binary builds and starts (and its cameras, actuators and outbox
// run) on machines without it; Available then says what is missing. scripts/install-deps
// installs TFLite 2.2.0's C library on x86_64.
//
// Devices (infer.LoadOptions.Device): CPU (the default), XNNPACK (the XNNPACK delegate,
// when the library has it) and EdgeTPU (the Coral Edge TPU delegate from
// libedgetpu.so.1). Optimization has no TFLite counterpart and is ignored.
package tflite

/*
#include <stdlib.h>
#include "capi.h"
*/
import "C"

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"unsafe"

	"github.com/x448/float16"

	"github.com/vigil-edge/vigil/infer"
)

// DefaultLibraries are tried in order when no library path is configured: the soname
// that scripts/install-deps registers with ldconfig, then the paths it installs to.
var DefaultLibraries = []string{"libtensorflowlite_c.so", "/usr/local/lib/libtensorflowlite_c.so", "/usr/lib/vigil/libtensorflowlite_c.so"}

// EdgeTPULibrary is the Coral Edge TPU runtime's soname.
const EdgeTPULibrary = "libedgetpu.so.1"

// Devices are the devices Load knows, as written in config.
var Devices = []string{"CPU", "XNNPACK", "EdgeTPU"}

// Backend loads .tflite models. It opens the library once and keeps it open for the
// life of the process.
type Backend struct {
	libraries []string
	edgetpu   []string // libedgetpu paths to try; a field so tests can point it at a fake

	once    sync.Once
	lib     *library
	initErr error

	tpuOnce sync.Once
	tpu     *edgeTPU
	tpuErr  error
}

// New returns a backend that opens library, or DefaultLibraries when library is "".
func New(library string) *Backend {
	libs := DefaultLibraries
	if library != "" {
		libs = []string{library}
	}
	return &Backend{libraries: libs, edgetpu: []string{EdgeTPULibrary}}
}

// Name is the backend's name in config and model.yaml.
func (b *Backend) Name() string { return "tflite" }

// Available opens the library on first use and reports whether it worked.
func (b *Backend) Available() error {
	b.once.Do(func() { b.lib, b.initErr = b.open() })
	return b.initErr
}

// Library is the path or soname of the library that was loaded, and its version.
func (b *Backend) Library() string {
	if b.Available() != nil {
		return ""
	}
	return fmt.Sprintf("%s (TFLite %s)", b.lib.path, b.lib.version)
}

func (b *Backend) open() (*library, error) {
	var errs []string
	for _, path := range b.libraries {
		lib, err := openLibrary(path)
		if err == nil {
			return lib, nil
		}
		errs = append(errs, err.Error())
	}
	return nil, fmt.Errorf("tflite: cannot load the TFLite C library libtensorflowlite_c.so (tried %s): %s; install it with scripts/install-deps (x86_64), or set runtimes.tflite to the path of libtensorflowlite_c.so",
		strings.Join(b.libraries, ", "), strings.Join(errs, "; "))
}

func (b *Backend) edgeTPU() (*edgeTPU, error) {
	b.tpuOnce.Do(func() {
		var errs []string
		for _, path := range b.edgetpu {
			t, err := openEdgeTPU(path)
			if err == nil {
				b.tpu = t
				return
			}
			errs = append(errs, err.Error())
		}
		b.tpuErr = fmt.Errorf("cannot load the Edge TPU runtime %s: %s; install Coral's libedgetpu1-std package (or libedgetpu1-max)",
			EdgeTPULibrary, strings.Join(errs, "; "))
	})
	return b.tpu, b.tpuErr
}

// tfliteMagic is the flatbuffer file identifier of TFLite models, at byte offset 4.
var tfliteMagic = []byte("TFL3")

// Load reads a .tflite file and prepares an interpreter for it. Tensors of type
// float32, float16, uint8 and int8 are supported; callers see float32 buffers either
// way. The engine is for one caller at a time (infer.Engine): infer/detector serialises.
func (b *Backend) Load(path string, opts infer.LoadOptions) (infer.Engine, error) {
	if err := b.Available(); err != nil {
		return nil, err
	}
	device, err := parseDevice(opts.Device)
	if err != nil {
		return nil, err
	}
	if opts.Threads < 0 {
		return nil, fmt.Errorf("tflite: threads %d must not be negative", opts.Threads)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tflite: read model: %w", err)
	}
	// The library checks the flatbuffer's structure (TfLiteModelCreate verifies it), but
	// the file identifier is checked here so a wrong file gets a plain answer.
	if len(data) < 8 || !bytes.Equal(data[4:8], tfliteMagic) {
		return nil, fmt.Errorf("tflite: model %s is not a TFLite model (%d bytes; no TFL3 file identifier at byte 4)", path, len(data))
	}
	e := &engine{lib: b.lib, path: path}
	if err := e.load(b, data, device, opts.Threads); err != nil {
		e.free()
		return nil, fmt.Errorf("tflite: model %s: %w", path, err)
	}
	return e, nil
}

func parseDevice(d string) (string, error) {
	if d == "" {
		return "CPU", nil
	}
	for _, known := range Devices {
		if strings.EqualFold(d, known) {
			return known, nil
		}
	}
	return "", fmt.Errorf("tflite: device %q is not one of %s", d, strings.Join(Devices, ", "))
}

// engine is one interpreter. Everything it points to is C memory it frees in Close.
// Like every infer.Engine it is for one caller at a time (TFLite interpreters are not
// safe for concurrent use either); infer/detector serialises the calls.
type engine struct {
	lib  *library
	path string

	modelData   unsafe.Pointer // the model file, alive as long as the model (TFLite does not copy it)
	model       *C.TfLiteModel
	interpreter *C.TfLiteInterpreter
	errs        *C.vt_errors // the error reporter's buffer, alive as long as the interpreter
	xnnpack     *C.TfLiteDelegate
	tpu         *edgeTPU
	tpuDelegate *C.TfLiteDelegate

	inputs, outputs []tensor
	closed          bool
}

// tensor is one input or output with its float32 buffer.
type tensor struct {
	info  infer.TensorInfo
	t     *C.TfLiteTensor
	typ   C.int
	bytes int // the tensor's byte size
	buf   []float32
	// scale and zero are the tensor's quantisation; scale 0 means none (values are
	// the integers themselves).
	scale float32
	zero  int32
}

func (e *engine) load(b *Backend, data []byte, device string, threads int) error {
	api := e.lib.api
	e.modelData = C.malloc(C.size_t(len(data)))
	if e.modelData == nil {
		return fmt.Errorf("cannot allocate %d bytes for the model", len(data))
	}
	copy(unsafe.Slice((*byte)(e.modelData), len(data)), data)
	e.model = C.vt_model_create(api, e.modelData, C.size_t(len(data)))
	if e.model == nil {
		// TfLiteModelCreate verifies the flatbuffer; its reason goes to stderr only.
		return fmt.Errorf("TFLite %s rejected the file: it is not a valid TFLite flatbuffer (truncated or corrupt)", e.lib.version)
	}
	e.errs = (*C.vt_errors)(C.calloc(1, C.size_t(unsafe.Sizeof(C.vt_errors{}))))
	if e.errs == nil {
		return errors.New("cannot allocate the error buffer")
	}

	options := C.vt_options_create(api)
	if options == nil {
		return errors.New("TfLiteInterpreterOptionsCreate failed")
	}
	// The interpreter copies what it needs: options can go once it exists.
	defer C.vt_options_delete(api, options)
	if threads > 0 {
		C.vt_options_set_num_threads(api, options, C.int32_t(threads))
	}
	C.vt_options_set_error_reporter(api, options, e.errs)
	if err := e.addDelegate(b, options, device); err != nil {
		return err
	}

	e.interpreter = C.vt_interpreter_create(api, e.model, options)
	if e.interpreter == nil {
		msg := e.takeErrors()
		if strings.Contains(msg, "Didn't find op for builtin opcode") {
			msg += fmt.Sprintf(" (the loaded library is TFLite %s, %s; the model needs a newer one)", e.lib.version, e.lib.path)
		}
		return fmt.Errorf("create interpreter: %s", orUnknown(msg))
	}
	if C.vt_interpreter_allocate_tensors(api, e.interpreter) != C.vt_kTfLiteOk {
		return fmt.Errorf("allocate tensors: %s", orUnknown(e.takeErrors()))
	}
	var err error
	if e.inputs, err = e.describe(int(C.vt_input_count(api, e.interpreter)), "input", func(i int) *C.TfLiteTensor {
		return C.vt_input(api, e.interpreter, C.int32_t(i))
	}); err != nil {
		return err
	}
	if e.outputs, err = e.describe(int(C.vt_output_count(api, e.interpreter)), "output", func(i int) *C.TfLiteTensor {
		return C.vt_output(api, e.interpreter, C.int32_t(i))
	}); err != nil {
		return err
	}
	return nil
}

func (e *engine) addDelegate(b *Backend, options *C.TfLiteInterpreterOptions, device string) error {
	api := e.lib.api
	switch device {
	case "XNNPACK":
		if !e.lib.hasXNNPACK() {
			return fmt.Errorf("device XNNPACK: this TFLite library (%s, version %s) has no XNNPACK delegate (TfLiteXNNPackDelegateCreate); use device CPU, or set runtimes.tflite to a libtensorflowlite_c.so built with XNNPACK", e.lib.path, e.lib.version)
		}
		e.xnnpack = C.vt_xnnpack_create(api)
		if e.xnnpack == nil {
			return errors.New("device XNNPACK: TfLiteXNNPackDelegateCreate failed")
		}
		C.vt_options_add_delegate(api, options, e.xnnpack)
	case "EdgeTPU":
		tpu, err := b.edgeTPU()
		if err != nil {
			return fmt.Errorf("device EdgeTPU: %w", err)
		}
		var count C.size_t
		var typ C.int
		var devPath [256]C.char
		d := C.vt_edgetpu_create(tpu.api, &count, &typ, &devPath[0], C.size_t(len(devPath)))
		if count == 0 {
			return fmt.Errorf("device EdgeTPU: %s found no Edge TPU (edgetpu_list_devices lists none): plug one in, or use device CPU", tpu.path)
		}
		if d == nil {
			return fmt.Errorf("device EdgeTPU: %s could not open the Edge TPU at %q (edgetpu_create_delegate failed)", tpu.path, C.GoString(&devPath[0]))
		}
		e.tpu, e.tpuDelegate = tpu, d
		C.vt_options_add_delegate(api, options, d)
	}
	return nil
}

func (e *engine) describe(n int, what string, get func(int) *C.TfLiteTensor) ([]tensor, error) {
	api := e.lib.api
	ts := make([]tensor, n)
	for i := range ts {
		t := get(i)
		if t == nil {
			return nil, fmt.Errorf("%s %d: the interpreter has no such tensor", what, i)
		}
		tt := &ts[i]
		tt.t = t
		tt.typ = C.vt_tensor_type(api, t)
		tt.bytes = int(C.vt_tensor_byte_size(api, t))
		name := C.GoString(C.vt_tensor_name(api, t))
		dims := int(C.vt_tensor_num_dims(api, t))
		shape := make([]int64, dims)
		for k := range shape {
			shape[k] = int64(C.vt_tensor_dim(api, t, C.int32_t(k)))
		}
		info := infer.TensorInfo{Name: name, Shape: shape}
		var size int
		switch tt.typ {
		case typeFloat32:
			info.Type, size = infer.Float32, 4
		case typeFloat16:
			info.Type, size = infer.Float16, 2
		case typeUint8, typeInt8:
			info.Type, size = infer.Uint8, 1
			if tt.typ == typeInt8 {
				info.Type = infer.Int8
			}
			q := C.vt_tensor_quant(api, t)
			tt.scale, tt.zero = float32(q.scale), int32(q.zero_point)
			if tt.scale != 0 {
				info.Quant = &infer.Quantization{Scale: tt.scale, ZeroPoint: int64(tt.zero)}
			}
		default:
			return nil, fmt.Errorf("%s %q has element type %s; this backend handles FLOAT32, FLOAT16, UINT8 and INT8", what, name, typeName(tt.typ))
		}
		if want := info.Elements() * size; want != tt.bytes {
			return nil, fmt.Errorf("%s %s: %d bytes in the interpreter, %d expected from its shape", what, info, tt.bytes, want)
		}
		tt.info = info
		tt.buf = make([]float32, info.Elements())
	}
	return ts, nil
}

// takeErrors returns what the error reporter collected and empties it.
func (e *engine) takeErrors() string {
	if e.errs == nil || e.errs.len == 0 {
		return ""
	}
	s := C.GoStringN(&e.errs.text[0], C.int(e.errs.len))
	e.errs.len = 0
	e.errs.text[0] = 0
	return s
}

func orUnknown(msg string) string {
	if msg == "" {
		return "TFLite gave no reason"
	}
	return msg
}

func (e *engine) Inputs() []infer.TensorInfo  { return infos(e.inputs) }
func (e *engine) Outputs() []infer.TensorInfo { return infos(e.outputs) }
func (e *engine) Input(i int) []float32       { return e.inputs[i].buf }
func (e *engine) Output(i int) []float32      { return e.outputs[i].buf }

func infos(ts []tensor) []infer.TensorInfo {
	out := make([]infer.TensorInfo, len(ts))
	for i, t := range ts {
		out[i] = t.info
	}
	return out
}

// Run copies the input buffers into the interpreter (converting to the tensor's type),
// invokes it, and copies the outputs back. The copies cost well under 1% of an Invoke
// (BenchmarkTFLiteCopy), so the buffers stay plain Go memory rather than views of the
// interpreter's arena, whose addresses TFLite may change.
func (e *engine) Run() error {
	if e.closed {
		return errors.New("tflite: run: engine is closed")
	}
	if err := e.writeInputs(); err != nil {
		return fmt.Errorf("tflite: run: %w", err)
	}
	if err := e.invoke(); err != nil {
		return fmt.Errorf("tflite: run: %w", err)
	}
	if err := e.readOutputs(); err != nil {
		return fmt.Errorf("tflite: run: %w", err)
	}
	return nil
}

func (e *engine) invoke() error {
	e.takeErrors()
	if C.vt_interpreter_invoke(e.lib.api, e.interpreter) != C.vt_kTfLiteOk {
		return fmt.Errorf("invoke: %s", orUnknown(e.takeErrors()))
	}
	return nil
}

func (e *engine) writeInputs() error {
	api := e.lib.api
	for i := range e.inputs {
		t := &e.inputs[i]
		if t.bytes == 0 {
			continue
		}
		if t.typ == typeFloat32 {
			if C.vt_tensor_copy_from(api, t.t, unsafe.Pointer(&t.buf[0]), C.size_t(t.bytes)) != C.vt_kTfLiteOk {
				return fmt.Errorf("input %s: TfLiteTensorCopyFromBuffer failed", t.info.Name)
			}
			continue
		}
		data := C.vt_tensor_data(api, t.t)
		if data == nil {
			return fmt.Errorf("input %s has no data", t.info.Name)
		}
		switch t.typ {
		case typeFloat16:
			dst := unsafe.Slice((*uint16)(data), len(t.buf))
			for k, v := range t.buf {
				dst[k] = float16.Fromfloat32(v).Bits()
			}
		case typeUint8:
			quantize(unsafe.Slice((*uint8)(data), len(t.buf)), t.buf, t.scale, t.zero, 0, 255)
		case typeInt8:
			quantize(unsafe.Slice((*int8)(data), len(t.buf)), t.buf, t.scale, t.zero, -128, 127)
		}
	}
	return nil
}

func (e *engine) readOutputs() error {
	api := e.lib.api
	for i := range e.outputs {
		t := &e.outputs[i]
		if t.bytes == 0 {
			continue
		}
		if t.typ == typeFloat32 {
			if C.vt_tensor_copy_to(api, t.t, unsafe.Pointer(&t.buf[0]), C.size_t(t.bytes)) != C.vt_kTfLiteOk {
				return fmt.Errorf("output %s: TfLiteTensorCopyToBuffer failed", t.info.Name)
			}
			continue
		}
		data := C.vt_tensor_data(api, t.t)
		if data == nil {
			return fmt.Errorf("output %s has no data", t.info.Name)
		}
		switch t.typ {
		case typeFloat16:
			src := unsafe.Slice((*uint16)(data), len(t.buf))
			for k, v := range src {
				t.buf[k] = float16.Frombits(v).Float32()
			}
		case typeUint8:
			dequantize(t.buf, unsafe.Slice((*uint8)(data), len(t.buf)), t.scale, t.zero)
		case typeInt8:
			dequantize(t.buf, unsafe.Slice((*int8)(data), len(t.buf)), t.scale, t.zero)
		}
	}
	return nil
}

// quantize writes q = round(x/scale) + zero, clamped to [lo, hi], rounding halves
// away from zero as TFLite's own QUANTIZE does. Scale 0 means the tensor carries no
// quantisation: q = round(x).
func quantize[Q uint8 | int8](dst []Q, src []float32, scale float32, zero int32, lo, hi float32) {
	if scale == 0 {
		scale, zero = 1, 0
	}
	z := float32(zero)
	for i, x := range src {
		q := float32(math.Round(float64(x/scale))) + z
		if q != q { // NaN
			q = z
		}
		dst[i] = Q(min(max(q, lo), hi))
	}
}

// dequantize writes x = scale * (q - zero); scale 0 means x = q.
func dequantize[Q uint8 | int8](dst []float32, src []Q, scale float32, zero int32) {
	if scale == 0 {
		scale, zero = 1, 0
	}
	for i, q := range src {
		dst[i] = scale * float32(int32(q)-zero)
	}
}

// Close frees the interpreter, its delegates and the model. A second Close returns an
// error and does nothing else.
func (e *engine) Close() error {
	if e.closed {
		return errors.New("tflite: engine already closed")
	}
	e.free()
	return nil
}

// free releases whatever load made, in the order TFLite needs: the interpreter before
// its delegates and model, the model before its bytes.
func (e *engine) free() {
	api := e.lib.api
	e.closed = true
	if e.interpreter != nil {
		C.vt_interpreter_delete(api, e.interpreter)
		e.interpreter = nil
	}
	if e.xnnpack != nil {
		C.vt_xnnpack_delete(api, e.xnnpack)
		e.xnnpack = nil
	}
	if e.tpuDelegate != nil {
		C.vt_edgetpu_free(e.tpu.api, e.tpuDelegate)
		e.tpuDelegate = nil
	}
	if e.model != nil {
		C.vt_model_delete(api, e.model)
		e.model = nil
	}
	if e.modelData != nil {
		C.free(e.modelData)
		e.modelData = nil
	}
	if e.errs != nil {
		C.free(unsafe.Pointer(e.errs))
		e.errs = nil
	}
}
