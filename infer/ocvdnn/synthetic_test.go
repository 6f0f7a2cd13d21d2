package ocvdnn

import (
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gocv.io/x/gocv"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/internal/onnxbuild"
)

// Small ONNX models written field by field (field numbers from onnx/onnx.proto).

type pb = onnxbuild.Message

var floatValue = onnxbuild.FloatTensor

// onnxFile is a model with one input x [1 4] and the given nodes and outputs.
func onnxFile(t *testing.T, nodes []pb, outputs ...pb) string {
	graph := pb(nil)
	for _, n := range nodes {
		graph = graph.Bytes(1, n)
	}
	graph = graph.String(2, "test").Bytes(11, floatValue("x", 1, 4))
	for _, o := range outputs {
		graph = graph.Bytes(12, o)
	}
	model := pb(nil).Varint(1, 7).String(2, "vigil-test").
		Bytes(7, graph).
		Bytes(8, pb(nil).String(1, "").Varint(2, 12))
	path := filepath.Join(t.TempDir(), "model.onnx")
	if err := os.WriteFile(path, model, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func node(op, in, out string) pb {
	return pb(nil).String(1, in).String(2, out).String(3, out).String(4, op)
}

// A real model with an operator OpenCV 4.6 lacks is an error naming the operator,
// found before OpenCV sees the file.
func TestLoadRejectsUnknownOperator(t *testing.T) {
	path := onnxFile(t, []pb{node("Relu", "x", "r"), node("Einsum", "r", "y")}, floatValue("y", 1, 4))
	_, err := New().Load(path, infer.LoadOptions{})
	if err == nil || !strings.Contains(err.Error(), "does not support: Einsum (1 nodes)") {
		t.Fatalf("got %v", err)
	}
}

// badReshape is a model of supported operators that passes Check, but whose Reshape
// cannot work ([1 4] into [3 3]): OpenCV throws while importing it.
func badReshape(t *testing.T) string {
	packed := protowire.AppendVarint(protowire.AppendVarint(nil, 3), 3)
	// TensorProto: dims [2], data_type INT64, int64_data [3 3], name.
	shape := pb(nil).Varint(1, 2).Varint(2, 7).Bytes(7, packed).String(8, "shape")
	reshape := pb(nil).String(1, "x").String(1, "shape").String(2, "y").String(3, "y").String(4, "Reshape")
	graph := pb(nil).Bytes(1, reshape).String(2, "g").Bytes(5, shape).
		Bytes(11, floatValue("x", 1, 4)).Bytes(12, floatValue("y", 3, 3))
	model := pb(nil).Varint(1, 7).Bytes(7, graph).Bytes(8, pb(nil).String(1, "").Varint(2, 12))
	path := filepath.Join(t.TempDir(), "reshape.onnx")
	if err := os.WriteFile(path, model, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// OpenCV's own exceptions come back as errors. The same file handed to gocv (which does
// not catch them) kills the process, as a child shows.
func TestOpenCVExceptionIsAnError(t *testing.T) {
	if path := os.Getenv("OCVDNN_UNCHECKED_MODEL"); path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		net, _ := gocv.ReadNetFromONNXBytes(data)
		t.Logf("gocv survived the model (empty network: %v)", net.Empty())
		return
	}
	path := badReshape(t)
	_, err := New().Load(path, infer.LoadOptions{})
	if err == nil || !strings.Contains(err.Error(), "opencv: load model "+path) ||
		!strings.Contains(err.Error(), "Node [Reshape@ai.onnx]") || !strings.Contains(err.Error(), "Assertion failed") {
		t.Fatalf("got %v", err)
	}

	cmd := exec.Command(os.Args[0], "-test.run", "^TestOpenCVExceptionIsAnError$", "-test.v")
	cmd.Env = append(os.Environ(), "OCVDNN_UNCHECKED_MODEL="+path)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "SIGABRT") || !strings.Contains(string(out), "cv::Exception") {
		t.Errorf("gocv did not abort on the model in a child, so this test no longer shows the shim is needed: %v\n%s", err, out)
	}
}

// An output whose computed size differs from the declared one is a Run error.
func TestRunShapeMismatch(t *testing.T) {
	path := onnxFile(t, []pb{node("Relu", "x", "y")}, floatValue("y", 1, 5))
	e, err := New().Load(path, infer.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Run(); err == nil || !strings.Contains(err.Error(), "output y float32 [1 5]: OpenCV computed shape [1 4] (4 elements), the model declares 5") {
		t.Fatalf("got %v", err)
	}
}

// Two outputs are computed by one forward, each into its own buffer.
func TestTwoOutputs(t *testing.T) {
	path := onnxFile(t, []pb{node("Relu", "x", "relu"), node("Sigmoid", "x", "sigmoid")},
		floatValue("relu", 1, 4), floatValue("sigmoid", 1, 4))
	e, err := New().Load(path, infer.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	copy(e.Input(0), []float32{-2, -0.5, 0, 3})
	if err := e.Run(); err != nil {
		t.Fatal(err)
	}
	relu, sig := e.Output(0), e.Output(1)
	for i, x := range []float32{-2, -0.5, 0, 3} {
		wantSig := float32(1 / (1 + math.Exp(-float64(x))))
		if relu[i] != max(x, 0) || math.Abs(float64(sig[i]-wantSig)) > 1e-6 {
			t.Errorf("x=%v: relu %v, sigmoid %v (want %v)", x, relu[i], sig[i], wantSig)
		}
	}
}
