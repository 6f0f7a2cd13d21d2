package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/mqttlink"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
	"github.com/vigil-edge/vigil/sync/mqttlink/linktest"
	"github.com/vigil-edge/vigil/sync/upload"
)

func TestSamplesReceiveUsage(t *testing.T) {
	out := t.TempDir()
	for _, args := range [][]string{
		{"samples"}, {"samples", "frob"}, {"samples", "receive"}, {"samples", "receive", "--out", out},
		{"samples", "receive", "--broker", "tcp://x:1"}, {"samples", "receive", "--out", out, "--listen", ":0", "extra"},
		{"samples", "receive", "--out", out, "--broker", "tcp://x:1", "--client-id", ""},
		{"samples", "receive", "--out", out, "--broker", "tcp://x:1", "--ca-file", "/no/such/ca.pem"},
	} {
		if code, _, errs := runVigil(args...); code != 2 || errs == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, errs)
		}
	}
	if code, out, _ := runVigil("--help"); code != 0 || !strings.Contains(out, "samples receive") {
		t.Errorf("vigil --help does not list samples receive: %q", out)
	}
	if code, out, _ := runVigil("samples", "--help"); code != 0 || !strings.Contains(out, "persistent session") {
		t.Errorf("vigil samples --help: %d %q", code, out)
	}
	// A broker that is not there: exit 1, naming it.
	if code, _, errs := runVigil("samples", "receive", "--out", out, "--broker", "tcp://127.0.0.1:1"); code != 1 || !strings.Contains(errs, "127.0.0.1:1") {
		t.Errorf("no broker: exit %d, %q", code, errs)
	}
}

// receiver is `vigil samples receive` running as a process, its output lines read
// as they come.
type receiver struct {
	t      *testing.T
	cmd    interface{ Wait() error }
	proc   *os.Process
	lines  chan string
	stderr *bytes.Buffer
}

func startReceiver(t *testing.T, args ...string) *receiver {
	t.Helper()
	cmd, stdout, stderr := startVigil(t, append([]string{"samples", "receive"}, args...)...)
	r := &receiver{t: t, cmd: cmd, proc: cmd.Process, lines: make(chan string, 100), stderr: stderr}
	go func(rd *bufio.Reader) {
		defer close(r.lines)
		for {
			line, err := rd.ReadString('\n')
			if err != nil {
				return
			}
			r.lines <- strings.TrimSpace(line)
		}
	}(stdout)
	return r
}

// expect waits for a line containing want and returns it.
func (r *receiver) expect(want string) string {
	r.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-r.lines:
			if !ok {
				r.cmd.Wait()
				r.t.Fatalf("receiver exited before printing %q\n%s", want, r.stderr.String())
			}
			if strings.Contains(line, want) {
				return line
			}
		case <-timeout:
			r.proc.Kill()
			r.cmd.Wait() // then its stderr is no longer written
			r.t.Fatalf("no line with %q from the receiver in 30s\n%s", want, r.stderr.String())
		}
	}
}

// stop interrupts the receiver as Ctrl-C does and checks it exits 0.
func (r *receiver) stop() {
	r.t.Helper()
	r.proc.Signal(syscall.SIGINT)
	if err := r.cmd.Wait(); err != nil {
		r.t.Fatalf("receiver after Ctrl-C: %v\n%s", err, r.stderr.String())
	}
}

// deviceSamples is a device's samples directory with a real uploader over it.
type deviceSamples struct {
	dir    string
	mu     sync.Mutex
	names  []string
	notify chan struct{}
}

func (d *deviceSamples) add(t *testing.T, name string, size int) {
	t.Helper()
	jpg := make([]byte, size)
	rand.Read(jpg)
	side := fmt.Appendf(nil, `{"camera": "door", "file": %q}`, name+".jpg")
	if err := os.WriteFile(filepath.Join(d.dir, name+".json"), side, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, name+".jpg"), jpg, 0o644); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.names = append(d.names, name+".jpg")
	d.mu.Unlock()
	select {
	case d.notify <- struct{}{}:
	default:
	}
}

func (d *deviceSamples) list() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.names...)
}

