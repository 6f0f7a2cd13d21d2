// The TFLite C API (tensorflow/lite/c/c_api.h, common.h) and libedgetpu's C API
// (edgetpu_c.h), declared here and called through pointers looked up with dlsym, so
// nothing is linked at build time. Included by the package's cgo files.
#ifndef VIGIL_TFLITE_CAPI_H
#define VIGIL_TFLITE_CAPI_H
#include <dlfcn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct TfLiteModel TfLiteModel;
typedef struct TfLiteInterpreterOptions TfLiteInterpreterOptions;
typedef struct TfLiteInterpreter TfLiteInterpreter;
typedef struct TfLiteTensor TfLiteTensor;
typedef struct TfLiteDelegate TfLiteDelegate;

// TfLiteType and TfLiteStatus are C enums, passed and returned as int.
enum {
	vt_kTfLiteNoType = 0, vt_kTfLiteFloat32 = 1, vt_kTfLiteInt32 = 2, vt_kTfLiteUInt8 = 3,
	vt_kTfLiteInt64 = 4, vt_kTfLiteString = 5, vt_kTfLiteBool = 6, vt_kTfLiteInt16 = 7,
	vt_kTfLiteComplex64 = 8, vt_kTfLiteInt8 = 9, vt_kTfLiteFloat16 = 10,
};
enum { vt_kTfLiteOk = 0 };

typedef struct {
	float scale;
	int32_t zero_point;
} TfLiteQuantizationParams;

typedef void (*vt_reporter_fn)(void* user_data, const char* format, va_list args);

// vt_api holds the library's functions, looked up once.
typedef struct {
	void* handle;
	const char* (*Version)(void);
	TfLiteModel* (*ModelCreate)(const void*, size_t);
	void (*ModelDelete)(TfLiteModel*);
	TfLiteInterpreterOptions* (*OptionsCreate)(void);
	void (*OptionsDelete)(TfLiteInterpreterOptions*);
	void (*OptionsSetNumThreads)(TfLiteInterpreterOptions*, int32_t);
	void (*OptionsSetErrorReporter)(TfLiteInterpreterOptions*, vt_reporter_fn, void*);
	void (*OptionsAddDelegate)(TfLiteInterpreterOptions*, TfLiteDelegate*);
	TfLiteInterpreter* (*InterpreterCreate)(const TfLiteModel*, const TfLiteInterpreterOptions*);
	void (*InterpreterDelete)(TfLiteInterpreter*);
	int (*InterpreterAllocateTensors)(TfLiteInterpreter*);
	int (*InterpreterInvoke)(TfLiteInterpreter*);
	int32_t (*InterpreterGetInputTensorCount)(const TfLiteInterpreter*);
	TfLiteTensor* (*InterpreterGetInputTensor)(const TfLiteInterpreter*, int32_t);
	int32_t (*InterpreterGetOutputTensorCount)(const TfLiteInterpreter*);
	const TfLiteTensor* (*InterpreterGetOutputTensor)(const TfLiteInterpreter*, int32_t);
	int (*TensorType)(const TfLiteTensor*);
	int32_t (*TensorNumDims)(const TfLiteTensor*);
	int32_t (*TensorDim)(const TfLiteTensor*, int32_t);
	size_t (*TensorByteSize)(const TfLiteTensor*);
	void* (*TensorData)(const TfLiteTensor*);
	const char* (*TensorName)(const TfLiteTensor*);
	TfLiteQuantizationParams (*TensorQuantizationParams)(const TfLiteTensor*);
	int (*TensorCopyFromBuffer)(TfLiteTensor*, const void*, size_t);
	int (*TensorCopyToBuffer)(const TfLiteTensor*, void*, size_t);
	// Optional: only in libraries built with the XNNPACK delegate (not TFLite 2.2's C library).
	TfLiteDelegate* (*XNNPackDelegateCreate)(const void* options);
	void (*XNNPackDelegateDelete)(TfLiteDelegate*);
} vt_api;

// vt_open opens path and looks every required function up. On failure it returns NULL
// and writes why into err.
static vt_api* vt_open(const char* path, char* err, size_t errlen) {
	void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		const char* e = dlerror();
		snprintf(err, errlen, "%s", e ? e : "dlopen failed");
		return NULL;
	}
	vt_api* a = calloc(1, sizeof(vt_api));
	if (a == NULL) {
		snprintf(err, errlen, "out of memory");
		dlclose(h);
		return NULL;
	}
	a->handle = h;
