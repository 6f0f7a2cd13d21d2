// A fake libopenvino_c.so for the openvino backend's tests, since Intel's runtime
// cannot be had where they run. It exports exactly the functions the backend looks up,
// with the signatures of OpenVINO's C headers (openvino/c/*.h, 2023.0 to 2025.x), and
// behaves as the documentation says the real ones do, checking how it is called:
//
//   - Devices: CPU, GPU (also as GPU.0) and NPU, and AUTO. Compiling for NPU fails with a message set here (as on
//     a machine whose NPU driver is missing). A GPU request refuses host output tensors,
//     so the backend has to copy outputs out of the request's own.
//   - Models: a file starting with "FAKE-OV-MODEL" is one model, input "images" f32
//     [1,3,4,4], output "scores" f32 [1,2]: scores[0] is the sum of channel 0 and
//     scores[1] the sum of channel 2. "input=f16" in the file makes the input f16;
//     "dynamic" makes its shape dynamic. An .xml needs its .bin path. Anything else
//     fails to parse.
//   - Every object it hands out is tracked: a call on an object that is not live, or a
//     free of one, is an error that is logged as BAD. With FAKE_OV_LOG set to a file,
//     every allocation, free, compile and inference is appended to it, so a test can
//     check the calling sequence and that everything was freed.
//
// Built by the tests: cc -shared -fPIC -o libopenvino_c.so fake_openvino.c; with
// -DFAKE_NO_LAST_ERR_MSG it is a 2023.x library without ov_get_last_err_msg, with
// -DFAKE_NO_INFER one that lacks ov_infer_request_infer.
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
	OK = 0,
	GENERAL_ERROR = -1,
	NOT_FOUND = -5,
	OUT_OF_BOUNDS = -6,
	INFER_NOT_STARTED = -11,
	NETWORK_NOT_READ = -12,
	INVALID_C_PARAM = -14,
} ov_status_e;

typedef enum { UNDEFINED = 0U, DYNAMIC, BOOLEAN, BF16, F16, F32 } ov_element_type_e;

typedef struct {
	int64_t rank;
	int64_t *dims;
} ov_shape_t;

typedef struct {
	char **devices;
	size_t size;
} ov_available_devices_t;

#define EXPORT __attribute__((visibility("default")))

// --- bookkeeping -----------------------------------------------------------------

static char last_err[512];
static bool have_err;

static void flog(const char *fmt, ...) {
	const char *path = getenv("FAKE_OV_LOG");
	if (path == NULL) return;
	FILE *f = fopen(path, "a");
	if (f == NULL) return;
	va_list ap;
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fputc('\n', f);
	fclose(f);
}

static ov_status_e fail(ov_status_e s, const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_err, sizeof last_err, fmt, ap);
	va_end(ap);
	have_err = true;
	flog("error %d %s", s, last_err);
	return s;
}

#define MAXLIVE 4096
static struct {
	void *p;
	const char *kind;
} live[MAXLIVE];

static void *track(void *p, const char *kind) {
	for (int i = 0; i < MAXLIVE; i++) {
		if (live[i].p == NULL) {
			live[i].p = p;
			live[i].kind = kind;
			flog("alloc %s %p", kind, p);
			return p;
		}
	}
	flog("BAD too many live objects");
	return p;
}

static bool is_live(const void *p, const char *kind) {
	if (p == NULL) return false;
	for (int i = 0; i < MAXLIVE; i++)
		if (live[i].p == p && strcmp(live[i].kind, kind) == 0) return true;
	return false;
}

static bool untrack(const void *p, const char *kind) {
	for (int i = 0; i < MAXLIVE; i++) {
		if (live[i].p == p && strcmp(live[i].kind, kind) == 0) {
			live[i].p = NULL;
			flog("free %s %p", kind, p);
			return true;
		}
	}
	flog("BAD free of %s %p that is not live", kind, p);
	return false;
}

#define CHECK(p, kind) \
	if (!is_live((p), (kind))) { \
		flog("BAD %s: %s %p is not live", __func__, (kind), (const void *)(p)); \
		return fail(INVALID_C_PARAM, "fake: %s: %s is not live", __func__, (kind)); \
	}

// --- objects -----------------------------------------------------------------------

typedef struct { int unused; } ov_core_t;

typedef struct {
	ov_element_type_e input_type;
	bool dynamic;
} ov_model_t;

typedef struct {
	const ov_model_t *model;
	bool output;
	size_t index;
} ov_output_const_port_t;

typedef struct {
	ov_model_t model;
	char device[32];
} ov_compiled_model_t;

typedef struct {
	ov_element_type_e type;
	int64_t rank;
	int64_t dims[8];
	float *data;
	bool owns;
} ov_tensor_t;