// upload runs a real uploader sending with s until the test ends.
func (d *deviceSamples) upload(t *testing.T, s upload.Sender) *upload.Uploader {
	u := upload.New(upload.Options{
		Dir: d.dir, List: d.list, Notify: d.notify, Recheck: 50 * time.Millisecond,
		Target: func() upload.Target {
			return upload.Target{Sender: s, BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond}
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { u.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return u
}

// sameFiles waits until every sample file of d is in out/<device>/ with the same bytes.
func (d *deviceSamples) sameFiles(t *testing.T, out, device string) {
	t.Helper()
	var files []string
	for _, n := range d.list() {
		files = append(files, n, strings.TrimSuffix(n, ".jpg")+".json")
	}
	testkit.WaitFor(t, 30*time.Second, "every file received byte for byte", func() bool {
		for _, f := range files {
			want, _ := os.ReadFile(filepath.Join(d.dir, f))
			got, err := os.ReadFile(filepath.Join(out, device, f))
			if err != nil || !bytes.Equal(got, want) {
				return false
			}
		}
		return true
	})
	entries, _ := os.ReadDir(filepath.Join(out, device))
	if len(entries) != len(files) {
		t.Errorf("%d files in %s, want %d (no temporary file left)", len(entries), filepath.Join(out, device), len(files))
	}
}

// A real device uploader over a real MQTT link and mosquitto, and `vigil samples
// receive`: every file lands in --out byte for byte. Then the receiver is stopped, a
// sample is uploaded (the broker acknowledges it), and the receiver started again
// with the same client id gets it from its persistent session.
func TestSamplesReceiveOverMQTT(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	out := t.TempDir()
	rx := startReceiver(t, "--out", out, "--broker", b.URL, "--client-id", "rx-test")
	rx.expect("subscribed to vigil/+/samples/# as rx-test")

	link, _ := linktest.Start(t, mqttlink.Options{Brokers: []string{b.URL}, Device: "gate-7"})
	sender, err := upload.NewMQTT(link, 16<<10)
	if err != nil {
		t.Fatal(err)
	}
	dev := &deviceSamples{dir: t.TempDir(), notify: make(chan struct{}, 1)}
	dev.add(t, "door-20250101T120000.000Z-1", 100_000) // 7 chunks
	dev.add(t, "door-20250101T120001.000Z-2", 40_000)
	u := dev.upload(t, sender)
	testkit.WaitFor(t, 30*time.Second, "two samples uploaded", func() bool { return u.Stats().Uploaded == 2 })
	dev.sameFiles(t, out, "gate-7")
	if line := rx.expect("gate-7/door-20250101T120000.000Z-1.jpg"); line != "gate-7/door-20250101T120000.000Z-1.jpg 100000 bytes (mqtt, 7 chunks)" {
		t.Errorf("line %q", line)
	}

	// Stopped: the broker queues the next sample for the session.
	rx.stop()
	dev.add(t, "door-20250101T120002.000Z-3", 50_000)
	testkit.WaitFor(t, 30*time.Second, "the third sample acknowledged by the broker", func() bool { return u.Stats().Uploaded == 3 })
	if _, err := os.Stat(filepath.Join(out, "gate-7", "door-20250101T120002.000Z-3.jpg")); err == nil {
		t.Fatal("received while the receiver was stopped?")
	}
	rx = startReceiver(t, "--out", out, "--broker", b.URL, "--client-id", "rx-test")
	rx.expect("gate-7/door-20250101T120002.000Z-3.json")
	dev.sameFiles(t, out, "gate-7")
	rx.stop()
}

// The real HTTP sender against `vigil samples receive --listen`: every file lands
// byte for byte; a device with the wrong token is refused (401) and writes nothing.
func TestSamplesReceiveOverHTTP(t *testing.T) {
	out := t.TempDir()
	rx := startReceiver(t, "--out", out, "--listen", "127.0.0.1:0", "--token", "s3cret")
	addr := strings.TrimPrefix(rx.expect("listening on http://"), "listening on ")

	sender, err := upload.NewHTTP(upload.HTTPOptions{URL: addr + "/samples", Device: "gate-8", Token: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	dev := &deviceSamples{dir: t.TempDir(), notify: make(chan struct{}, 1)}
	dev.add(t, "door-20250101T120000.000Z-1", 100_000)
	dev.add(t, "door-20250101T120001.000Z-2", 3_000)
	u := dev.upload(t, sender)
	testkit.WaitFor(t, 30*time.Second, "two samples uploaded", func() bool { return u.Stats().Uploaded == 2 })
	dev.sameFiles(t, out, "gate-8")
	if line := rx.expect("gate-8/door-20250101T120000.000Z-1.jpg"); line != "gate-8/door-20250101T120000.000Z-1.jpg 100000 bytes (http)" {
		t.Errorf("line %q", line)
	}

	bad, err := upload.NewHTTP(upload.HTTPOptions{URL: addr, Device: "intruder", Token: "guess"})
	if err != nil {
		t.Fatal(err)
	}
	intruder := &deviceSamples{dir: t.TempDir(), notify: make(chan struct{}, 1)}
	intruder.add(t, "door-20250101T120000.000Z-1", 1000)
	iu := intruder.upload(t, bad)
	testkit.WaitFor(t, 30*time.Second, "the wrong token refused", func() bool { return strings.Contains(iu.Stats().LastError, "401") })
	if _, err := os.Stat(filepath.Join(out, "intruder")); err == nil {
		t.Error("a device with the wrong token wrote to --out")
	}
	rx.stop()
}

// The receiver killed (SIGKILL) in the middle of a file whose chunks it already
// acknowledged: they are in --out/.partial, the next start with the same client id
// takes them, the broker delivers the rest from the session, and the file arrives
// whole. Without the spool, the manifest would find chunk 0 missing and the sample
// would be lost (the device got the broker's acks and never sends it again).
func TestSamplesReceiveKilledMidFile(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	out := t.TempDir()
	rx := startReceiver(t, "--out", out, "--broker", b.URL, "--client-id", "rx-kill")
	rx.expect("subscribed to vigil/+/samples/# as rx-kill")

	link, _ := linktest.Start(t, mqttlink.Options{Brokers: []string{b.URL}, Device: "gate-9"})
	sender, err := upload.NewMQTT(link, 1024) // small chunks: 293 of them for the JPEG
	if err != nil {
		t.Fatal(err)
	}
	dev := &deviceSamples{dir: t.TempDir(), notify: make(chan struct{}, 1)}
	dev.add(t, "door-20250101T120000.000Z-1", 300_000)
	u := dev.upload(t, sender)

	spoolDir := filepath.Join(out, ".partial", "gate-9", "door-20250101T120000.000Z-1.jpg")
	testkit.WaitFor(t, 30*time.Second, "chunks in the receiver's spool", func() bool {
		entries, _ := os.ReadDir(spoolDir)
		return len(entries) >= 3
	})
	rx.proc.Kill()
	rx.cmd.Wait()
	if _, err := os.Stat(filepath.Join(out, "gate-9", "door-20250101T120000.000Z-1.jpg")); err == nil {
		t.Fatal("the JPEG was whole before the kill: the test proves nothing")
	}
	testkit.WaitFor(t, 60*time.Second, "the sample acknowledged by the broker", func() bool { return u.Stats().Uploaded == 1 })

	rx = startReceiver(t, "--out", out, "--broker", b.URL, "--client-id", "rx-kill")
	if line := rx.expect("chunks of 1 files taken from"); !strings.Contains(line, filepath.Join(out, ".partial")) {
		t.Errorf("line %q", line)
	}
	rx.expect("gate-9/door-20250101T120000.000Z-1.jpg 300000 bytes (mqtt, 293 chunks)")
	dev.sameFiles(t, out, "gate-9")
	testkit.WaitFor(t, 30*time.Second, "the spool emptied", func() bool {
		entries, err := os.ReadDir(filepath.Join(out, ".partial"))
		return err == nil && len(entries) == 0
	})
	rx.stop()
	if strings.Contains(rx.stderr.String(), "missing") {
		t.Errorf("stderr: %s", rx.stderr.String())
	}
}
