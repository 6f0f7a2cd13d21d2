package backends

import (
	"fmt"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/infer/detector"
	"github.com/vigil-edge/vigil/infer/ocvdnn"
	"github.com/vigil-edge/vigil/infer/onnxrt"
	"github.com/vigil-edge/vigil/infer/openvino"
	"github.com/vigil-edge/vigil/infer/tflite"
)

// Libraries locate the runtime libraries the backends open; "" means the system's
// search path. (The config's runtimes section, without a dependency on agent/config.)
type Libraries struct {
	ONNXRuntime string // libonnxruntime.so.1
	TFLite      string // libtensorflowlite_c.so
	OpenVINO    string // libopenvino_c.so
}

// New returns a Registry with a backend for each name in infer.BackendNames, in that
// order. Each opens its runtime library only when a model first needs it.
func New(libs Libraries) *infer.Registry {
	names := infer.BackendNames()
	list := make([]infer.Backend, len(names))
	for i, name := range names {
		list[i] = newBackend(name, libs)
	}
	return infer.NewRegistry(list...)
}

func newBackend(name string, libs Libraries) infer.Backend {
	switch name {
	case "onnxruntime":
		return onnxrt.New(libs.ONNXRuntime)
	case "tflite":
		return tflite.New(libs.TFLite)
	case "openvino":
		return openvino.New(libs.OpenVINO)
	case "opencv":
		return ocvdnn.New()
	}
	return missing(name)
}

// missing stands in for a name on infer.BackendNames that newBackend has no case for.
// TestEveryNameHasABackend fails first; should one ship anyway, the program still
// starts (cameras, actuators and outbox run) and a model on that backend says why it
// cannot load.
type missing string

func (m missing) Name() string { return string(m) }

func (m missing) Available() error {
	return fmt.Errorf("backend %q is in infer.BackendNames but infer/backends has no constructor for it", string(m))
}

func (m missing) Load(string, infer.LoadOptions) (infer.Engine, error) { return nil, m.Available() }

// Load loads the bundle in dir on the backend named, or, for "", the one its model.yaml
// prefers, else the registry's first. It returns the backend's name even when loading
// fails, for the error's reader.
func Load(reg *infer.Registry, dir, backend string, opts infer.LoadOptions) (*detector.Detector, string, error) {
	m, err := infer.LoadManifest(dir)
	if err != nil {
		return nil, "", err
	}
	name := backend
	if name == "" {
		name = m.Backend
	}
	if name == "" {
		name = reg.Names()[0]
	}
	b, err := reg.Get(name)
	if err != nil {
		return nil, name, err
	}
	if err := b.Available(); err != nil {
		return nil, name, err
	}
	d, err := detector.Load(b, dir, opts)
	return d, name, err
}
