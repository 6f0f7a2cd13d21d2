package backends

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/vigil-edge/vigil/infer"
)

// A name added to infer.BackendNames needs a case in newBackend, and the backend built
// for it must answer to that name (config and model.yaml use it).
func TestEveryNameHasABackend(t *testing.T) {
	for _, name := range infer.BackendNames() {
		b := newBackend(name, Libraries{})
		if _, ok := b.(missing); ok {
			t.Errorf("%s: no constructor in newBackend", name)
		} else if b.Name() != name {
			t.Errorf("%s: newBackend built %q", name, b.Name())
		}
	}
	if got := New(Libraries{}).Names(); !slices.Equal(got, infer.BackendNames()) {
		t.Errorf("registry %q, want infer.BackendNames %q", got, infer.BackendNames())
	}
}

func TestMissingSaysWhy(t *testing.T) {
	if _, err := newBackend("coreml", Libraries{}).Load("model.mlmodel", infer.LoadOptions{}); err == nil {
		t.Error("a backend with no constructor loaded a model")
	}
}

// Load takes the backend asked for, else the bundle's preference, and names the backend
// it tried when the load fails.
func TestLoad(t *testing.T) {
	bundle := filepath.Join("..", "..", "assets", "models", "yolox-nano")
	reg := New(Libraries{})
	d, name, err := Load(reg, bundle, "", infer.LoadOptions{})
	if err != nil {
		t.Fatalf("the bundled model on its preferred backend: %v", err)
	}
	d.Close()
	if name != "onnxruntime" {
		t.Errorf("backend %q, want the bundle's preference onnxruntime", name)
	}
	if _, name, err := Load(reg, bundle, "nope", infer.LoadOptions{}); err == nil || name != "nope" {
		t.Errorf("an unknown backend: name %q, err %v; want nope and an error", name, err)
	}
	if _, _, err := Load(reg, t.TempDir(), "", infer.LoadOptions{}); err == nil {
		t.Error("a directory without model.yaml loaded")
	}
}
