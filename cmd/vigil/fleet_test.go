package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/vigil-edge/vigil/sync/fleet"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

func TestFleetStatusUsage(t *testing.T) {
	for _, args := range [][]string{
		{"fleet"}, {"fleet", "frob"}, {"fleet", "status"}, {"fleet", "status", "--broker", "tcp://x:1", "extra"},
		{"fleet", "status", "--broker", "tcp://x:1", "--ca-file", "/no/such/ca.pem"},
		{"fleet", "status", "--broker", "tcp://x:1", "--watch", "--interval", "0s"},
	} {
		if code, _, errs := runVigil(args...); code != 2 || errs == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, errs)
		}
	}
	if code, out, _ := runVigil("--help"); code != 0 || !strings.Contains(out, "fleet status") {
		t.Errorf("vigil --help does not list fleet status: %q", out)
	}
}

// startVigil runs this binary as `vigil` with args until the test ends.
func startVigil(t *testing.T, args ...string) (*exec.Cmd, *bufio.Reader, *bytes.Buffer) {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "RUN_VIGIL_MAIN=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, bufio.NewReader(stdout), &stderr
}

// fleetJSON runs `vigil fleet status --json` and decodes it.
func fleetJSON(t *testing.T, args ...string) (int, map[string]fleet.Device) {
	t.Helper()
	code, out, errs := runVigil(append([]string{"fleet", "status", "--json"}, args...)...)
	var doc fleet.JSON
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("fleet status --json: exit %d, %v: %q %q", code, err, out, errs)
	}
	m := map[string]fleet.Device{}
	for _, d := range doc.Devices {
		m[d.Device] = d
	}
	return code, m
}

// A real agent (this binary, `vigil run`) online, seen by `vigil fleet status` with
// its version, group, model and camera; another group's device filtered out; a
// `--watch` running meanwhile prints the agent going offline when it stops, and
// afterwards the snapshot still shows it, offline with its version.
func TestFleetStatusWithARealAgent(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	dir := t.TempDir()
	cfg := filepath.Join(dir, "vigil.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
device: {id: gate-07, group: line-a, state_dir: %q}
http: {listen: "127.0.0.1:0"}
cameras:
  - {name: synthetic, url: "pattern://", detect_fps: 2}
actuators:
  - {name: relay, driver: sim}
mqtt:
  enabled: true
  brokers: [%q]
  telemetry_interval: 100ms
  backoff: {min: 50ms, max: 500ms}
`, filepath.Join(dir, "state"), b.URL)), 0o644)
	agent, agentOut, agentErr := startVigil(t, "run", "--config", cfg)
	if line, _ := agentOut.ReadString('\n'); !strings.Contains(line, "status page on") {
		t.Fatalf("agent did not start: %q\n%s", line, agentErr.String())
	}
	// Another group's device, as a retained status.
	c := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL).SetClientID("other"))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer c.Disconnect(50)
	if tok := c.Publish("vigil/dock-1/status", 1, true, `{"state":"online","device":"dock-1","group":"dock","version":"1.0.0"}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}

	deadline := time.Now().Add(60 * time.Second)
	var devs map[string]fleet.Device
	for {
		_, devs = fleetJSON(t, "--broker", b.URL)
		g := devs["gate-07"]
		if g.State == "online" && len(g.Cameras) == 1 && g.Cameras[0].State == "streaming" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gate-07 never online with its camera streaming: %+v\nagent:\n%s", g, agentErr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	g := devs["gate-07"]
	if g.Version != "dev" || g.Group != "line-a" || len(g.Models) != 1 || g.Models[0].Name != "default" || g.Models[0].Version != "0.1.1" ||
		g.Outbox == nil || g.Started == nil || devs["dock-1"].Group != "dock" {
		t.Errorf("fleet: %+v", devs)
	}
	code, devs := fleetJSON(t, "--broker", b.URL, "--group", "line-a")
	if _, other := devs["dock-1"]; code != 0 || len(devs) != 1 || other {
		t.Errorf("--group line-a: exit %d, %+v", code, devs)
	}
	code, out, _ := runVigil("fleet", "status", "--broker", b.URL)
	if code != 0 || !regexp.MustCompile(`(?m)^gate-07\s+line-a\s+online\s+dev\s+default:0\.1\.1\s+1/1\s+-\s+\d+`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^dock-1\s+dock\s+online\s+1\.0\.0`).MatchString(out) {
		t.Errorf("table: exit %d\n%s", code, out)
	}
	if code, _, errs := runVigil("fleet", "status", "--broker", b.URL, "--group", "nobody"); code != 1 || !strings.Contains(errs, "no device of group nobody") {
		t.Errorf("an empty group: exit %d %q", code, errs)
	}

	// Watching while the agent stops.
	watch, watchOut, watchErr := startVigil(t, "fleet", "status", "--broker", b.URL, "--group", "line-a", "--watch", "--json", "--interval", "50ms")
	// A watch that never prints what is awaited is killed, ending the reads below.
	watchdog := time.AfterFunc(60*time.Second, func() { watch.Process.Kill() })
	defer watchdog.Stop()
	next := func() map[string]fleet.Device {
		line, err := watchOut.ReadString('\n')
		if err != nil {
			t.Fatalf("watch ended: %v\n%s", err, watchErr.String())
		}
		var doc fleet.JSON
		if err := json.Unmarshal([]byte(line), &doc); err != nil {
			t.Fatalf("watch printed %q: %v", line, err)
		}
		m := map[string]fleet.Device{}
		for _, d := range doc.Devices {
			m[d.Device] = d
		}
		return m
	}
	if first := next(); first["gate-07"].State != "online" || len(first) != 1 {
		t.Fatalf("first watch update: %+v", first)
	}
	agent.Process.Signal(syscall.SIGTERM)
	if err := agent.Wait(); err != nil {
		t.Fatalf("agent stop: %v\n%s", err, agentErr.String())
	}
	for {
		// Each read waits for the next update; the watchdog bounds it.
		m := next()
		if g := m["gate-07"]; g.State == "offline" {
			if g.Version != "dev" || g.Group != "line-a" || g.Reason != "stopped" || g.Since == nil {
				t.Errorf("watched offline: %+v", g)
			}
			break
		}
	}
	watch.Process.Signal(os.Interrupt)
	if err := watch.Wait(); err != nil {
		t.Errorf("watch after Ctrl-C: %v\n%s", err, watchErr.String())
	}

	code, devs = fleetJSON(t, "--broker", b.URL, "--group", "line-a")
	if g := devs["gate-07"]; code != 0 || g.State != "offline" || g.Version != "dev" || g.Reason != "stopped" {
		t.Errorf("after the stop: exit %d, %+v", code, g)
	}
}
