package agent

import (
	"os/exec"
	"strings"
	"testing"
)

// The rooms that must build and test anywhere never depend on cgo vision or inference
// code (STYLE.md §1, §7): a change that pulls gocv or a runtime into them fails here.
func TestLeafRoomsStayFreeOfCgo(t *testing.T) {
	forbidden := []string{
		"gocv.io/x/gocv", "github.com/yalue/onnxruntime_go",
		"github.com/vigil-edge/vigil/infer/openvino", "github.com/vigil-edge/vigil/infer/tflite", "github.com/vigil-edge/vigil/infer/ocvdnn",
	}
	for _, pkg := range []string{"../sync/...", "../hal/...", "./rules", "./config", "../infer"} {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range forbidden {
				if strings.HasPrefix(dep, f) {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
}

// sync/deploy is the pure half of model push (manifest, signatures, archives, chunk
// assembly, the bundle store): the agent uses it and its tests run without a broker.
// Only sync/deploy/push, the operator's side, talks MQTT.
func TestDeployStaysPure(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "../sync/deploy").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps ../sync/deploy: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range []string{"github.com/eclipse/paho.mqtt.golang", "gocv.io/x/gocv", "github.com/yalue/onnxruntime_go", "github.com/vigil-edge/vigil/agent"} {
			if strings.HasPrefix(dep, f) {
				t.Errorf("sync/deploy depends on %s", dep)
			}
		}
	}
}
