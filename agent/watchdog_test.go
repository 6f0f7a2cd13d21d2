package agent

import (
	"context"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A fake systemd: a real unixgram socket at $NOTIFY_SOCKET, as systemd provides for
// Type=notify, collecting what the agent sends.
func notifySocket(t *testing.T, watchdog time.Duration) <-chan string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", strconv.FormatInt(watchdog.Microseconds(), 10))
	msgs := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	return msgs
}

// next waits for a message with the prefix, or fails after timeout.
func next(t *testing.T, msgs <-chan string, prefix string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m := <-msgs:
			if strings.HasPrefix(m, prefix) {
				return
			}
		case <-deadline:
			t.Fatalf("no %q from the agent within %v", prefix, timeout)
		}
	}
}

// Under systemd the agent says READY, pings the watchdog while its pipeline is healthy,
// and stops pinging when a frame hangs in it, so that systemd restarts it.
func TestWatchdogStopsWhenThePipelineHangs(t *testing.T) {
	const interval = 200 * time.Millisecond
	msgs := notifySocket(t, interval)
	cfg := testConfig(t, t.TempDir(), "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, Options{Version: "test", Listener: ln, HangAfter: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	hang := make(chan struct{})
	var frames int
	a.beforeRules = func(string) {
		frames++
		if frames == 20 {
			<-hang // a rule that never returns, on the 20th frame
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		close(hang)
		<-done
	}()

	next(t, msgs, "READY=1", 30*time.Second)
	next(t, msgs, "WATCHDOG=1", 5*time.Second)
	next(t, msgs, "STATUS=camera door: one frame in the pipeline for", 60*time.Second)
	// From now on, silence: no ping for many intervals.
	quiet := time.After(10 * interval)
	for {
		select {
		case m := <-msgs:
			if m == "WATCHDOG=1" {
				t.Fatal("the watchdog was pinged with a hung pipeline")
			}
		case <-quiet:
			return
		}
	}
}
