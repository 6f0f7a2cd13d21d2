// vov.c: the C layer between the Go code and libopenvino_c, which it opens with
// dlopen. Declarations and the why are in vov.h.
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vov.h"


// vov_open loads lib and its functions. On failure it returns NULL and sets *err to a
// malloc'd message (dlerror's, or the missing function's name), which the caller frees.
vov_api *vov_open(const char *lib, char **err) {
	*err = NULL;
	void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		const char *e = dlerror();
		*err = strdup(e ? e : "dlopen failed");
		return NULL;
	}
	vov_api *api = calloc(1, sizeof(vov_api));
	if (api == NULL) {
		dlclose(h);
		*err = strdup("out of memory");
		return NULL;
	}
	api->lib = h;
	const char *missing = NULL;
#define VOV_SYM(field, name) \
	if (missing == NULL && (*(void **)&api->field = dlsym(h, name)) == NULL) missing = name;
	VOV_SYM(core_create, "ov_core_create")
	VOV_SYM(core_read_model, "ov_core_read_model")
	VOV_SYM(core_compile_model, "ov_core_compile_model")
	VOV_SYM(core_get_available_devices, "ov_core_get_available_devices")
	VOV_SYM(available_devices_free, "ov_available_devices_free")
	VOV_SYM(model_inputs_size, "ov_model_inputs_size")
	VOV_SYM(model_outputs_size, "ov_model_outputs_size")
	VOV_SYM(model_const_input_by_index, "ov_model_const_input_by_index")
	VOV_SYM(model_const_output_by_index, "ov_model_const_output_by_index")
	VOV_SYM(model_free, "ov_model_free")
	VOV_SYM(port_get_any_name, "ov_port_get_any_name")
	VOV_SYM(const_port_get_shape, "ov_const_port_get_shape")
	VOV_SYM(port_get_element_type, "ov_port_get_element_type")
	VOV_SYM(output_const_port_free, "ov_output_const_port_free")
	VOV_SYM(shape_free, "ov_shape_free")
	VOV_SYM(compiled_model_create_infer_request, "ov_compiled_model_create_infer_request")
	VOV_SYM(compiled_model_free, "ov_compiled_model_free")
	VOV_SYM(tensor_create_from_host_ptr, "ov_tensor_create_from_host_ptr")
	VOV_SYM(tensor_data, "ov_tensor_data")
	VOV_SYM(tensor_get_byte_size, "ov_tensor_get_byte_size")
	VOV_SYM(tensor_free, "ov_tensor_free")
	VOV_SYM(infer_request_set_input_tensor_by_index, "ov_infer_request_set_input_tensor_by_index")
	VOV_SYM(infer_request_set_output_tensor_by_index, "ov_infer_request_set_output_tensor_by_index")
	VOV_SYM(infer_request_get_output_tensor_by_index, "ov_infer_request_get_output_tensor_by_index")
	VOV_SYM(infer_request_infer, "ov_infer_request_infer")
	VOV_SYM(infer_request_free, "ov_infer_request_free")
	VOV_SYM(get_error_info, "ov_get_error_info")
	VOV_SYM(free_str, "ov_free")
#undef VOV_SYM
	if (missing != NULL) {
		size_t n = strlen(missing) + 32;
		*err = malloc(n);
		if (*err) snprintf(*err, n, "it has no %s", missing);
		free(api);
		dlclose(h);
		return NULL;
	}
	// Optional: OpenVINO 2023.x has only the status name.
	*(void **)&api->get_last_err_msg = dlsym(h, "ov_get_last_err_msg");
	return api;
}

// vov_close undoes a vov_open whose core could not be created.
void vov_close(vov_api *api) {
	dlclose(api->lib);
	free(api);
}

