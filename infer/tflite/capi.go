package tflite

// The TFLite C API, declared here rather than included: the library is opened with
// dlopen at run time, so neither its headers nor the library are needed to build, and
// the vigil binary starts where it is absent. The declarations follow
// tensorflow/lite/c/c_api.h and common.h, which have kept these types, enum values and
// signatures unchanged from TFLite 2.2 onwards. Each function is looked up once per
// library and called through its pointer.

/*
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "capi.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// TfLiteType values.
const (
	typeFloat32 = C.vt_kTfLiteFloat32
	typeUint8   = C.vt_kTfLiteUInt8
	typeInt8    = C.vt_kTfLiteInt8
	typeFloat16 = C.vt_kTfLiteFloat16
)

var typeNames = map[C.int]string{
	C.vt_kTfLiteNoType: "NOTYPE", C.vt_kTfLiteFloat32: "FLOAT32", C.vt_kTfLiteInt32: "INT32",
	C.vt_kTfLiteUInt8: "UINT8", C.vt_kTfLiteInt64: "INT64", C.vt_kTfLiteString: "STRING",
	C.vt_kTfLiteBool: "BOOL", C.vt_kTfLiteInt16: "INT16", C.vt_kTfLiteComplex64: "COMPLEX64",
	C.vt_kTfLiteInt8: "INT8", C.vt_kTfLiteFloat16: "FLOAT16",
}

func typeName(t C.int) string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type %d", int(t))
}

// library is one opened TFLite C library. It stays open for the life of the process:
// engines made from it may outlive any one caller.
type library struct {
	path    string
	version string
	api     *C.vt_api
}

func openLibrary(path string) (*library, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var errbuf [512]C.char
	api := C.vt_open(cpath, &errbuf[0], C.size_t(len(errbuf)))
	if api == nil {
		return nil, errors.New(C.GoString(&errbuf[0]))
	}
	return &library{path: path, version: C.GoString(C.vt_version(api)), api: api}, nil
}

func (l *library) hasXNNPACK() bool { return C.vt_has_xnnpack(l.api) != 0 }

// edgeTPU is an opened libedgetpu.
type edgeTPU struct {
	path string
	api  *C.vt_edgetpu
}

func openEdgeTPU(path string) (*edgeTPU, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var errbuf [512]C.char
	api := C.vt_edgetpu_open(cpath, &errbuf[0], C.size_t(len(errbuf)))
	if api == nil {
		return nil, errors.New(C.GoString(&errbuf[0]))
	}
	return &edgeTPU{path: path, api: api}, nil
}
