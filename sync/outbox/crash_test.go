package outbox

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// crashChildEnv, when set in the environment, turns TestKill9 into the child: it
// holds the store path.
const crashChildEnv = "VIGIL_OUTBOX_CRASH_CHILD"

// crashMaxBytes gives 64 KiB segments, so that the child rolls several, and room
// for the whole run: nothing is evicted.
const crashMaxBytes = 2 << 20

// crashPolicyEnv passes the fsync policy to the child.
const crashPolicyEnv = "VIGIL_OUTBOX_CRASH_POLICY"

// TestKill9 checks the promise of both policies against a real crash (Enqueue has
// written the record when it returns, so a killed process loses nothing; only a
// power loss can cost the interval): a child process enqueues events and telemetry,
// with small segments so that rolls happen, and prints every seq Enqueue returned;
// the parent SIGKILLs it mid-stream and every printed seq must be in the store, and
// the next seq above them all.
func TestKill9(t *testing.T) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path, Fsync(os.Getenv(crashPolicyEnv)))
		return
	}
	if testing.Short() {
		t.Skip("re-execs the test binary")
	}
	forEachPolicy(t, kill9)
}

func kill9(t *testing.T, p Fsync) {
	path := testOptions(t, p).Path
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path, crashPolicyEnv+"="+string(p))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}

	// The reader goroutine ends at EOF, which the kill guarantees.
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()

	var printed []uint64
	parse := func(line string) {
		// Only complete "seq N" lines count; anything else is the test framework's.
		if s, ok := strings.CutPrefix(line, "seq "); ok {
			if n, err := strconv.ParseUint(s, 10, 64); err == nil {
				printed = append(printed, n)
			}
		}
	}
	const wantPrinted = 2000
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for len(printed) < wantPrinted {
		select {
		case line, ok := <-lines:
			if !ok {
				_ = cmd.Wait()
				t.Fatalf("child exited after printing %d seqs, want at least %d", len(printed), wantPrinted)
			}
			parse(line)
		case <-deadline.C:
			_ = cmd.Process.Kill()
			for range lines {
			}
			_ = cmd.Wait()
			t.Fatalf("child printed %d seqs before the deadline, want %d", len(printed), wantPrinted)
		}
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL on Unix
		t.Fatalf("kill child: %v", err)
	}
	// Lines already written before the kill are promises too.
	for line := range lines {
		parse(line)
	}
	if err := cmd.Wait(); err == nil {
		t.Fatal("child exited cleanly, want killed")
	}

	logger, logs := captureLog()
	o := openTest(t, Options{Path: path, Device: "crash-child", MaxBytes: crashMaxBytes, Logger: logger})
	if strings.Contains(logs.String(), "corrupt") {
		t.Errorf("recovery after kill -9 found corruption:\n%s", logs)
	}
	stored := map[uint64]bool{}
	for _, env := range peekAll(t, o) {
		stored[env.Seq] = true
	}
	for _, seq := range printed {
		if !stored[seq] {
			t.Errorf("seq %d was returned by Enqueue under always but is not in the store after kill -9", seq)
		}
	}
	t.Logf("child printed %d seqs, store holds %d", len(printed), len(stored))
	if env := mustEnqueue(t, o, "after-crash", ClassEvent, 1); env.Seq <= printed[len(printed)-1] {
		t.Errorf("seq after the crash = %d, want more than the last printed %d", env.Seq, printed[len(printed)-1])
	}
}

// crashChild enqueues until it is killed. It gives up by itself after a minute so
// that a parent that died first leaves no process behind.
func crashChild(path string, p Fsync) {
	o, err := Open(Options{Path: path, Device: "crash-child", Fsync: p, MaxBytes: crashMaxBytes})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	stop := time.Now().Add(time.Minute)
	for i := 0; time.Now().Before(stop); i++ {
		class := ClassEvent
		if i%2 == 1 {
			class = ClassTelemetry
		}
		env, err := o.Enqueue(context.Background(), "detection", class, map[string]any{"i": i, "pad": strings.Repeat("p", 200)})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		// os.Stdout is unbuffered: the line is out before the next Enqueue starts.
		fmt.Fprintf(os.Stdout, "seq %d\n", env.Seq)
	}
	_ = o.Close()
	os.Exit(3)
}