typedef struct {
	const ov_compiled_model_t *compiled;
	const ov_tensor_t *input;   // set by the user
	const ov_tensor_t *output;  // set by the user, or NULL
	float own_output[2];        // the request's own output
	bool ran;
} ov_infer_request_t;

static const int64_t input_dims[] = {1, 3, 4, 4};
static const int64_t output_dims[] = {1, 2};

static char *dup_str(const char *s) {
	return track(strdup(s), "string");
}

// --- the API -------------------------------------------------------------------------

EXPORT const char *ov_get_error_info(ov_status_e status) {
	switch (status) {
	case OK: return "OK";
	case GENERAL_ERROR: return "GENERAL_ERROR";
	case NOT_FOUND: return "NOT_FOUND";
	case OUT_OF_BOUNDS: return "OUT_OF_BOUNDS";
	case INFER_NOT_STARTED: return "INFER_NOT_STARTED";
	case NETWORK_NOT_READ: return "NETWORK_NOT_READ";
	case INVALID_C_PARAM: return "INVALID_C_PARAM";
	}
	return "UNKNOWN_ERROR";
}

#ifndef FAKE_NO_LAST_ERR_MSG
EXPORT const char *ov_get_last_err_msg(void) {
	return have_err ? dup_str(last_err) : NULL;
}
#endif

EXPORT void ov_free(const char *content) {
	if (content == NULL) return;
	if (untrack(content, "string")) free((void *)content);
}

EXPORT ov_status_e ov_core_create(ov_core_t **core) {
	if (core == NULL) return fail(INVALID_C_PARAM, "fake: ov_core_create: NULL");
	*core = track(calloc(1, sizeof(ov_core_t)), "core");
	return OK;
}

EXPORT ov_status_e ov_core_get_available_devices(const ov_core_t *core, ov_available_devices_t *devices) {
	CHECK(core, "core");
	static const char *names[] = {"CPU", "GPU", "NPU"};
	devices->size = 3;
	devices->devices = track(calloc(3, sizeof(char *)), "devices");
	for (int i = 0; i < 3; i++) devices->devices[i] = strdup(names[i]);
	return OK;
}

EXPORT void ov_available_devices_free(ov_available_devices_t *devices) {
	if (devices == NULL || devices->devices == NULL) return;
	if (!untrack(devices->devices, "devices")) return;
	for (size_t i = 0; i < devices->size; i++) free(devices->devices[i]);
	free(devices->devices);
	devices->devices = NULL;
	devices->size = 0;
}

EXPORT ov_status_e ov_core_read_model(const ov_core_t *core, const char *model_path, const char *bin_path, ov_model_t **model) {
	CHECK(core, "core");
	if (model_path == NULL || model == NULL) return fail(INVALID_C_PARAM, "fake: ov_core_read_model: NULL");
	FILE *f = fopen(model_path, "rb");
	if (f == NULL) return fail(GENERAL_ERROR, "fake: Model file %s cannot be opened!", model_path);
	char buf[256] = {0};
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	if (strncmp(buf, "FAKE-OV-MODEL", 13) != 0)
		return fail(NETWORK_NOT_READ, "fake: cannot parse %s: not a model this fake knows", model_path);
	size_t len = strlen(model_path);
	if (len > 4 && strcmp(model_path + len - 4, ".xml") == 0) {
		if (bin_path == NULL) return fail(GENERAL_ERROR, "fake: %s: no weights path given", model_path);
		FILE *b = fopen(bin_path, "rb");
		if (b == NULL) return fail(GENERAL_ERROR, "fake: weights %s cannot be opened", bin_path);
		fclose(b);
	}
	ov_model_t *m = calloc(1, sizeof(ov_model_t));
	m->input_type = strstr(buf, "input=f16") ? F16 : F32;
	m->dynamic = strstr(buf, "dynamic") != NULL;
	*model = track(m, "model");
	return OK;
}

EXPORT void ov_model_free(ov_model_t *model) {
	if (untrack(model, "model")) free(model);
}

EXPORT ov_status_e ov_model_inputs_size(const ov_model_t *model, size_t *size) {
	CHECK(model, "model");
	*size = 1;
	return OK;
}

EXPORT ov_status_e ov_model_outputs_size(const ov_model_t *model, size_t *size) {
	CHECK(model, "model");
	*size = 1;
	return OK;
}

static ov_status_e new_port(const ov_model_t *model, bool output, size_t index, ov_output_const_port_t **port) {
	CHECK(model, "model");
	if (index != 0) return fail(OUT_OF_BOUNDS, "fake: %s index %zu out of range", output ? "output" : "input", index);
	ov_output_const_port_t *p = calloc(1, sizeof *p);
	p->model = model;
	p->output = output;
	p->index = index;
	*port = track(p, "port");
	return OK;
}

