// A stand-in for Coral's libedgetpu.so.1, for TestEdgeTPUDelegate: no Edge TPU can be
// had on a test machine. It implements the four functions of edgetpu_c.h the backend
// uses. FAKE_EDGETPU_DEVICES is how many devices it lists; FAKE_EDGETPU_LOG is a file
// each call appends a line to. Its delegate claims no nodes, so TFLite runs the whole
// model on the CPU, as it does with a real Edge TPU delegate for a model that was not
// compiled for the Edge TPU.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

struct edgetpu_device {
  int type;  // enum edgetpu_device_type
  const char* path;
};
struct edgetpu_option {
  const char* name;
  const char* value;
};

// TfLiteDelegate as in tensorflow/lite/c/common.h (TFLite 2.2): data_, Prepare, three
// buffer-handle callbacks, flags. Later versions only append fields.
typedef struct {
  void* data_;
  int (*Prepare)(void* context, void* delegate);
  void* CopyFromBufferHandle;
  void* CopyToBufferHandle;
  void* FreeBufferHandle;
  int64_t flags;
  void* reserved[8];
} fake_delegate;

static void logf_(const char* what, const char* arg) {
  const char* path = getenv("FAKE_EDGETPU_LOG");
  if (path == NULL) return;
  FILE* f = fopen(path, "a");
  if (f == NULL) return;
  fprintf(f, "%s %s\n", what, arg ? arg : "");
  fclose(f);
}

static int prepare(void* context, void* delegate) { return 0; /* kTfLiteOk, no nodes claimed */ }

struct edgetpu_device* edgetpu_list_devices(size_t* num_devices) {
  const char* n = getenv("FAKE_EDGETPU_DEVICES");
  *num_devices = n ? (size_t)atoi(n) : 0;
  logf_("list", n);
  if (*num_devices == 0) return NULL;
  struct edgetpu_device* d = calloc(*num_devices, sizeof(*d));
  for (size_t i = 0; i < *num_devices; i++) {
    d[i].type = 1;  // EDGETPU_APEX_USB
    d[i].path = "/sys/bus/usb/devices/fake";
  }
  return d;
}

void edgetpu_free_devices(struct edgetpu_device* dev) { free(dev); }

void* edgetpu_create_delegate(int type, const char* name, const struct edgetpu_option* options, size_t num_options) {
  logf_("create", name);
  fake_delegate* d = calloc(1, sizeof(*d));
  d->Prepare = prepare;
  return d;
}

void edgetpu_free_delegate(void* delegate) {
  logf_("free", "");
  free(delegate);
}
