// A C interface to the few OpenCV DNN calls the opencv backend makes, each inside a
// C++ try/catch: OpenCV reports bad models with exceptions, and an exception that
// reaches cgo aborts the process (gocv does not catch them).
#ifndef VIGIL_OCVDNN_SHIM_H
#define VIGIL_OCVDNN_SHIM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ocvdnn_net ocvdnn_net;

// Each call returns NULL on success, or an error message to release with free().

// ocvdnn_read_onnx builds a network from ONNX bytes, set to OpenCV's own backend on
// the CPU target.
char* ocvdnn_read_onnx(const char* data, size_t len, ocvdnn_net** net);
// ocvdnn_output_names lists the network's output layers, '\n'-separated, in *names
// (release with free()).
char* ocvdnn_output_names(ocvdnn_net* net, char** names);
// ocvdnn_set_input sets input name to the float32 tensor at data (OpenCV copies it).
char* ocvdnn_set_input(ocvdnn_net* net, const char* name, float* data, const int* dims, int ndims);
// ocvdnn_forward runs the network up to the n named outputs and keeps the results.
char* ocvdnn_forward(ocvdnn_net* net, const char** names, int n);
// ocvdnn_copy_output copies result i of the last forward into dst, which holds len
// floats; it is an error if the result has another size.
char* ocvdnn_copy_output(ocvdnn_net* net, int i, float* dst, size_t len);
void ocvdnn_free(ocvdnn_net* net);

#ifdef __cplusplus
}
#endif

#endif
