package openvino

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vigil-edge/vigil/infer"
)

// OpenVINO cannot be installed where these tests run (PLATFORM.md section 4), so the
// runtime-missing path is tested against the machine as it is, and everything else
// against testdata/fake_openvino.c: a libopenvino_c.so built here with the C API's
// signatures and opened through dlopen like the real one. This verifies the binding
// against the C API as declared, not against Intel's runtime.

func TestMissingRuntime(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no", "libopenvino_c.so")
	b := New(missing)
	for what, err := range map[string]error{
		"Available": b.Available(),
		"Load":      loadErr(b, "model.xml"),
	} {
		for _, want := range []string{missing, "libopenvino_c.so", "apt install openvino", "runtimes.openvino"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: error %v, want it to name %q", what, err, want)
			}
		}
	}
	if b.Library() != "" {
		t.Errorf("Library() = %q without a library", b.Library())
	}

	// The defaults: this machine has no OpenVINO, so each is tried and named.
	def := New("")
	err := def.Available()
	if err == nil {
		t.Skipf("OpenVINO is installed here (%s); the missing-default case cannot be tested", def.Library())
	}
	for _, lib := range DefaultLibraries {
		if !strings.Contains(err.Error(), lib) {
			t.Errorf("error %v does not name %s", err, lib)
		}
	}
}

func loadErr(b *Backend, path string) error {
	_, err := b.Load(path, infer.LoadOptions{})
	return err
}

// fake builds testdata/fake_openvino.c as libopenvino_c.so in a temporary directory
// and points FAKE_OV_LOG at a log file there. It returns the library and the log.
func fake(t *testing.T, defines ...string) (lib, log string) {
	t.Helper()
	cc, err := exec.LookPath("cc")
	if err != nil {
		t.Skip("SKIPPED LOUDLY: no C compiler (cc) to build the fake libopenvino_c.so; the OpenVINO binding is untested beyond its missing-runtime path")
	}
	dir := t.TempDir()
	lib = filepath.Join(dir, "libopenvino_c.so")
	args := append([]string{"-shared", "-fPIC", "-Wall", "-Werror", "-o", lib}, defines...)
	if out, err := exec.Command(cc, append(args, filepath.Join("testdata", "fake_openvino.c"))...).CombinedOutput(); err != nil {
		t.Fatalf("build the fake library: %v\n%s", err, out)
	}
	log = filepath.Join(dir, "calls.log")
	t.Setenv("FAKE_OV_LOG", log)
	return lib, log
}

