package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var (
	bundleDir   = filepath.Join("..", "..", "assets", "models", "yolox-nano")
	tfliteModel = filepath.Join("..", "..", "infer", "testdata", "models", "yolox_nano_dynamic_range_quantize.tflite")
)

func runVigil(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func wantLines(t *testing.T, text string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("output lacks %q:\n%s", w, text)
		}
	}
}

func TestModelInspectBundle(t *testing.T) {
	code, out, errs := runVigil("model", "inspect", bundleDir)
	if code != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	wantLines(t, out,
		"name        yolox-nano 0.1.1 (task detect, backend onnxruntime)",
		"input       416x416 NCHW BGR, letterbox top-left, pad 114",
		"labels      80 (person, bicycle, car, motorbike, aeroplane, ...)",
		"format    ONNX, IR version 7", "opsets    ai.onnx 11", "producer  pytorch 1.10",
		"images  float32  [1 3 416 416]", "output  float32  [1 3549 85]",
		"operators (10 types, 369 nodes)", "Conv       ai.onnx  113",
		"check  OK: model.yaml fits the model")
}

func TestModelInspectTFLite(t *testing.T) {
	code, out, errs := runVigil("model", "inspect", tfliteModel)
	if code != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	wantLines(t, out, "format       TFLite, schema version 3, 1 subgraph(s)",
		"serving_default_images:0  float32  [1 3 416 416]", "PartitionedCall:0  float32  [1 3549 85]",
		"operators (12 types, 615 nodes)", "CONV_2D                  5        83")
	if strings.Contains(out, "check") {
		t.Errorf("a lone model file has nothing to check against:\n%s", out)
	}
}

func TestModelInspectBrokenBundle(t *testing.T) {
	yaml, err := os.ReadFile(filepath.Join(bundleDir, "model.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	model, err := filepath.Abs(filepath.Join(bundleDir, "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "model.yaml"), []byte(strings.Replace(string(yaml), "height: 416", "height: 320", 1)), 0o644)
	os.Symlink(model, filepath.Join(dir, "model.onnx"))
	code, out, errs := runVigil("model", "inspect", dir)
	if code != 1 || !strings.Contains(errs, "model.yaml: input.height: 320, but model input images float32 [1 3 416 416] has height 416") {
		t.Errorf("exit %d, stderr %q", code, errs)
	}
	// What could be read is still shown.
	wantLines(t, out, "input       416x320 NCHW", "images  float32  [1 3 416 416]", "check  FAILED")

	missing := t.TempDir()
	os.WriteFile(filepath.Join(missing, "model.yaml"), yaml, 0o644)
	code, out, errs = runVigil("model", "inspect", missing)
	if code != 1 || !strings.Contains(errs, "model.yaml: file: read model: open ") || !strings.Contains(out, "name        yolox-nano") {
		t.Errorf("missing model file: exit %d, stdout %q, stderr %q", code, out, errs)
	}

	if code, _, errs := runVigil("model", "inspect", "no/such/model.onnx"); code != 1 || !strings.Contains(errs, "no/such/model.onnx") {
		t.Errorf("missing file: exit %d, stderr %q", code, errs)
	}
	if code, _, errs := runVigil("model", "inspect", "inspect.go"); code != 1 || !strings.Contains(errs, "not an ONNX model") {
		t.Errorf("not a model: exit %d, stderr %q", code, errs)
	}
}

func TestModelInspectJSON(t *testing.T) {
	var rep struct {
		Path   string
		Bundle struct {
			Name  string
			Input struct{ Width, Height int }
		}
		Model struct {
			Format    string
			IRVersion int64 `json:"ir_version"`
			Inputs    []struct {
				Name  string
				Type  string
				Shape []int64
			}
			Operators []struct {
				Type  string
				Count int
			}
		}
		OK    bool
		Error string
	}
	// --json after the path works as well as before it.
	code, out, errs := runVigil("model", "inspect", bundleDir, "--json")
	if code != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v:\n%s", err, out)
	}
	in := rep.Model.Inputs
	if !rep.OK || rep.Error != "" || rep.Bundle.Name != "yolox-nano" || rep.Bundle.Input.Width != 416 ||
		rep.Model.Format != "onnx" || rep.Model.IRVersion != 7 || len(in) != 1 || in[0].Name != "images" ||
		in[0].Type != "float32" || len(in[0].Shape) != 4 || in[0].Shape[3] != 416 || rep.Model.Operators[0].Type != "Conv" {
		t.Errorf("report %+v", rep)
	}

	code, out, _ = runVigil("model", "inspect", "--json", "no/such/file.tflite")
	rep.OK = true
	if err := json.Unmarshal([]byte(out), &rep); code != 1 || err != nil || rep.OK || !strings.Contains(rep.Error, "no/such/file.tflite") {
		t.Errorf("missing file: exit %d, %v, %+v", code, err, rep)
	}
}

func TestModelInspectUsage(t *testing.T) {
	for _, args := range [][]string{
		{"model"}, {"model", "frob"}, {"model", "inspect"}, {"model", "inspect", "a", "b"}, {"model", "inspect", "--yaml", bundleDir},
	} {
		if code, _, errs := runVigil(args...); code != 2 || !strings.Contains(errs, "Usage: vigil model inspect") {
			t.Errorf("%v: exit %d, stderr %q", args, code, errs)
		}
	}
	if code, out, _ := runVigil("model", "--help"); code != 0 || !strings.Contains(out, "Usage: vigil model inspect") {
		t.Errorf("model --help: exit %d", code)
	}
	if code, _, _ := runVigil("model", "inspect", "-h"); code != 0 {
		t.Errorf("model inspect -h: exit %d", code)
	}
	if _, out, _ := runVigil("--help"); !strings.Contains(out, "model inspect") {
		t.Errorf("usage does not list model inspect:\n%s", out)
	}
}
