package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
)

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "vigil ") {
		t.Fatalf("version: %d %q %q", code, out.String(), errb.String())
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"run", "--help"}, {"check-config", "--help"}} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 0 || !strings.Contains(out.String()+errb.String(), "Usage") {
			t.Errorf("%v: exit %d, output %q", args, code, out.String()+errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %d %q", code, errb.String())
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("cameras:\n  - {name: door, url: \"pattern://\"}\n"), 0o644)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("cameras:\n  - {name: door, url: \"pattern://\", detect_fps: -1}\n  - {name: door, url: \"pattern://\"}\n"), 0o644)

	var out, errb bytes.Buffer
	if code := run([]string{"check-config", good}, &out, &errb); code != 0 || !strings.Contains(out.String(), "OK (1 cameras") {
		t.Errorf("good config: %d %q %q", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	code := run([]string{"check-config", "--config", bad}, &out, &errb)
	msg := errb.String()
	if code != 2 || !strings.Contains(msg, "2 problem(s)") ||
		!strings.Contains(msg, "cameras[0].detect_fps: -1 must be greater than 0") ||
		!strings.Contains(msg, `cameras[1].name: "door" is already the name of cameras[0]`) {
		t.Errorf("bad config: exit %d\n%s", code, msg)
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("htp: {listen: x}\n"), 0o644)
	var out, errb bytes.Buffer
	if code := run([]string{"run", "--config", bad}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "htp: unknown key") {
		t.Errorf("run with a bad config: %d %q", code, errb.String())
	}
}

// TestMain lets a test run this binary as the vigil command (RUN_VIGIL_MAIN=1), so the
// lifecycle test drives a real process with real signals.
func TestMain(m *testing.M) {
	if os.Getenv("RUN_VIGIL_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// SIGTERM stops the daemon cleanly: exit 0, actuators driven safe, outbox closed.
func TestSignalShutdown(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "vigil.yaml")
	os.WriteFile(cfg, []byte(`
device: {state_dir: `+filepath.Join(dir, "state")+`}
http: {listen: "127.0.0.1:0"}
cameras:
  - {name: synthetic, url: "pattern://"}
actuators:
  - {name: relay, driver: sim, safe: high}
`), 0o644)
	cmd := exec.Command(os.Args[0], "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "RUN_VIGIL_MAIN=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		started <- line
	}()
	select {
	case line := <-started:
		if !strings.Contains(line, "status page on http://127.0.0.1:") {
			t.Fatalf("first line %q; stderr:\n%s", line, stderr.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("vigil did not start within 30s; stderr:\n%s", stderr.String())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v; stderr:\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("vigil did not exit within 10s of SIGTERM; stderr:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "stopped; actuators safe, outbox closed") {
		t.Errorf("no clean-shutdown line in the log:\n%s", stderr.String())
	}
}

func TestSafe(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "vigil.yaml")
	os.WriteFile(cfg, []byte(`
cameras: [{name: door, url: "pattern://"}]
actuators:
  - {name: weld-pause, driver: sim, safe: high, initial: low}
  - {name: lamp, driver: sim}
`), 0o644)
	var out, errb bytes.Buffer
	code := run([]string{"safe", "--config", cfg}, &out, &errb)
	if code != 0 || !strings.Contains(out.String(), "weld-pause (sim): safe (high)") || !strings.Contains(out.String(), "lamp (sim): safe (low)") {
		t.Errorf("vigil safe: %d %q %q", code, out.String(), errb.String())
	}
}

// On this machine there is no GPIO chip: `vigil safe` says which actuator it could not
// drive and why, still drives the others, and exits 1 so systemd logs the failure.
func TestSafeReportsAGPIOLineItCannotDrive(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "vigil.yaml")
	os.WriteFile(cfg, []byte(`
cameras: [{name: door, url: "pattern://"}]
actuators:
  - {name: weld-pause, driver: gpio, chip: gpiochip0, line: GPIO17, safe: low}
  - {name: lamp, driver: sim}
`), 0o644)
	var out, errb bytes.Buffer
	code := run([]string{"safe", "--config", cfg}, &out, &errb)
	if code != 1 || !strings.Contains(out.String(), "weld-pause (gpio): FAILED: ") || !strings.Contains(out.String(), "lamp (sim): safe (low)") ||
		!strings.Contains(errb.String(), "actuator weld-pause") {
		t.Errorf("vigil safe: %d\n%s\n%s", code, out.String(), errb.String())
	}
}

// SIGHUP reloads the config file: a change is applied without a restart, and the
// process keeps running.
func TestSIGHUPReloads(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "vigil.yaml")
	config := `
device: {state_dir: ` + filepath.Join(dir, "state") + `}
http: {listen: "127.0.0.1:0"}
cameras:
  - {name: synthetic, url: "pattern://"}
`
	os.WriteFile(cfg, []byte(config), 0o644)
	cmd := exec.Command(os.Args[0], "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "RUN_VIGIL_MAIN=1")
	var stderr syncBuffer
	cmd.Stderr = &stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if !strings.Contains(line, "status page on http://127.0.0.1:") {
		t.Fatalf("first line %q; stderr:\n%s", line, stderr.String())
	}
	os.WriteFile(cfg, []byte(config+"  - {name: second, url: \"pattern://\"}\n"), 0o644)
	cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stderr.String(), "camera second added") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload after SIGHUP; stderr:\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if cmd.ProcessState != nil {
		t.Fatal("vigil exited on SIGHUP")
	}
}

// syncBuffer is a bytes.Buffer a process writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Under systemd ($JOURNAL_STREAM set) log lines carry no timestamp: the journal adds it.
func TestJournaldLogsHaveNoTimestamp(t *testing.T) {
	var buf bytes.Buffer
	t.Setenv("JOURNAL_STREAM", "8:12345")
	newLogger(config.Log{Level: "info", Format: "text"}, &buf).Info("hello")
	if strings.Contains(buf.String(), "time=") || !strings.Contains(buf.String(), "msg=hello") {
		t.Errorf("journald line %q", buf.String())
	}
	buf.Reset()
	t.Setenv("JOURNAL_STREAM", "")
	newLogger(config.Log{Level: "info", Format: "text"}, &buf).Info("hello")
	if !strings.Contains(buf.String(), "time=") {
		t.Errorf("terminal line %q", buf.String())
	}
}