// model writes a fake model file (and, for .xml, its .bin) and returns its path.
func model(t *testing.T, name, content string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if filepath.Ext(name) == ".xml" {
		if err := os.WriteFile(strings.TrimSuffix(path, ".xml")+".bin", []byte("weights"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// calls reads the fake's log and checks it: no call on a dead object, and every object
// the fake handed out freed except the core, which lives as long as the Backend.
func calls(t *testing.T, log string) string {
	t.Helper()
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) > 0 && f[0] == "BAD":
			t.Errorf("fake: %s", sc.Text())
		case len(f) == 3 && f[0] == "alloc":
			live[f[2]] = f[1]
		case len(f) == 3 && f[0] == "free":
			delete(live, f[2])
		}
	}
	for p, kind := range live {
		if kind != "core" {
			t.Errorf("fake: %s %s was never freed", kind, p)
		}
	}
	return string(data)
}

// fill puts value c*16+i at element i of channel c, so the fake's sums are known.
func fill(in []float32, scale float32) (sum0, sum2 float32) {
	for i := range in {
		in[i] = scale * float32(i)
	}
	for i := range 16 {
		sum0 += in[i]
		sum2 += in[32+i]
	}
	return sum0, sum2
}

func TestLoadAndRun(t *testing.T) {
	lib, log := fake(t)
	b := New(lib)
	if err := b.Available(); err != nil {
		t.Fatal(err)
	}
	if b.Library() != lib {
		t.Errorf("Library() = %q", b.Library())
	}
	devices, err := b.Devices()
	if err != nil || !slices.Equal(devices, []string{"CPU", "GPU", "NPU"}) {
		t.Fatalf("Devices() = %v, %v", devices, err)
	}
	for _, name := range []string{"model.xml", "model.onnx"} {
		t.Run(name, func(t *testing.T) {
			e, err := b.Load(model(t, name, "FAKE-OV-MODEL\n"), infer.LoadOptions{Threads: 3})
			if err != nil {
				t.Fatal(err)
			}
			in, out := e.Inputs(), e.Outputs()
			if len(in) != 1 || in[0].String() != "images float32 [1 3 4 4]" || len(out) != 1 || out[0].String() != "scores float32 [1 2]" {
				t.Fatalf("tensors %v -> %v", in, out)
			}
			if len(e.Input(0)) != 48 || len(e.Output(0)) != 2 {
				t.Fatalf("buffers of %d and %d elements", len(e.Input(0)), len(e.Output(0)))
			}
			for _, scale := range []float32{1, -0.5} { // a second run must not see the first's results
				s0, s2 := fill(e.Input(0), scale)
				if err := e.Run(); err != nil {
					t.Fatal(err)
				}
				if got := e.Output(0); got[0] != s0 || got[1] != s2 {
					t.Fatalf("scale %v: output %v, want [%v %v]", scale, got, s0, s2)
				}
			}
			var runErr error
			if allocs := testing.AllocsPerRun(20, func() { runErr = e.Run() }); allocs != 0 || runErr != nil {
				t.Errorf("Run allocates %v times (err %v)", allocs, runErr)
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if err := e.Close(); err == nil || !strings.Contains(err.Error(), "already closed") {
				t.Errorf("second Close: %v", err)
			}
			if err := e.Run(); err == nil || !strings.Contains(err.Error(), "closed") {
				t.Errorf("Run after Close: %v", err)
			}
		})
	}
	got := calls(t, log)
	// Threads reach the CPU as INFERENCE_NUM_THREADS; the outputs are bound host
	// tensors, so inference writes straight into the engine's buffers.
	for _, want := range []string{"compile CPU INFERENCE_NUM_THREADS=3", "infer CPU into-host-output"} {
		if !strings.Contains(got, want) {
			t.Errorf("calls lack %q:\n%s", want, got)
		}
	}
}

func TestDevices(t *testing.T) {
	lib, log := fake(t)
	b := New(lib)
	path := model(t, "model.xml", "FAKE-OV-MODEL\n")

	// The fake GPU will not take host output tensors: the engine copies outputs out.
	// Threads are for the CPU only; the GPU plugin would refuse the property.
	for _, device := range []string{"GPU", "gpu", "GPU.0", "AUTO"} {
		e, err := b.Load(path, infer.LoadOptions{Device: device, Threads: 2})
		if err != nil {
			t.Fatalf("device %s: %v", device, err)
		}
		s0, s2 := fill(e.Input(0), 2)
		if err := e.Run(); err != nil {
			t.Fatalf("device %s: %v", device, err)
		}
		if got := e.Output(0); got[0] != s0 || got[1] != s2 {
			t.Errorf("device %s: output %v, want [%v %v]", device, got, s0, s2)
		}
		var runErr error
		if allocs := testing.AllocsPerRun(20, func() { runErr = e.Run() }); allocs != 0 || runErr != nil {
			t.Errorf("device %s: Run allocates %v times (err %v)", device, allocs, runErr)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}

	// NPU is listed, but compiling for it fails: OpenVINO's own message comes through.
	_, err := b.Load(path, infer.LoadOptions{Device: "NPU"})
	for _, want := range []string{"compile model", path, "NPU", "GENERAL_ERROR", "fake NPU plugin: no NPU driver is loaded"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NPU: error %v, want it to contain %q", err, want)
		}
	}
	// A device OpenVINO does not report is refused with the list of those it does.
	_, err = b.Load(path, infer.LoadOptions{Device: "FPGA"})
	for _, want := range []string{`device "FPGA" is not available`, "CPU, GPU, NPU", lib} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("FPGA: error %v, want it to contain %q", err, want)
		}
	}

	got := calls(t, log)
	for _, want := range []string{"compile GPU\n", "infer GPU into-own-output", "compile GPU.0\n", "compile AUTO\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("calls lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "compile GPU INFERENCE_NUM_THREADS") {
		t.Errorf("threads were passed to the GPU:\n%s", got)
	}
}

func TestModelErrors(t *testing.T) {
	lib, log := fake(t)
	b := New(lib)
	xmlOnly := filepath.Join(t.TempDir(), "lonely.xml")
	if err := os.WriteFile(xmlOnly, []byte("FAKE-OV-MODEL\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		path string
		want []string
	}{
		"missing":    {filepath.Join(t.TempDir(), "none.xml"), []string{"none.xml", "no such file"}},
		"extension":  {model(t, "model.pb", "FAKE-OV-MODEL\n"), []string{"model.pb", ".xml", ".onnx"}},
		"no weights": {xmlOnly, []string{"lonely.xml", "lonely.bin", "weights"}},
		"garbage":    {model(t, "model.onnx", "not a model"), []string{"read model", "model.onnx", "NETWORK_NOT_READ", "not a model this fake knows"}},
		"float16":    {model(t, "model.xml", "FAKE-OV-MODEL input=f16\n"), []string{`input "images"`, "element type f16", "float32 only"}},
		"dynamic":    {model(t, "model.xml", "FAKE-OV-MODEL dynamic\n"), []string{`input "images"`, "static shapes", "dynamic shape"}},
	} {
		_, err := b.Load(c.path, infer.LoadOptions{})
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %v, want it to contain %q", name, err, w)
			}
		}
	}
	calls(t, log) // nothing a failed load made is left behind
}

// OpenVINO 2023.x has no ov_get_last_err_msg: errors then carry the status name only.
func TestWithoutLastErrorMessage(t *testing.T) {
	lib, log := fake(t, "-DFAKE_NO_LAST_ERR_MSG")
	b := New(lib)
	_, err := b.Load(model(t, "model.xml", "FAKE-OV-MODEL\n"), infer.LoadOptions{Device: "NPU"})
	if err == nil || !strings.Contains(err.Error(), "GENERAL_ERROR (status -1)") || strings.Contains(err.Error(), "fake NPU plugin") {
		t.Errorf("error %v", err)
	}
	calls(t, log)
}

// A library without a function the backend needs is refused by name, not crashed on.
func TestMissingFunction(t *testing.T) {
	lib, _ := fake(t, "-DFAKE_NO_INFER")
	err := New(lib).Available()
	for _, want := range []string{lib, "ov_infer_request_infer", "libopenvino_c.so", "runtimes.openvino"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want it to contain %q", err, want)
		}
	}
}
