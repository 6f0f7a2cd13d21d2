package openvino

// The C layer (vov.h, vov.c) declares the OpenVINO C API itself and opens the library
// with dlopen, so the package builds without OpenVINO's headers.

// #cgo LDFLAGS: -ldl
// #include <stdlib.h>
// #include "vov.h"
import "C"

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"
)

// api is a loaded libopenvino_c with its core.
type api struct {
	c    *C.vov_api
	path string
}

// open loads lib and creates OpenVINO's core.
func open(lib string) (*api, error) {
	clib := C.CString(lib)
	defer C.free(unsafe.Pointer(clib))
	var cerr *C.char
	c := C.vov_open(clib, &cerr)
	if c == nil {
		msg := C.GoString(cerr)
		C.free(unsafe.Pointer(cerr))
		if strings.Contains(msg, lib) { // dlerror names the library itself
			return nil, errors.New(msg)
		}
		return nil, fmt.Errorf("%s: %s", lib, msg)
	}
	a := &api{c: c, path: lib}
	if s := C.vov_core_create(c); s != C.VOV_OK {
		err := a.status(s)
		C.vov_close(c)
		return nil, fmt.Errorf("%s: create the core: %w", lib, err)
	}
	return a, nil
}

// status turns a failed call's status into an error with OpenVINO's message.
func (a *api) status(s C.ov_status_e) error {
	msg := C.vov_error(a.c, s)
	defer C.free(unsafe.Pointer(msg))
	return statusError{code: int(s), msg: C.GoString(msg)}
}

type statusError struct {
	code int
	msg  string
}

func (e statusError) Error() string { return e.msg }

// devices lists the devices OpenVINO can run on here (CPU, GPU, GPU.1, NPU, ...).
func (a *api) devices() ([]string, error) {
	var s C.ov_status_e
	list := C.vov_devices(a.c, &s)
	if list == nil {
		if s == C.VOV_OK {
			return nil, fmt.Errorf("list devices: out of memory")
		}
		return nil, fmt.Errorf("list devices: %w", a.status(s))
	}
	defer C.free(unsafe.Pointer(list))
	if C.GoString(list) == "" {
		return nil, nil
	}
	return strings.Split(C.GoString(list), "\n"), nil
}

// elementTypes names ov_element_type_e values that are the same in every release;
// later ones were renumbered in 2024.0 (U2, U3 and U6 came before U8).
var elementTypes = []string{"undefined", "dynamic", "boolean", "bf16", "f16", "f32", "f64", "i4", "i8", "i16", "i32", "i64"}

func elementTypeName(t C.ov_element_type_e) string {
	if t >= 0 && int(t) < len(elementTypes) {
		return elementTypes[t]
	}
	return fmt.Sprintf("element type %d", int(t))
}
