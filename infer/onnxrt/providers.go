package onnxrt

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>

// onnxruntime_go does not wrap OrtApi::GetAvailableProviders, so this reads it from
// the library onnxruntime_go already opened. OrtApi is a table of function pointers
// that ONNX Runtime only ever appends to (its ABI promise), so a field's position is
// fixed; these were counted with offsetof in onnxruntime_c_api.h (API 24).
enum {
	vigil_idx_release_status = 93,
	vigil_idx_get_available_providers = 125,
	vigil_idx_release_available_providers = 126,
};

typedef struct {
	void *const *(*GetApi)(uint32_t version);
	const char *(*GetVersionString)(void);
} vigil_ort_api_base;

typedef void *(*vigil_get_providers_fn)(char ***out, int *n);
typedef void *(*vigil_release_providers_fn)(char **ptr, int n);
typedef void (*vigil_release_status_fn)(void *status);

// vigil_ort_providers lists the execution providers of the already loaded library lib
// (RTLD_NOLOAD: it never loads a library of its own). It returns 0 and sets *out and
// *n, to be released with vigil_ort_release_providers, or a negative step number.
static int vigil_ort_providers(const char *lib, char ***out, int *n, void **api_out) {
	void *h = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD);
	if (h == NULL) return -1;
	void *sym = dlsym(h, "OrtGetApiBase");
	// The library stays loaded: onnxruntime_go holds its own reference.
	dlclose(h);
	if (sym == NULL) return -2;
	const vigil_ort_api_base *base = ((const vigil_ort_api_base *(*)(void))sym)();
	if (base == NULL) return -3;
	// API 11 (ONNX Runtime 1.11) has GetAvailableProviders; any newer library serves it.
	void *const *api = base->GetApi(11);
	if (api == NULL) return -4;
	void *status = ((vigil_get_providers_fn)api[vigil_idx_get_available_providers])(out, n);
	if (status != NULL) {
		((vigil_release_status_fn)api[vigil_idx_release_status])(status);
		return -5;
	}
	*api_out = (void *)api;
	return 0;
}

static void vigil_ort_release_providers(void *api, char **ptr, int n) {
	void *status = ((vigil_release_providers_fn)((void *const *)api)[vigil_idx_release_available_providers])(ptr, n);
	if (status != NULL) ((vigil_release_status_fn)((void *const *)api)[vigil_idx_release_status])(status);
}
*/
import "C"

import (
	"fmt"
	"slices"
	"strings"
	"unsafe"

	ort "github.com/yalue/onnxruntime_go"
)

// availableProviders lists the execution providers compiled into the ONNX Runtime
// library that lib names, which must already be loaded. ONNX Runtime notes that a
// listed provider may still fail to load (CUDA without its libraries, say); appending
// it then fails with ONNX Runtime's own error.
func availableProviders(lib string) ([]string, error) {
	clib := C.CString(lib)
	defer C.free(unsafe.Pointer(clib))
	var (
		list **C.char
		n    C.int
		api  unsafe.Pointer
	)
	if rc := C.vigil_ort_providers(clib, &list, &n, &api); rc != 0 {
		why := map[C.int]string{
			-1: "it is not loaded",
			-2: "it has no OrtGetApiBase",
			-3: "OrtGetApiBase returned nothing",
			-4: "it refused API version 11",
			-5: "GetAvailableProviders failed",
		}[rc]
		return nil, fmt.Errorf("list the execution providers of %s: %s", lib, why)
	}
	defer C.vigil_ort_release_providers(api, list, n)
	names := make([]string, int(n))
	for i, p := range unsafe.Slice(list, int(n)) {
		names[i] = C.GoString(p)
	}
	return names, nil
}

// provider is an execution provider a model can ask for with its device.
type provider struct {
	device  string // as the user wrote it
	ortName string // as GetAvailableProviders names it
	options map[string]string
}

// devicesHelp lists the device values the onnxruntime backend knows, for errors.
const devicesHelp = "CPU, CUDA (or GPU), TensorRT, OpenVINO, OpenVINO:<device> such as OpenVINO:GPU"

