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

// TestKill9 checks the FsyncAlways promise against a real crash: a child process
// enqueues and prints every seq Enqueue returned; the parent SIGKILLs it mid-stream
// and every printed seq must be in the store.
func TestKill9(t *testing.T) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
		return
	}
	if testing.Short() {
		t.Skip("re-execs the test binary")
	}

	path := testOptions(t, FsyncAlways).Path
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
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
	const wantPrinted = 50
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

	o := openTest(t, Options{Path: path, Device: "crash-child"})
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
func crashChild(path string) {
	o, err := Open(Options{Path: path, Device: "crash-child", Fsync: FsyncAlways})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	stop := time.Now().Add(time.Minute)
	for i := 0; time.Now().Before(stop); i++ {
		env, err := o.Enqueue(context.Background(), "detection", ClassEvent, map[string]int{"i": i})
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