EXPORT ov_status_e ov_model_const_input_by_index(const ov_model_t *model, const size_t index, ov_output_const_port_t **port) {
	return new_port(model, false, index, port);
}

EXPORT ov_status_e ov_model_const_output_by_index(const ov_model_t *model, const size_t index, ov_output_const_port_t **port) {
	return new_port(model, true, index, port);
}

EXPORT void ov_output_const_port_free(ov_output_const_port_t *port) {
	if (untrack(port, "port")) free(port);
}

EXPORT ov_status_e ov_port_get_any_name(const ov_output_const_port_t *port, char **name) {
	CHECK(port, "port");
	*name = dup_str(port->output ? "scores" : "images");
	return OK;
}

EXPORT ov_status_e ov_port_get_element_type(const ov_output_const_port_t *port, ov_element_type_e *type) {
	CHECK(port, "port");
	*type = port->output ? F32 : port->model->input_type;
	return OK;
}

EXPORT ov_status_e ov_const_port_get_shape(const ov_output_const_port_t *port, ov_shape_t *shape) {
	CHECK(port, "port");
	if (!port->output && port->model->dynamic)
		return fail(GENERAL_ERROR, "fake: get_shape was called on a descriptor::Tensor with dynamic shape");
	const int64_t *dims = port->output ? output_dims : input_dims;
	shape->rank = port->output ? 2 : 4;
	shape->dims = track(malloc(sizeof(int64_t) * shape->rank), "dims");
	memcpy(shape->dims, dims, sizeof(int64_t) * shape->rank);
	return OK;
}

EXPORT ov_status_e ov_shape_free(ov_shape_t *shape) {
	if (shape == NULL) return fail(INVALID_C_PARAM, "fake: ov_shape_free: NULL");
	if (untrack(shape->dims, "dims")) free(shape->dims);
	shape->dims = NULL;
	return OK;
}

EXPORT ov_status_e ov_core_compile_model(const ov_core_t *core, const ov_model_t *model, const char *device_name,
		const size_t property_args_size, ov_compiled_model_t **compiled_model, ...) {
	CHECK(core, "core");
	CHECK(model, "model");
	if (compiled_model == NULL || device_name == NULL || property_args_size % 2 != 0)
		return fail(INVALID_C_PARAM, "fake: ov_core_compile_model: bad arguments");
	char props[256] = "";
	va_list ap;
	va_start(ap, compiled_model);
	for (size_t i = 0; i < property_args_size / 2; i++) {
		const char *key = va_arg(ap, const char *);
		const char *value = va_arg(ap, const char *);
		if (strcmp(key, "INFERENCE_NUM_THREADS") != 0) {
			va_end(ap);
			return fail(GENERAL_ERROR, "fake: unsupported property %s", key);
		}
		if (strcmp(device_name, "CPU") != 0) {
			va_end(ap);
			return fail(GENERAL_ERROR, "fake %s plugin: unsupported property %s", device_name, key);
		}
		if (atoi(value) <= 0) {
			va_end(ap);
			return fail(GENERAL_ERROR, "fake: INFERENCE_NUM_THREADS %s is not a positive number", value);
		}
		snprintf(props + strlen(props), sizeof props - strlen(props), " %s=%s", key, value);
	}
	va_end(ap);
	if (strcmp(device_name, "NPU") == 0)
		return fail(GENERAL_ERROR, "fake NPU plugin: no NPU driver is loaded (level zero not found)");
	if (strcmp(device_name, "CPU") != 0 && strncmp(device_name, "GPU", 3) != 0 && strcmp(device_name, "AUTO") != 0)
		return fail(GENERAL_ERROR, "fake: device with \"%s\" name is not registered in the OpenVINO Runtime", device_name);
	ov_compiled_model_t *c = calloc(1, sizeof *c);
	c->model = *model;
	snprintf(c->device, sizeof c->device, "%s", device_name);
	*compiled_model = track(c, "compiled");
	flog("compile %s%s", device_name, props);
	return OK;
}

EXPORT void ov_compiled_model_free(ov_compiled_model_t *compiled_model) {
	if (untrack(compiled_model, "compiled")) free(compiled_model);
}

EXPORT ov_status_e ov_compiled_model_create_infer_request(const ov_compiled_model_t *compiled_model, ov_infer_request_t **request) {
	CHECK(compiled_model, "compiled");
	ov_infer_request_t *r = calloc(1, sizeof *r);
	r->compiled = compiled_model;
	*request = track(r, "request");
	return OK;
}

EXPORT void ov_infer_request_free(ov_infer_request_t *request) {
	if (untrack(request, "request")) free(request);
}

