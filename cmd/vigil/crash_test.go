package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
)

// The daemon, as a real process, is killed with SIGKILL at random moments while it
// queues telemetry and events and drains them to a real broker, five times, and
// restarted each time. In the end the cloud side holds every seq from 1 to the last
// one: duplicates are allowed (at-least-once), gaps are not.
func TestKill9LosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPED in -short mode: kills and restarts the daemon five times")
	}
	broker := brokertest.Start(t, brokertest.Options{Persistent: true})
	sub := broker.Subscribe(t, "cloud", "vigil/crash-test/+")
	dir := t.TempDir()
	clip, _ := filepath.Abs(filepath.Join("..", "..", "assets", "footage", "people.mp4"))
	cfg := filepath.Join(dir, "vigil.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
device: {id: crash-test, state_dir: %q}
http: {listen: "127.0.0.1:0"}
cameras:
  - {name: door, url: "file://%s", detect_fps: 10}
actuators:
  - {name: relay, driver: sim}
rules:
  - {name: person, camera: door, labels: [person], cooldown: 200ms, action: {actuator: relay, pulse: 100ms}}
mqtt:
  enabled: true
  brokers: [%q]
  telemetry_interval: 5ms
  backoff: {min: 50ms, max: 500ms}
outbox: {fsync: interval}
`, filepath.Join(dir, "state"), clip, broker.URL)), 0o644)

	start := func() (*exec.Cmd, string) {
		cmd := exec.Command(os.Args[0], "run", "--config", cfg)
		cmd.Env = append(os.Environ(), "RUN_VIGIL_MAIN=1")
		stdout, _ := cmd.StdoutPipe()
		cmd.Stderr = nil
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line := make(chan string, 1)
		go func() {
			l, _ := bufio.NewReader(stdout).ReadString('\n')
			line <- l
		}()
		select {
		case l := <-line:
			m := regexp.MustCompile(`http://(\S+)`).FindStringSubmatch(l)
			if m == nil {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("unexpected first line %q", l)
			}
			return cmd, "http://" + m[1]
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("vigil did not start within 30s")
		}
		return nil, ""
	}

	for i := range 5 {
		cmd, _ := start()
		time.Sleep(time.Duration(300+rand.IntN(1500)) * time.Millisecond) // a random moment, not a synchronisation
		cmd.Process.Kill()
		cmd.Wait()
		// The broker publishes the last will: the retained status says offline.
		deadline := time.Now().Add(15 * time.Second)
		for lastStatus(sub) != "offline" {
			if time.Now().After(deadline) {
				t.Fatalf("run %d: no offline status after the kill (last status %q)", i+1, lastStatus(sub))
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Logf("run %d killed; the subscriber has %d messages", i+1, len(sub.Seqs()))
	}

	// A last run drains what is left, then stops cleanly.
	cmd, base := start()
	var st struct {
		Outbox struct {
			Depth   int    `json:"depth"`
			NextSeq uint64 `json:"next_seq"`
		} `json:"outbox"`
		MQTT struct {
			State string `json:"state"`
		} `json:"mqtt"`
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(base + "/api/status")
		if err == nil {
			json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
		}
		if st.MQTT.State == "connected" && st.Outbox.Depth <= 5 && st.Outbox.NextSeq > 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the backlog did not drain: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("clean stop: %v", err)
	}
	// Everything up to the last seq the daemon reported, plus whatever it queued while
	// stopping, must have arrived.
	last := st.Outbox.NextSeq - 1
	deadline = time.Now().Add(30 * time.Second)
	for {
		seen := map[uint64]int{}
		for _, s := range sub.Seqs() {
			seen[s]++
		}
		var missing []string
		for s := uint64(1); s <= last; s++ {
			if seen[s] == 0 {
				missing = append(missing, fmt.Sprint(s))
			}
		}
		if len(missing) == 0 {
			dups := 0
			for _, n := range seen {
				dups += n - 1
			}
			t.Logf("all %d seqs arrived over 6 runs (5 killed), %d duplicates", last, dups)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d seqs missing: %s", len(missing), last, strings.Join(missing[:min(20, len(missing))], " "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lastStatus is the state in the newest message on the status topic.
func lastStatus(sub *brokertest.Subscriber) string {
	state := ""
	for _, m := range sub.Messages() {
		if strings.HasSuffix(m.Topic, "/status") {
			var st struct {
				State string `json:"state"`
			}
			json.Unmarshal(m.Payload, &st)
			state = st.State
		}
	}
	return state
}