// vov_error describes a failed call's status, with OpenVINO's last message where the
// library keeps one. The result is malloc'd; the caller frees it.
char *vov_error(vov_api *api, ov_status_e status) {
	const char *name = api->get_error_info(status);
	const char *msg = api->get_last_err_msg ? api->get_last_err_msg() : NULL;
	size_t n = (name ? strlen(name) : 0) + (msg ? strlen(msg) : 0) + 64;
	char *out = malloc(n);
	if (out != NULL) {
		if (msg != NULL && msg[0] != 0)
			snprintf(out, n, "%s (status %d): %s", name ? name : "error", status, msg);
		else
			snprintf(out, n, "%s (status %d)", name ? name : "error", status);
	}
	if (msg != NULL) api->free_str(msg);
	return out;
}

ov_status_e vov_core_create(vov_api *api) { return api->core_create(&api->core); }

// vov_devices returns the available devices as one malloc'd string, names separated
// by newlines, or NULL with *status set.
char *vov_devices(vov_api *api, ov_status_e *status) {
	ov_available_devices_t d = {0};
	*status = api->core_get_available_devices(api->core, &d);
	if (*status != VOV_OK) return NULL;
	size_t n = 1;
	for (size_t i = 0; i < d.size; i++) n += strlen(d.devices[i]) + 1;
	char *out = calloc(1, n);
	for (size_t i = 0; out != NULL && i < d.size; i++) {
		if (i > 0) strcat(out, "\n");
		strcat(out, d.devices[i]);
	}
	api->available_devices_free(&d);
	return out;
}

ov_status_e vov_model_sizes(vov_api *api, void *model, size_t *nin, size_t *nout) {
	ov_status_e s = api->model_inputs_size(model, nin);
	return s != VOV_OK ? s : api->model_outputs_size(model, nout);
}

void vov_model_free(vov_api *api, void *model) { api->model_free(model); }

ov_status_e vov_read_model(vov_api *api, const char *xml, const char *bin, void **model) {
	return api->core_read_model(api->core, xml, bin, model);
}

// vov_compile calls the variadic ov_core_compile_model: with no property, or with
// INFERENCE_NUM_THREADS (ov_property_key_inference_num_threads) when threads is set.
// property_args_size counts keys and values, so one property is 2.
ov_status_e vov_compile(vov_api *api, void *model, const char *device, const char *threads, void **compiled) {
	if (threads != NULL)
		return api->core_compile_model(api->core, model, device, 2, compiled, "INFERENCE_NUM_THREADS", threads);
	return api->core_compile_model(api->core, model, device, 0, compiled);
}

// vov_port describes input (output == 0) or output i of model: its name (malloc'd,
// for the caller to free), element type and static shape (rank and up to 8 dims).
ov_status_e vov_port(vov_api *api, void *model, int output, size_t i, char **name,
		ov_element_type_e *type, int64_t *rank, int64_t dims[8], int *step) {
	void *port = NULL;
	*name = NULL;
	*step = 0;
	ov_status_e s = output ? api->model_const_output_by_index(model, i, &port)
	                       : api->model_const_input_by_index(model, i, &port);
	if (s != VOV_OK) return s;
	char *ovname = NULL;
	*step = 1;
	s = api->port_get_any_name(port, &ovname);
	if (s == VOV_OK) {
		*name = strdup(ovname ? ovname : "");
		api->free_str(ovname);
		*step = 2;
		s = api->port_get_element_type(port, type);
	}
	if (s == VOV_OK) {
		ov_shape_t shape = {0};
		*step = 3;
		s = api->const_port_get_shape(port, &shape);
		if (s == VOV_OK) {
			*rank = shape.rank;
			for (int64_t d = 0; d < shape.rank && d < 8; d++) dims[d] = shape.dims[d];
			api->shape_free(&shape);
		}
	}
	api->output_const_port_free(port);
	return s;
}