EXPORT ov_status_e ov_tensor_create_from_host_ptr(const ov_element_type_e type, const ov_shape_t shape, void *host_ptr, ov_tensor_t **tensor) {
	if (host_ptr == NULL || tensor == NULL || shape.rank <= 0 || shape.rank > 8 || shape.dims == NULL)
		return fail(INVALID_C_PARAM, "fake: ov_tensor_create_from_host_ptr: bad arguments");
	if (type != F32) return fail(GENERAL_ERROR, "fake: tensor element type %d is not f32", type);
	ov_tensor_t *t = calloc(1, sizeof *t);
	t->type = type;
	t->rank = shape.rank;
	memcpy(t->dims, shape.dims, sizeof(int64_t) * shape.rank); // the caller may free its dims
	t->data = host_ptr;
	*tensor = track(t, "tensor");
	return OK;
}

EXPORT ov_status_e ov_tensor_data(const ov_tensor_t *tensor, void **data) {
	CHECK(tensor, "tensor");
	*data = tensor->data;
	return OK;
}

EXPORT ov_status_e ov_tensor_get_byte_size(const ov_tensor_t *tensor, size_t *byte_size) {
	CHECK(tensor, "tensor");
	size_t n = 1;
	for (int64_t i = 0; i < tensor->rank; i++) n *= (size_t)tensor->dims[i];
	*byte_size = n * sizeof(float);
	return OK;
}

EXPORT void ov_tensor_free(ov_tensor_t *tensor) {
	if (!untrack(tensor, "tensor")) return;
	if (tensor->owns) free(tensor->data);
	free(tensor);
}

static bool same_shape(const ov_tensor_t *t, const int64_t *dims, int64_t rank) {
	if (t->rank != rank) return false;
	for (int64_t i = 0; i < rank; i++)
		if (t->dims[i] != dims[i]) return false;
	return true;
}

EXPORT ov_status_e ov_infer_request_set_input_tensor_by_index(ov_infer_request_t *request, const size_t idx, const ov_tensor_t *tensor) {
	CHECK(request, "request");
	CHECK(tensor, "tensor");
	if (idx != 0) return fail(OUT_OF_BOUNDS, "fake: input index %zu out of range", idx);
	if (!same_shape(tensor, input_dims, 4)) return fail(GENERAL_ERROR, "fake: input tensor shape does not match [1,3,4,4]");
	request->input = tensor;
	return OK;
}

EXPORT ov_status_e ov_infer_request_set_output_tensor_by_index(ov_infer_request_t *request, const size_t idx, const ov_tensor_t *tensor) {
	CHECK(request, "request");
	CHECK(tensor, "tensor");
	if (idx != 0) return fail(OUT_OF_BOUNDS, "fake: output index %zu out of range", idx);
	if (strncmp(request->compiled->device, "GPU", 3) == 0)
		return fail(GENERAL_ERROR, "fake GPU plugin: output tensors live in device memory; host tensors cannot be set");
	if (!same_shape(tensor, output_dims, 2)) return fail(GENERAL_ERROR, "fake: output tensor shape does not match [1,2]");
	request->output = tensor;
	return OK;
}

EXPORT ov_status_e ov_infer_request_get_output_tensor_by_index(const ov_infer_request_t *request, const size_t idx, ov_tensor_t **tensor) {
	CHECK(request, "request");
	if (idx != 0) return fail(OUT_OF_BOUNDS, "fake: output index %zu out of range", idx);
	if (!request->ran) return fail(INFER_NOT_STARTED, "fake: output read before inference");
	ov_tensor_t *t = calloc(1, sizeof *t);
	t->type = F32;
	t->rank = 2;
	memcpy(t->dims, output_dims, sizeof output_dims);
	t->data = request->output ? request->output->data : (float *)request->own_output;
	*tensor = track(t, "tensor");
	return OK;
}

#ifndef FAKE_NO_INFER
EXPORT ov_status_e ov_infer_request_infer(ov_infer_request_t *request) {
	CHECK(request, "request");
	if (request->input == NULL) return fail(GENERAL_ERROR, "fake: input 0 was never set");
	CHECK(request->input, "tensor");
	if (request->output != NULL) CHECK(request->output, "tensor");
	const float *in = request->input->data;
	float *out = request->output ? request->output->data : request->own_output;
	float s0 = 0, s2 = 0;
	for (int i = 0; i < 16; i++) {
		s0 += in[i];
		s2 += in[32 + i];
	}
	out[0] = s0;
	out[1] = s2;
	request->ran = true;
	flog("infer %s %s", request->compiled->device, request->output ? "into-host-output" : "into-own-output");
	return OK;
}
#endif
