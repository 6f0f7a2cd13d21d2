// vov.h: the OpenVINO C API as this backend declares it, and the small C layer the
// Go code calls (vov.c). See capi.go.
#ifndef VIGIL_VOV_H
#define VIGIL_VOV_H

#include <stddef.h>
#include <stdint.h>

// The OpenVINO 2.0 C API (openvino/c/*.h, OpenVINO 2023.0 to 2025.x), declared here
// because its headers cannot be had where Vigil is built: only the few types and
// functions this backend calls, with the signatures of the real headers. Handles are
// opaque, so they are void*. ov_status_e is an enum with negative values (an int);
// ov_element_type_e an enum of small non-negative values (32 bits either way).
typedef int ov_status_e;
typedef int ov_element_type_e;
enum { VOV_OK = 0, VOV_F32 = 5 }; // OK and F32 in every release since 2022.1

typedef struct {
	int64_t rank;
	int64_t *dims;
} ov_shape_t;

typedef struct {
	char **devices;
	size_t size;
} ov_available_devices_t;

// vov_api holds the library handle, its functions and one ov_core_t. It lives in C
// memory for the life of the process, like the library (which is never closed).
typedef struct {
	void *lib;
	void *core;

	ov_status_e (*core_create)(void **core);
	ov_status_e (*core_read_model)(const void *core, const char *model_path, const char *bin_path, void **model);
	ov_status_e (*core_compile_model)(const void *core, const void *model, const char *device_name,
		const size_t property_args_size, void **compiled_model, ...);
	ov_status_e (*core_get_available_devices)(const void *core, ov_available_devices_t *devices);
	void (*available_devices_free)(ov_available_devices_t *devices);

	ov_status_e (*model_inputs_size)(const void *model, size_t *size);
	ov_status_e (*model_outputs_size)(const void *model, size_t *size);
	ov_status_e (*model_const_input_by_index)(const void *model, const size_t index, void **port);
	ov_status_e (*model_const_output_by_index)(const void *model, const size_t index, void **port);
	void (*model_free)(void *model);
	ov_status_e (*port_get_any_name)(const void *port, char **name);
	ov_status_e (*const_port_get_shape)(const void *port, ov_shape_t *shape);
	ov_status_e (*port_get_element_type)(const void *port, ov_element_type_e *type);
	void (*output_const_port_free)(void *port);
	ov_status_e (*shape_free)(ov_shape_t *shape);

	ov_status_e (*compiled_model_create_infer_request)(const void *compiled_model, void **request);
	void (*compiled_model_free)(void *compiled_model);

	ov_status_e (*tensor_create_from_host_ptr)(const ov_element_type_e type, const ov_shape_t shape, void *host_ptr, void **tensor);
	ov_status_e (*tensor_data)(const void *tensor, void **data);
	ov_status_e (*tensor_get_byte_size)(const void *tensor, size_t *byte_size);
	void (*tensor_free)(void *tensor);

	ov_status_e (*infer_request_set_input_tensor_by_index)(void *request, const size_t idx, const void *tensor);
	ov_status_e (*infer_request_set_output_tensor_by_index)(void *request, const size_t idx, const void *tensor);
	ov_status_e (*infer_request_get_output_tensor_by_index)(const void *request, const size_t idx, void **tensor);
	ov_status_e (*infer_request_infer)(void *request);
	void (*infer_request_free)(void *request);

	const char *(*get_error_info)(ov_status_e status);
	void (*free_str)(const char *content); // ov_free
	const char *(*get_last_err_msg)(void); // since 2024.0; NULL when absent
} vov_api;

// vov_engine is one compiled model with its request and the engine-owned buffers,
// all in C memory so neither OpenVINO nor the engine ever holds a Go pointer.
typedef struct {
	void *compiled;
	void *request;
	size_t nin, nout;
	void **tensors;      // nin + nout host-pointer tensors, inputs first
	float **bufs;        // their buffers
	size_t *bytes;       // their sizes
	int *copy_out;       // per output: 1 when the device would not take the buffer, so Run copies
	// What the last failed vov_bind or vov_run was doing, kept here so that the calls
	// pass no Go pointers (and Run allocates nothing).
	int step;
	size_t which, got;
} vov_engine;

vov_api *vov_open(const char *lib, char **err);
void vov_close(vov_api *api);
char *vov_error(vov_api *api, ov_status_e status);
ov_status_e vov_core_create(vov_api *api);
char *vov_devices(vov_api *api, ov_status_e *status);
ov_status_e vov_model_sizes(vov_api *api, void *model, size_t *nin, size_t *nout);
void vov_model_free(vov_api *api, void *model);
ov_status_e vov_read_model(vov_api *api, const char *xml, const char *bin, void **model);
ov_status_e vov_compile(vov_api *api, void *model, const char *device, const char *threads, void **compiled);
ov_status_e vov_port(vov_api *api, void *model, int output, size_t i, char **name, ov_element_type_e *type, int64_t *rank, int64_t dims[8], int *step);
vov_engine *vov_engine_new(size_t nin, size_t nout);
ov_status_e vov_create_request(vov_api *api, vov_engine *e);
ov_status_e vov_bind(vov_api *api, vov_engine *e, size_t k, int64_t rank, int64_t *dims, size_t elements);
float *vov_buf(vov_engine *e, size_t k);
ov_status_e vov_run(vov_api *api, vov_engine *e);
void vov_engine_free(vov_api *api, vov_engine *e);

#endif
