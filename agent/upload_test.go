package agent

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/mqttlink/brokertest"
	"github.com/vigil-edge/vigil/sync/upload"
)

// check asserts that every sample the state file records arrived exactly once, byte for
// byte (JPEG and sidecar), that nothing else arrived, and returns how many did.
func checkUploads(t *testing.T, e *testkit.PutServer, state string) int {
	t.Helper()
	dir := filepath.Join(state, "samples")
	got := e.Received()
	uploaded := uploadedNames(t, dir)
	for _, name := range uploaded {
		for _, f := range []string{name, strings.TrimSuffix(name, ".jpg") + ".json"} {
			p := "/in/test-01/" + f
			disk, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatalf("uploaded sample not on disk (the budget is large): %v", err)
			}
			if !bytes.Equal(got.Bodies[p], disk) || got.Times[p] != 1 {
				t.Errorf("%s: received %d times, %d bytes; %d on disk", p, got.Times[p], len(got.Bodies[p]), len(disk))
			}
		}
	}
	if len(got.Bodies) != 2*len(uploaded) {
		t.Errorf("%d files received for %d samples recorded as uploaded", len(got.Bodies), len(uploaded))
	}
	return len(uploaded)
}

func uploadedNames(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, upload.StateFile))
	if err != nil {
		t.Fatalf("upload state: %v", err)
	}
	return strings.Fields(string(b))
}

func uploadConfig(via, more string) string {
	return fmt.Sprintf("samples:\n  near: 1\n  interval: 200ms\n  upload: {via: %s, backoff: {min: 20ms, max: 100ms}%s}\n", via, more)
}

// Samples reach an HTTP endpoint that is down at first: retried, each file exactly once,
// the bytes those on disk; status and metrics count them.
func TestSamplesUploadOverHTTP(t *testing.T) {
	state := t.TempDir()
	e := testkit.NewPutServer(t, "t0k", 3)
	r := start(t, testConfig(t, state, uploadConfig("http", fmt.Sprintf(", url: %q, token: t0k", e.URL+"/in"))))
	testkit.WaitFor(t, 60*time.Second, "three samples uploaded", func() bool { return r.status(t).Samples.Uploaded >= 3 })
	st := r.status(t).Samples
	if st.Upload != "http" || st.Stored < 3 || st.Bytes <= 0 || st.Failed < 1 {
		t.Errorf("status samples %+v: want upload http, >= 3 stored, the failures counted", st)
	}
	_, metrics := r.get(t, "/metrics")
	if metricValue(t, metrics, "vigil_samples_uploaded_total") < 3 || metricValue(t, metrics, "vigil_samples_upload_errors_total") < 1 {
		t.Errorf("metrics: uploaded %v, errors %v", metricValue(t, metrics, "vigil_samples_uploaded_total"),
			metricValue(t, metrics, "vigil_samples_upload_errors_total"))
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if n := checkUploads(t, e, state); n < 3 {
		t.Errorf("%d samples recorded as uploaded", n)
	}
	if e.Received().Refused != 3 {
		t.Errorf("%d requests refused, want 3", e.Received().Refused)
	}
}

// Samples kept while the endpoint is down are uploaded by the next run of the agent,
// each once; with store_frames: false that run keeps (and uploads) nothing new.
func TestSamplesUploadAfterRestart(t *testing.T) {
	state := t.TempDir()
	e := testkit.NewPutServer(t, "t0k", -1) // down
	more := fmt.Sprintf(", url: %q, token: t0k", e.URL+"/in")
	r := start(t, testConfig(t, state, uploadConfig("http", more)))
	testkit.WaitFor(t, 60*time.Second, "samples waiting for the endpoint", func() bool {
		st := r.status(t).Samples
		return st.Pending >= 3 && st.Failed > 0 && strings.Contains(st.LastError, "503")
	})
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	jpgs, _, _ := sampleFiles(t, state)

	e.SetFail(0) // up again
	cfg := testConfig(t, state, uploadConfig("http", more))
	cfg.Cameras[0].StoreFrames = false
	r = start(t, cfg)
	testkit.WaitFor(t, 30*time.Second, "every kept sample uploaded", func() bool { return r.status(t).Samples.Uploaded == uint64(jpgs) })
	testkit.WaitFor(t, 30*time.Second, "a few more detections", func() bool { return r.status(t).Cameras[0].Detect.Frames > 10 })
	if st := r.status(t).Samples; st.Pending != 0 || st.Stored != jpgs || st.Uploaded != uint64(jpgs) {
		t.Errorf("status samples %+v, want %d stored and uploaded", st, jpgs)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if n := checkUploads(t, e, state); n != jpgs {
		t.Errorf("%d of %d samples uploaded", n, jpgs)
	}
}

// A camera with store_frames: false keeps nothing, so nothing is uploaded.
func TestSamplesUploadNothingWithStoreFramesOff(t *testing.T) {
	state := t.TempDir()
	e := testkit.NewPutServer(t, "t0k", 0)
	cfg := testConfig(t, state, uploadConfig("http", fmt.Sprintf(", url: %q, token: t0k", e.URL+"/in")))
	cfg.Cameras[0].StoreFrames = false
	r := start(t, cfg)
	testkit.WaitFor(t, 30*time.Second, "a few detections", func() bool { return r.status(t).Cameras[0].Detect.Frames > 10 })
	st := r.status(t).Samples
	r.stop()
	if len(e.Received().Bodies) != 0 || st.Stored != 0 || st.Uploaded != 0 || st.Pending != 0 {
		t.Errorf("store_frames: false: %d files received, status %+v", len(e.Received().Bodies), st)
	}
}

// Over MQTT (a real mosquitto): each file of a sample arrives as chunks and a manifest;
// put together, they are the bytes on disk and match the manifest's SHA-256.
func TestSamplesUploadOverMQTT(t *testing.T) {
	b := brokertest.Start(t, brokertest.Options{})
	sub := b.Subscribe(t, "cloud", "vigil/test-01/samples/#")
	state := t.TempDir()
	cfg := testConfig(t, state, fmt.Sprintf("  enabled: true\n  brokers: [%q]\n  backoff: {min: 50ms, max: 500ms}\n", b.URL)+
		uploadConfig("mqtt", ", chunk_size: 16KiB"))
	r := start(t, cfg)
	testkit.WaitFor(t, 60*time.Second, "two samples uploaded", func() bool { return r.status(t).Samples.Uploaded >= 2 })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(state, "samples")
	names := uploadedNames(t, dir)
	if len(names) < 2 {
		t.Fatalf("%d samples recorded as uploaded", len(names))
	}
	for _, name := range names {
		for _, f := range []string{name, strings.TrimSuffix(name, ".jpg") + ".json"} {
			var got *upload.File
			testkit.WaitFor(t, 10*time.Second, "all of "+f, func() bool {
				r, err := upload.NewReceiver("vigil", upload.ReceiverOptions{})
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range sub.Messages() {
					file, err := r.Add(m.Topic, m.Payload)
					if err != nil {
						t.Fatal(err)
					}
					if file != nil && file.Name == f {
						got = file
					}
				}
				return got != nil
			})
			disk, _ := os.ReadFile(filepath.Join(dir, f))
			if !bytes.Equal(got.Data, disk) {
				t.Errorf("%s received in %d chunks: %d bytes, %d on disk", f, got.Chunks, len(got.Data), len(disk))
			}
			if strings.HasSuffix(f, ".jpg") && got.Chunks < 2 {
				t.Errorf("%s (%d bytes) in %d chunks of 16KiB", f, len(disk), got.Chunks)
			}
		}
	}
}