#define VT_SYM(field, name) \
	do { \
		*(void**)(&a->field) = dlsym(h, name); \
		if (a->field == NULL) { \
			snprintf(err, errlen, "%s has no function %s", path, name); \
			free(a); \
			dlclose(h); \
			return NULL; \
		} \
	} while (0)
	VT_SYM(Version, "TfLiteVersion");
	VT_SYM(ModelCreate, "TfLiteModelCreate");
	VT_SYM(ModelDelete, "TfLiteModelDelete");
	VT_SYM(OptionsCreate, "TfLiteInterpreterOptionsCreate");
	VT_SYM(OptionsDelete, "TfLiteInterpreterOptionsDelete");
	VT_SYM(OptionsSetNumThreads, "TfLiteInterpreterOptionsSetNumThreads");
	VT_SYM(OptionsSetErrorReporter, "TfLiteInterpreterOptionsSetErrorReporter");
	VT_SYM(OptionsAddDelegate, "TfLiteInterpreterOptionsAddDelegate");
	VT_SYM(InterpreterCreate, "TfLiteInterpreterCreate");
	VT_SYM(InterpreterDelete, "TfLiteInterpreterDelete");
	VT_SYM(InterpreterAllocateTensors, "TfLiteInterpreterAllocateTensors");
	VT_SYM(InterpreterInvoke, "TfLiteInterpreterInvoke");
	VT_SYM(InterpreterGetInputTensorCount, "TfLiteInterpreterGetInputTensorCount");
	VT_SYM(InterpreterGetInputTensor, "TfLiteInterpreterGetInputTensor");
	VT_SYM(InterpreterGetOutputTensorCount, "TfLiteInterpreterGetOutputTensorCount");
	VT_SYM(InterpreterGetOutputTensor, "TfLiteInterpreterGetOutputTensor");
	VT_SYM(TensorType, "TfLiteTensorType");
	VT_SYM(TensorNumDims, "TfLiteTensorNumDims");
	VT_SYM(TensorDim, "TfLiteTensorDim");
	VT_SYM(TensorByteSize, "TfLiteTensorByteSize");
	VT_SYM(TensorData, "TfLiteTensorData");
	VT_SYM(TensorName, "TfLiteTensorName");
	VT_SYM(TensorQuantizationParams, "TfLiteTensorQuantizationParams");
	VT_SYM(TensorCopyFromBuffer, "TfLiteTensorCopyFromBuffer");
	VT_SYM(TensorCopyToBuffer, "TfLiteTensorCopyToBuffer");
#undef VT_SYM
	*(void**)(&a->XNNPackDelegateCreate) = dlsym(h, "TfLiteXNNPackDelegateCreate");
	*(void**)(&a->XNNPackDelegateDelete) = dlsym(h, "TfLiteXNNPackDelegateDelete");
	if (a->XNNPackDelegateDelete == NULL) {
		a->XNNPackDelegateCreate = NULL;
	}
	return a;
}

// vt_errors collects what the library's error reporter says while one engine is
// loaded or run. It lives in C memory because the library keeps the pointer for the
// interpreter's lifetime. Messages past the buffer are dropped: the first ones name
// the cause.
typedef struct {
	char text[8192];
	size_t len;
} vt_errors;

static void vt_report(void* user_data, const char* format, va_list args) {
	vt_errors* e = (vt_errors*)user_data;
	if (e == NULL || e->len >= sizeof(e->text) - 1) {
		return;
	}
	if (e->len > 0) {
		// "; " between messages; the trailing newline of the previous one is trimmed below.
		size_t room = sizeof(e->text) - 1 - e->len;
		if (room < 3) {
			return;
		}
		memcpy(e->text + e->len, "; ", 2);
		e->len += 2;
	}
	size_t room = sizeof(e->text) - e->len;
	va_list copy;
	va_copy(copy, args);
	int n = vsnprintf(e->text + e->len, room, format, copy);
	va_end(copy);
	if (n < 0) {
		e->text[e->len] = 0;
		return;
	}
	e->len += (size_t)n < room ? (size_t)n : room - 1;
	while (e->len > 0 && (e->text[e->len - 1] == '\n' || e->text[e->len - 1] == ' ')) {
		e->len--;
	}
	e->text[e->len] = 0;
}