vov_engine *vov_engine_new(size_t nin, size_t nout) {
	vov_engine *e = calloc(1, sizeof(vov_engine));
	if (e == NULL) return NULL;
	e->nin = nin;
	e->nout = nout;
	size_t n = nin + nout;
	e->tensors = calloc(n ? n : 1, sizeof(void *));
	e->bufs = calloc(n ? n : 1, sizeof(float *));
	e->bytes = calloc(n ? n : 1, sizeof(size_t));
	e->copy_out = calloc(nout ? nout : 1, sizeof(int));
	if (!e->tensors || !e->bufs || !e->bytes || !e->copy_out) {
		free(e->tensors); free(e->bufs); free(e->bytes); free(e->copy_out); free(e);
		return NULL;
	}
	return e;
}

ov_status_e vov_create_request(vov_api *api, vov_engine *e) {
	return api->compiled_model_create_infer_request(e->compiled, &e->request);
}

// vov_bind allocates buffer k (inputs first) with shape dims, wraps it as a host
// tensor and sets it on the request. An output the request will not take is kept and
// copied after each inference instead. On failure e->step says what failed:
// 0 allocate (no OpenVINO status), 1 wrap, 2 set.
ov_status_e vov_bind(vov_api *api, vov_engine *e, size_t k, int64_t rank, int64_t *dims, size_t elements) {
	e->step = 0;
	e->bytes[k] = elements * sizeof(float);
	e->bufs[k] = calloc(elements ? elements : 1, sizeof(float));
	if (e->bufs[k] == NULL) return -10; // NOT_ALLOCATED
	ov_shape_t shape = {rank, dims};
	e->step = 1;
	ov_status_e s = api->tensor_create_from_host_ptr(VOV_F32, shape, e->bufs[k], &e->tensors[k]);
	if (s != VOV_OK) return s;
	e->step = 2;
	if (k < e->nin) return api->infer_request_set_input_tensor_by_index(e->request, k, e->tensors[k]);
	s = api->infer_request_set_output_tensor_by_index(e->request, k - e->nin, e->tensors[k]);
	if (s != VOV_OK) e->copy_out[k - e->nin] = 1;
	return VOV_OK;
}

float *vov_buf(vov_engine *e, size_t k) { return e->bufs[k]; }

// vov_run infers and copies the outputs the request keeps itself into their buffers,
// in one cgo call. On failure e->step says what failed: 0 infer, 1 get output e->which,
// 2 its data, 3 its size, 4 its size is e->got bytes, not the buffer's (no status).
ov_status_e vov_run(vov_api *api, vov_engine *e) {
	e->step = 0;
	ov_status_e s = api->infer_request_infer(e->request);
	if (s != VOV_OK) return s;
	for (size_t i = 0; i < e->nout; i++) {
		if (!e->copy_out[i]) continue;
		void *t = NULL, *data = NULL;
		size_t n = 0;
		e->which = i;
		e->step = 1;
		s = api->infer_request_get_output_tensor_by_index(e->request, i, &t);
		if (s != VOV_OK) return s;
		e->step = 2;
		s = api->tensor_data(t, &data);
		if (s == VOV_OK) {
			e->step = 3;
			s = api->tensor_get_byte_size(t, &n);
		}
		if (s == VOV_OK && (n != e->bytes[e->nin + i] || data == NULL)) {
			e->step = 4;
			e->got = n;
			s = -6; // OUT_OF_BOUNDS
		}
		if (s == VOV_OK) memcpy(e->bufs[e->nin + i], data, n);
		api->tensor_free(t);
		if (s != VOV_OK) return s;
	}
	return VOV_OK;
}

// vov_engine_free frees the request before the tensors and buffers it uses.
void vov_engine_free(vov_api *api, vov_engine *e) {
	if (e->request) api->infer_request_free(e->request);
	for (size_t k = 0; k < e->nin + e->nout; k++) {
		if (e->tensors[k]) api->tensor_free(e->tensors[k]);
		free(e->bufs[k]);
	}
	if (e->compiled) api->compiled_model_free(e->compiled);
	free(e->tensors); free(e->bufs); free(e->bytes); free(e->copy_out); free(e);
}
