package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// startAgentProcess runs `vigil run` as a real process (this test binary with
// RUN_VIGIL_MAIN=1) for device id of group, trusting key, on the broker, and stops it
// with SIGTERM when the test ends.
func startAgentProcess(t *testing.T, broker, id, group, key string) {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "vigil.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
device: {id: %s, group: %s, state_dir: %q}
log: {level: warn}
http: {listen: "127.0.0.1:0"}
cameras:
  - {name: synthetic, url: "pattern://", detect_fps: 1}
actuators:
  - {name: relay, driver: sim}
mqtt:
  enabled: true
  brokers: [%q]
  backoff: {min: 50ms, max: 500ms}
trust: {keys: [%q]}
deploy: {watch: 0s}
`, id, group, filepath.Join(dir, "state"), broker, key)), 0o644)
	cmd := exec.Command(os.Args[0], "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "RUN_VIGIL_MAIN=1")
	stdout, _ := cmd.StdoutPipe()
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if !strings.Contains(l, "status page on http://127.0.0.1:") {
			t.Fatalf("%s: first line %q; stderr:\n%s", id, l, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not start within 60s; stderr:\n%s", id, stderr.String())
	}
}

// waitOnline waits until every device's retained status says it is online in group.
func waitOnline(t *testing.T, b *brokertest.Broker, group string, devices ...string) {
	t.Helper()
	sub := b.Subscribe(t, "wait-online-"+group, "vigil/+/status")
	deadline := time.Now().Add(60 * time.Second)
	for {
		online := map[string]bool{}
		for _, m := range sub.Messages() {
			online[m.Topic] = strings.Contains(string(m.Payload), `"group":"`+group+`"`) && !strings.Contains(string(m.Payload), `"offline"`)
		}
		all := true
		for _, d := range devices {
			all = all && online["vigil/"+d+"/status"]
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not all of %v online within 60s", devices)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition with a deadline
	}
}

// A staged rollout through `vigil model push` against three real agents: the dry run
// shows the plan with each agent's running version and publishes nothing the agents
// act on; a canary that does not trust the signer stops the rollout (exit 1, the others
// skipped); with named canaries and --max-failures 1 the rollout goes on past that
// agent's rejection and the others go active (exit 0).
func TestModelPushStagedRealAgents(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: starts three agent processes")
	}
	b := brokertest.Start(t, brokertest.Options{})
	keyFile, pub, bundle := keyAndBundle(t)
	yaml := filepath.Join(bundle, "model.yaml")
	y, _ := os.ReadFile(yaml)
	os.WriteFile(yaml, []byte(strings.Replace(string(y), "version: 0.1.1", "version: 0.2.0", 1)), 0o644)
	if code, _, errs := runVigil("model", "sign", bundle, "--key", keyFile); code != 0 {
		t.Fatal(errs)
	}
	_, otherPub, _ := keyAndBundle(t)
	startAgentProcess(t, b.URL, "gate-0", "gates", otherPub) // trusts another signer
	startAgentProcess(t, b.URL, "gate-1", "gates", pub)
	startAgentProcess(t, b.URL, "gate-2", "gates", pub)
	waitOnline(t, b, "gates", "gate-0", "gate-1", "gate-2")
	push := func(extra ...string) (int, string, string) {
		return runVigil(append([]string{"model", "push", bundle, "--broker", b.URL, "--group", "gates", "--timeout", "2m"}, extra...)...)
	}

	code, out, errs := push("--canary", "1", "--dry-run")
	if code != 0 {
		t.Fatalf("dry run: exit %d\n%s\n%s", code, out, errs)
	}
	for _, re := range []string{
		`(?m)^1 \(canary\)\s+gate-0\s+online\s+0\.1\.1\s+-$`,
		`(?m)^2\s+gate-2\s+online\s+0\.1\.1\s+-$`,
		`(?m)^wave 2: 2 device\(s\); published as the manifest and the chunks once on the group gates topics`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("dry run output does not match %s:\n%s", re, out)
		}
	}
	t.Logf("dry run:\n%s", out)
	wantLines(t, errs, "dry run: nothing was published")

	code, out, errs = push("--canary", "1")
	if code != 1 {
		t.Fatalf("canary rejects: exit %d\n%s\n%s", code, out, errs)
	}
	for _, re := range []string{
		`(?m)^1 \(canary\)\s+gate-0\s+rejected\s+0\.2\.0\s+verify deployment .*untrusted key`,
		`(?m)^2\s+gate-1\s+skipped\s+-\s+not attempted: 1 failed by wave 1, over --max-failures 0$`,
		`(?m)^2\s+gate-2\s+skipped\s+-\s+not attempted`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("table does not match %s:\n%s", re, out)
		}
	}
	wantLines(t, errs, "wave 1 of 2 (canary): 1 device(s), published on each device's topics: gate-0",
		"wave 1 of 2 done: 1 of 1 failed", "rollout stopped: 1 failed by wave 1")
	if strings.Contains(errs, "gate-1: ") {
		t.Errorf("gate-1 took part:\n%s", errs)
	}

	code, out, errs = push("--canary-devices", "gate-1", "--max-failures", "1")
	if code != 0 {
		t.Fatalf("rollout past one failure: exit %d\n%s\n%s", code, out, errs)
	}
	for _, re := range []string{
		`(?m)^1 \(canary\)\s+gate-1\s+active\s+0\.2\.0\s+-$`,
		`(?m)^2\s+gate-0\s+rejected\s+0\.2\.0\s+verify deployment`,
		`(?m)^2\s+gate-2\s+active\s+0\.2\.0\s+-$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("table does not match %s:\n%s", re, out)
		}
	}
	t.Logf("stdout:\n%s\nstderr:\n%s", out, errs)
	wantLines(t, errs, "wave 2 of 2: 2 device(s), published once on the group's topics: gate-0 gate-2",
		"wave 2 of 2 done: 1 of 2 failed; 1 failed so far, --max-failures 1")
}

func TestModelPushStagedUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--device", "d", "--canary", "1"},               // staged needs a group
		{"--group", "g", "--canary", "0"},                // empty canary
		{"--group", "g", "--canary", "120%"},             // over 100%
		{"--group", "g", "--wave", "2"},                  // wave without canary
		{"--group", "g", "--max-failures", "1"},          // max failures without canary
		{"--group", "g", "--canary", "1", "--wave", "x"}, // bad wave
		{"--group", "g", "--canary", "1", "--canary-devices", "a"},
	} {
		args = append([]string{"model", "push", "b", "--broker", "tcp://x:1"}, args...)
		if code, _, errs := runVigil(args...); code != 2 || errs == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, errs)
		}
	}
}
