package backends

import (
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