// parseDevice maps a model's device to an execution provider; CPU (or empty) is nil,
// ONNX Runtime's default CPU provider with nothing appended.
func parseDevice(device string) (*provider, error) {
	name, sub, hasSub := strings.Cut(device, ":")
	switch {
	case device == "" || strings.EqualFold(device, "CPU"):
		return nil, nil
	case !hasSub && (strings.EqualFold(name, "CUDA") || strings.EqualFold(name, "GPU")):
		return &provider{device: device, ortName: "CUDAExecutionProvider"}, nil
	case !hasSub && strings.EqualFold(name, "TensorRT"):
		return &provider{device: device, ortName: "TensorrtExecutionProvider"}, nil
	case strings.EqualFold(name, "OpenVINO"):
		p := &provider{device: device, ortName: "OpenVINOExecutionProvider", options: map[string]string{}}
		if hasSub {
			if sub == "" {
				return nil, fmt.Errorf("device %q: name the OpenVINO device after the colon (OpenVINO:CPU, OpenVINO:GPU, OpenVINO:NPU)", device)
			}
			// The provider's device_type option takes CPU, GPU, NPU, GPU.0, AUTO:GPU,CPU, ...
			p.options["device_type"] = strings.ToUpper(sub)
		}
		return p, nil
	}
	return nil, fmt.Errorf("device %q is not one the onnxruntime backend knows (it knows %s)", device, devicesHelp)
}

// appendProvider adds p to so. available is what the library lists; a provider it
// does not list is an error naming both before ONNX Runtime is asked. A listed one can
// still fail: ONNX Runtime's GPU providers are libraries of their own
// (libonnxruntime_providers_<name>.so beside the main library, with
// libonnxruntime_providers_shared.so), and even the CPU-only build lists CUDA and
// TensorRT.
func appendProvider(so *ort.SessionOptions, p *provider, lib string, available []string) error {
	has := strings.Join(available, ", ")
	if !slices.Contains(available, p.ortName) {
		return fmt.Errorf("device %q needs ONNX Runtime's %s, which %s was not built with (it lists %s); install an ONNX Runtime build with it and set runtimes.onnxruntime to its path, or use device CPU",
			p.device, p.ortName, lib, has)
	}
	var err error
	switch p.ortName {
	case "CUDAExecutionProvider":
		var opts *ort.CUDAProviderOptions
		if opts, err = ort.NewCUDAProviderOptions(); err == nil {
			err = so.AppendExecutionProviderCUDA(opts)
			opts.Destroy()
		}
	case "TensorrtExecutionProvider":
		var opts *ort.TensorRTProviderOptions
		if opts, err = ort.NewTensorRTProviderOptions(); err == nil {
			err = so.AppendExecutionProviderTensorRT(opts)
			opts.Destroy()
		}
	case "OpenVINOExecutionProvider":
		err = so.AppendExecutionProviderOpenVINO(p.options)
	default:
		err = fmt.Errorf("no way to append %s", p.ortName)
	}
	if err != nil {
		return fmt.Errorf("device %q: %s lists %s (it lists %s) but could not add it: %w; it needs %s and libonnxruntime_providers_shared.so beside the ONNX Runtime library, and the provider's own runtime (CUDA, TensorRT or OpenVINO); or use device CPU",
			p.device, lib, p.ortName, has, err, p.library())
	}
	return nil
}

// library is the shared library ONNX Runtime loads the provider from.
func (p *provider) library() string {
	short := map[string]string{
		"CUDAExecutionProvider":     "cuda",
		"TensorrtExecutionProvider": "tensorrt",
		"OpenVINOExecutionProvider": "openvino",
	}[p.ortName]
	return "libonnxruntime_providers_" + short + ".so"
}

// optimizationLevel maps a model's optimization setting to ONNX Runtime's level.
func optimizationLevel(s string) (ort.GraphOptimizationLevel, error) {
	switch strings.ToLower(s) {
	case "", "all":
		return ort.GraphOptimizationLevelEnableAll, nil
	case "extended":
		return ort.GraphOptimizationLevelEnableExtended, nil
	case "basic":
		return ort.GraphOptimizationLevelEnableBasic, nil
	case "disabled":
		return ort.GraphOptimizationLevelDisableAll, nil
	}
	return 0, fmt.Errorf("optimization %q is not a graph optimisation level (all, extended, basic or disabled)", s)
}