static const char* vt_version(vt_api* a) { return a->Version(); }
static TfLiteModel* vt_model_create(vt_api* a, const void* data, size_t n) { return a->ModelCreate(data, n); }
static void vt_model_delete(vt_api* a, TfLiteModel* m) { a->ModelDelete(m); }
static TfLiteInterpreterOptions* vt_options_create(vt_api* a) { return a->OptionsCreate(); }
static void vt_options_delete(vt_api* a, TfLiteInterpreterOptions* o) { a->OptionsDelete(o); }
static void vt_options_set_num_threads(vt_api* a, TfLiteInterpreterOptions* o, int32_t n) { a->OptionsSetNumThreads(o, n); }
static void vt_options_set_error_reporter(vt_api* a, TfLiteInterpreterOptions* o, vt_errors* e) {
	a->OptionsSetErrorReporter(o, vt_report, e);
}
static void vt_options_add_delegate(vt_api* a, TfLiteInterpreterOptions* o, TfLiteDelegate* d) { a->OptionsAddDelegate(o, d); }
static TfLiteInterpreter* vt_interpreter_create(vt_api* a, TfLiteModel* m, TfLiteInterpreterOptions* o) { return a->InterpreterCreate(m, o); }
static void vt_interpreter_delete(vt_api* a, TfLiteInterpreter* i) { a->InterpreterDelete(i); }
static int vt_interpreter_allocate_tensors(vt_api* a, TfLiteInterpreter* i) { return a->InterpreterAllocateTensors(i); }
static int vt_interpreter_invoke(vt_api* a, TfLiteInterpreter* i) { return a->InterpreterInvoke(i); }
static int32_t vt_input_count(vt_api* a, TfLiteInterpreter* i) { return a->InterpreterGetInputTensorCount(i); }
static TfLiteTensor* vt_input(vt_api* a, TfLiteInterpreter* i, int32_t k) { return a->InterpreterGetInputTensor(i, k); }
static int32_t vt_output_count(vt_api* a, TfLiteInterpreter* i) { return a->InterpreterGetOutputTensorCount(i); }
static TfLiteTensor* vt_output(vt_api* a, TfLiteInterpreter* i, int32_t k) { return (TfLiteTensor*)a->InterpreterGetOutputTensor(i, k); }
static int vt_tensor_type(vt_api* a, TfLiteTensor* t) { return a->TensorType(t); }
static int32_t vt_tensor_num_dims(vt_api* a, TfLiteTensor* t) { return a->TensorNumDims(t); }
static int32_t vt_tensor_dim(vt_api* a, TfLiteTensor* t, int32_t k) { return a->TensorDim(t, k); }
static size_t vt_tensor_byte_size(vt_api* a, TfLiteTensor* t) { return a->TensorByteSize(t); }
static void* vt_tensor_data(vt_api* a, TfLiteTensor* t) { return a->TensorData(t); }
static const char* vt_tensor_name(vt_api* a, TfLiteTensor* t) { return a->TensorName(t); }
static TfLiteQuantizationParams vt_tensor_quant(vt_api* a, TfLiteTensor* t) { return a->TensorQuantizationParams(t); }
static int vt_tensor_copy_from(vt_api* a, TfLiteTensor* t, const void* src, size_t n) { return a->TensorCopyFromBuffer(t, src, n); }
static int vt_tensor_copy_to(vt_api* a, TfLiteTensor* t, void* dst, size_t n) { return a->TensorCopyToBuffer(t, dst, n); }
static int vt_has_xnnpack(vt_api* a) { return a->XNNPackDelegateCreate != NULL; }
// NULL options: the delegate's documented defaults. The options struct has grown
// fields across TFLite versions, so one declared here could not match every library.
static TfLiteDelegate* vt_xnnpack_create(vt_api* a) { return a->XNNPackDelegateCreate(NULL); }
static void vt_xnnpack_delete(vt_api* a, TfLiteDelegate* d) { a->XNNPackDelegateDelete(d); }

// libedgetpu's C API (edgetpu_c.h).
struct vt_edgetpu_device {
	int type; // enum edgetpu_device_type: 0 PCI, 1 USB
	const char* path;
};
struct vt_edgetpu_option {
	const char* name;
	const char* value;
};
typedef struct {
	void* handle;
	struct vt_edgetpu_device* (*list_devices)(size_t*);
	void (*free_devices)(struct vt_edgetpu_device*);
	TfLiteDelegate* (*create_delegate)(int, const char*, const struct vt_edgetpu_option*, size_t);
	void (*free_delegate)(TfLiteDelegate*);
} vt_edgetpu;

static vt_edgetpu* vt_edgetpu_open(const char* path, char* err, size_t errlen) {
	void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		const char* e = dlerror();
		snprintf(err, errlen, "%s", e ? e : "dlopen failed");
		return NULL;
	}
	vt_edgetpu* t = calloc(1, sizeof(vt_edgetpu));
	if (t == NULL) {
		snprintf(err, errlen, "out of memory");
		dlclose(h);
		return NULL;
	}
	t->handle = h;
	const char* names[] = {"edgetpu_list_devices", "edgetpu_free_devices", "edgetpu_create_delegate", "edgetpu_free_delegate"};
	void** slots[] = {(void**)&t->list_devices, (void**)&t->free_devices, (void**)&t->create_delegate, (void**)&t->free_delegate};
	for (int i = 0; i < 4; i++) {
		*slots[i] = dlsym(h, names[i]);
		if (*slots[i] == NULL) {
			snprintf(err, errlen, "%s has no function %s", path, names[i]);
			free(t);
			dlclose(h);
			return NULL;
		}
	}
	return t;
}

// vt_edgetpu_create makes a delegate for the first Edge TPU found. It returns NULL and
// sets *count to the number of devices (0 when there is none).
static TfLiteDelegate* vt_edgetpu_create(vt_edgetpu* t, size_t* count, int* type, char* path, size_t pathlen) {
	*count = 0;
	struct vt_edgetpu_device* devs = t->list_devices(count);
	if (devs == NULL || *count == 0) {
		if (devs != NULL) {
			t->free_devices(devs);
		}
		*count = 0;
		return NULL;
	}
	*type = devs[0].type;
	snprintf(path, pathlen, "%s", devs[0].path ? devs[0].path : "");
	TfLiteDelegate* d = t->create_delegate(devs[0].type, devs[0].path, NULL, 0);
	t->free_devices(devs);
	return d;
}
static void vt_edgetpu_free(vt_edgetpu* t, TfLiteDelegate* d) { t->free_delegate(d); }
#endif
