//go:build vmtest

// Hardware-in-the-loop test of the whole agent: run by scripts/vmtest inside a QEMU VM
// with vivid (/dev/video0) and the vigil-loop GPIO chip (OUTn wired to INn). Built only
// with -tags vmtest; without those devices it fails.

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/hal/gpio"
)

// readLoop reads a vigil-loop input line once and releases it.
func readLoop(t *testing.T, line string) hal.Level {
	t.Helper()
	in, err := gpio.OpenInput("vigil-loop", line, false, gpio.PullNoChange)
	if err != nil {
		t.Fatalf("the vigil-loop GPIO chip must be loaded (scripts/vmtest does it): %v", err)
	}
	defer in.Close()
	l, err := in.Read()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// `vigil run` with a v4l2 camera (vivid) and a gpio relay: the status page shows the
// camera streaming at its size and the relay at its operating level, which the
// looped-back input (also an input of the agent) reads; after SIGKILL the relay stays
// where it was (nothing made it safe), and `vigil safe` drives it to its safe level.
func TestVMRunV4L2AndGPIO(t *testing.T) {
	if _, err := os.Stat("/dev/video0"); err != nil {
		t.Fatalf("/dev/video0 must be vivid's capture node (scripts/vmtest loads vivid): %v", err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "vigil.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
device: {id: vm, state_dir: %q}
http: {listen: "127.0.0.1:0"}
cameras:
  - {name: bench, url: "v4l2:///dev/video0?width=320&height=180&fps=15", detect_fps: 1}
actuators:
  - {name: relay, driver: gpio, chip: vigil-loop, line: OUT3, safe: low, initial: high}
inputs:
  - {name: feedback, driver: gpio, chip: vigil-loop, line: IN3, debounce: 20ms}
`, filepath.Join(dir, "state"))), 0o644); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "RUN_VIGIL_MAIN=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	first := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		first <- l
	}()
	var base string
	select {
	case l := <-first:
		m := regexp.MustCompile(`http://(\S+)`).FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("first line %q; stderr:\n%s", l, stderr.String())
		}
		base = "http://" + m[1]
	case <-time.After(2 * time.Minute):
		t.Fatalf("vigil did not start within 2 minutes; stderr:\n%s", stderr.String())
	}

	var st struct {
		Cameras []struct {
			Name, State string
			Frames      uint64
		}
		Actuators []hal.State
		Inputs    []hal.InputState
	}
	ok := func() bool {
		return len(st.Cameras) == 1 && st.Cameras[0].State == "streaming" && st.Cameras[0].Frames >= 10 &&
			len(st.Actuators) == 1 && st.Actuators[0].State == "high" &&
			len(st.Inputs) == 1 && st.Inputs[0].State == "high"
	}
	deadline := time.Now().Add(2 * time.Minute)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("status never showed the camera streaming, the relay high and its feedback input high: %+v\nstderr:\n%s", st, stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
		resp, err := http.Get(base + "/api/status")
		if err != nil {
			continue
		}
		st.Cameras, st.Actuators, st.Inputs = nil, nil, nil
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
	}
	if a := st.Actuators[0]; a.Driver != "gpio" || a.Safe != "low" || a.LastError != "" {
		t.Errorf("relay status %+v", a)
	}
	if in := st.Inputs[0]; in.Driver != "gpio" || in.Changes != 1 {
		t.Errorf("feedback input %+v: it must have seen the relay go from safe low to high once", in)
	}

	// SIGKILL: no shutdown code runs, the kernel releases the lines, the relay stays high.
	cmd.Process.Kill()
	cmd.Wait()
	killed = true
	if got := readLoop(t, "IN3"); got != hal.High {
		t.Fatalf("after SIGKILL the relay reads %s; nothing should have moved it from high", got)
	}

	safe := exec.Command(os.Args[0], "safe", "--config", cfg)
	safe.Env = append(os.Environ(), "RUN_VIGIL_MAIN=1")
	out, err := safe.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "relay (gpio): safe (low)") {
		t.Fatalf("vigil safe: %v\n%s", err, out)
	}
	if got := readLoop(t, "IN3"); got != hal.Low {
		t.Fatalf("after vigil safe the relay reads %s, want its safe level low", got)
	}
}
