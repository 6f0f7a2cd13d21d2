package upload_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/mqttlink"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
	"github.com/vigil-edge/vigil/sync/mqttlink/linktest"
	"github.com/vigil-edge/vigil/sync/upload"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// samples is a samples directory as the agent's store keeps it.
type samples struct {
	dir    string
	mu     sync.Mutex
	names  []string // oldest first
	notify chan struct{}
}

func newSamples(t *testing.T) *samples {
	return &samples{dir: t.TempDir(), notify: make(chan struct{}, 1)}
}

// add writes a sample of about size bytes (random, so that chunks differ) and its sidecar.
func (s *samples) add(t *testing.T, name string, size int) {
	t.Helper()
	jpg := make([]byte, size)
	rand.Read(jpg)
	side, _ := json.Marshal(map[string]string{"camera": "door", "file": name})
	if err := os.WriteFile(filepath.Join(s.dir, name+".json"), side, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.dir, name+".jpg"), jpg, 0o644); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.names = append(s.names, name+".jpg")
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// remove deletes a sample, as the budget does.
func (s *samples) remove(name string) {
	os.Remove(filepath.Join(s.dir, name+".jpg"))
	os.Remove(filepath.Join(s.dir, name+".json"))
	s.mu.Lock()
	s.names = slices.DeleteFunc(s.names, func(n string) bool { return n == name+".jpg" })
	s.mu.Unlock()
}

func (s *samples) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.names)
}

