package agent

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/outbox"
)

func sampleFiles(t *testing.T, state string) (jpgs, jsons int, bytes int64) {
	entries, _ := os.ReadDir(filepath.Join(state, "samples"))
	for _, e := range entries {
		info, _ := e.Info()
		switch {
		case strings.HasSuffix(e.Name(), ".jpg"):
			jpgs++
		case strings.HasSuffix(e.Name(), ".json"):
			jsons++
		default:
			continue
		}
		bytes += info.Size()
	}
	return
}

// Frames where the model is unsure are kept as they were captured, with what the model
// saw, within the budget (oldest out first).
func TestSamplesForRetraining(t *testing.T) {
	state := t.TempDir()
	cfg := testConfig(t, state, "")
	cfg.Samples.Near, cfg.Samples.Interval, cfg.Samples.MaxBytes = 1, 0, 100<<10 // every frame with a detection
	r := start(t, cfg)
	testkit.WaitFor(t, 30*time.Second, "more samples than the budget holds", func() bool {
		return len(eventsOfKind(r.status(t).Events, "sample")) >= 8
	})
	r.stop()
	jpgs, jsons, total := sampleFiles(t, state)
	if jpgs == 0 || jpgs != jsons || total > 100<<10 {
		t.Fatalf("%d frames, %d sidecars, %d bytes (budget %d)", jpgs, jsons, total, 100<<10)
	}
	if jpgs >= 8 {
		t.Errorf("the budget removed nothing: %d samples kept", jpgs)
	}
	matches, _ := filepath.Glob(filepath.Join(state, "samples", "*.json"))
	var side sampleSidecar
	b, _ := os.ReadFile(matches[0])
	if err := json.Unmarshal(b, &side); err != nil || side.Reason != "unsure" || side.Camera != "door" || len(side.Detections) == 0 || side.Model != "yolox-nano" {
		t.Errorf("sidecar %s: %v", b, err)
	}
}

// An operator can flag the next frame; a camera with store_frames: false keeps none.
func TestFlaggedSampleAndStoreFramesOff(t *testing.T) {
	state := t.TempDir()
	cfg := testConfig(t, state, "")
	cfg.Samples.Near = 0 // nothing is "unsure": only flagged frames are kept
	r := start(t, cfg)
	testkit.WaitFor(t, 30*time.Second, "detection", func() bool { return r.status(t).Cameras[0].Detect.Frames > 0 })
	if code, msg := r.post(t, "/api/cameras/door/sample", "s3cret", ""); code != http.StatusAccepted {
		t.Fatalf("flag: %d %s", code, msg)
	}
	var ev *outbox.Envelope
	testkit.WaitFor(t, 30*time.Second, "the flagged sample", func() bool {
		ev = eventOfKind(r.status(t).Events, "sample")
		return ev != nil
	})
	if bodyField(*ev, "reason") != "flagged" {
		t.Errorf("sample event %s", ev.Body)
	}
	code, body := r.get(t, "/api/samples/"+bodyField(*ev, "file"))
	if code != http.StatusOK || len(body) < 1000 || body[0] != 0xFF {
		t.Errorf("the sample's frame: %d, %d bytes", code, len(body))
	}
	r.stop()

	off := t.TempDir()
	cfg = testConfig(t, off, "")
	cfg.Cameras[0].StoreFrames = false
	cfg.Samples.Near, cfg.Samples.Interval = 1, 0
	r = start(t, cfg)
	testkit.WaitFor(t, 30*time.Second, "a few detections", func() bool { return r.status(t).Cameras[0].Detect.Frames > 10 })
	if code, _ := r.post(t, "/api/cameras/door/sample", "s3cret", ""); code != http.StatusConflict {
		t.Errorf("flag with store_frames off: %d, want 409", code)
	}
	r.stop()
	if jpgs, _, _ := sampleFiles(t, off); jpgs != 0 {
		t.Errorf("%d frames kept with store_frames: false", jpgs)
	}
}

func eventsOfKind(events []outbox.Envelope, kind string) []outbox.Envelope {
	var out []outbox.Envelope
	for _, e := range events {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}