func (s *samples) file(t *testing.T, name string) []byte {
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// run runs an uploader until the returned stop is called (or the test ends).
func run(t *testing.T, s *samples, target upload.Target) (*upload.Uploader, func()) {
	u := upload.New(upload.Options{
		Dir: s.dir, List: s.list, Notify: s.notify, Target: func() upload.Target { return target },
		Recheck: 50 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- u.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return u, stop
}

func httpTarget(t *testing.T, url string) upload.Target {
	s, err := upload.NewHTTP(upload.HTTPOptions{URL: url + "/in", Device: "dev-1", Token: "t0k"})
	if err != nil {
		t.Fatal(err)
	}
	return upload.Target{Sender: s, BackoffMin: 10 * time.Millisecond, BackoffMax: 40 * time.Millisecond}
}

// The endpoint is down (503) at first: every sample arrives once it is up, byte for
// byte, oldest first, the JPEG before its sidecar, each exactly once; a restart of the
// uploader sends only what came after.
func TestHTTPEndpointDownThenUp(t *testing.T) {
	s := newSamples(t)
	for i := range 3 {
		s.add(t, fmt.Sprintf("door-%d", i), 40_000+i)
	}
	e := testkit.NewPutServer(t, "t0k", 5)
	u, stop := run(t, s, httpTarget(t, e.URL))
	testkit.WaitFor(t, 10*time.Second, "three samples uploaded", func() bool { return u.Stats().Uploaded == 3 })
	st := u.Stats()
	if st.Failed < 1 || st.Pending != 0 || st.LastError != "" {
		t.Errorf("stats after the outage %+v: want failures counted, nothing pending, the error cleared", st)
	}
	s.add(t, "door-3", 1000)
	testkit.WaitFor(t, 10*time.Second, "the new sample uploaded", func() bool { return u.Stats().Uploaded == 4 })
	stop()

	// Restart: a new uploader over the same directory.
	s.add(t, "door-4", 2000)
	u, stop = run(t, s, httpTarget(t, e.URL))
	testkit.WaitFor(t, 10*time.Second, "the sample saved while stopped", func() bool { return u.Stats().Uploaded == 1 })
	stop()

	rec := e.Received()
	got, times, order := rec.Bodies, rec.Times, rec.Order
	if rec.Refused != 5 {
		t.Errorf("%d requests refused, want 5", rec.Refused)
	}
	var want []string
	for i := range 5 {
		name := fmt.Sprintf("door-%d", i)
		for _, f := range []string{name + ".jpg", name + ".json"} {
			p := "/in/dev-1/" + f
			want = append(want, p)
			if !bytes.Equal(got[p], s.file(t, f)) {
				t.Errorf("%s: %d bytes received differ from the %d on disk", p, len(got[p]), len(s.file(t, f)))
			}
			if times[p] != 1 {
				t.Errorf("%s received %d times", p, times[p])
			}
		}
	}
	if !slices.Equal(order, want) {
		t.Errorf("order %q, want %q", order, want)
	}
}

// A sample the budget removes while the endpoint is down is skipped and counted; the
// others still arrive.
func TestRemovedSampleIsSkipped(t *testing.T) {
	s := newSamples(t)
	for i := range 3 {
		s.add(t, fmt.Sprintf("door-%d", i), 5000)
	}
	e := testkit.NewPutServer(t, "t0k", -1)
	u, _ := run(t, s, httpTarget(t, e.URL))
	testkit.WaitFor(t, 10*time.Second, "a failed attempt", func() bool { return u.Stats().Failed > 0 })
	if st := u.Stats(); st.Pending != 3 || !strings.Contains(st.LastError, "503") {
		t.Errorf("stats while down %+v", st)
	}
	s.remove("door-0")
	e.SetFail(0)
	testkit.WaitFor(t, 10*time.Second, "the two others uploaded", func() bool { return u.Stats().Uploaded == 2 })
	if st := u.Stats(); st.Skipped != 1 || st.Pending != 0 {
		t.Errorf("stats %+v: want 1 skipped, 0 pending", st)
	}
	if times := e.Received().Times; times["/in/dev-1/door-0.jpg"] != 0 || times["/in/dev-1/door-2.json"] != 1 {
		t.Errorf("received %v", times)
	}
}

// Upload off: nothing is sent, everything is pending.
func TestOffSendsNothing(t *testing.T) {
	s := newSamples(t)
	s.add(t, "door-0", 100)
	u, _ := run(t, s, upload.Target{})
	testkit.WaitFor(t, 10*time.Second, "the sample counted as pending", func() bool { return u.Stats().Pending == 1 })
	if st := u.Stats(); st.Uploaded != 0 || st.Failed != 0 {
		t.Errorf("stats %+v", st)
	}
}

// Over MQTT (a real mosquitto, the real link), a sample arrives as chunks and a
// manifest per file; the receiver reassembles it and the SHA-256 matches.
func TestMQTTChunksReassemble(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	sub := b.Subscribe(t, "cloud", "vigil/dev-1/samples/#")
	link, _ := linktest.Start(t, mqttlink.Options{Brokers: []string{b.URL}, Device: "dev-1"})

	s := newSamples(t)
	s.add(t, "door-0", 10_000) // 3 chunks of 4 KiB, the last short
	sender, err := upload.NewMQTT(link, 4096)
	if err != nil {
		t.Fatal(err)
	}
	// Started before the link connects: the first attempts fail and are retried.
	u, stop := run(t, s, upload.Target{Sender: sender, BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond})
	testkit.WaitFor(t, 20*time.Second, "the sample uploaded", func() bool { return u.Stats().Uploaded == 1 })
	stop()

	var files map[string]*upload.File
	testkit.WaitFor(t, 10*time.Second, "both files received", func() bool {
		files = receiveAll(t, sub.Messages())
		return len(files) == 2
	})
	for _, f := range []string{"door-0.jpg", "door-0.json"} {
		got := files["dev-1/"+f]
		if got == nil || !bytes.Equal(got.Data, s.file(t, f)) {
			t.Errorf("%s received: %v, want the %d bytes on disk", f, got, len(s.file(t, f)))
		} else if f == "door-0.jpg" && got.Chunks != 3 {
			t.Errorf("%s came in %d chunks, want 3", f, got.Chunks)
		}
	}
}

// receiveAll puts together, with a Receiver, the files in msgs, by <device>/<file>;
// any error fails the test.
func receiveAll(t *testing.T, msgs []brokertest.Message) map[string]*upload.File {
	t.Helper()
	r := newReceiver(t, "vigil", upload.ReceiverOptions{})
	files := map[string]*upload.File{}
	for _, m := range msgs {
		f, err := r.Add(m.Topic, m.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if f != nil {
			files[f.Device+"/"+f.Name] = f
		}
	}
	return files
}
