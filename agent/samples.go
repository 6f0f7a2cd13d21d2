package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vigil-edge/vigil/agent/config"
	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/infer"
	"github.com/vigil-edge/vigil/internal/tlsconf"
	"github.com/vigil-edge/vigil/sync/upload"
)

// Samples for retraining: the frames the next model would learn most from are kept as
// they were captured (JPEG, no boxes) with a JSON sidecar of what the model saw, within
// samples.max_bytes (oldest out first), at most one per camera every samples.interval:
// frames where the model is unsure (a score just over its threshold), frames while the
// camera drifts, and frames an operator flags. A camera with store_frames: false never
// has a frame kept. Each sample is a `sample` event naming its file
// (GET /api/samples/<file>), and samples.upload sends them off the device (below).

type sampleSidecar struct {
	Camera     string            `json:"camera"`
	Frame      uint64            `json:"frame"`
	Time       time.Time         `json:"time"`
	Reason     string            `json:"reason"` // unsure | drift | flagged
	Model      string            `json:"model"`
	Version    string            `json:"version"`
	Detections []infer.Detection `json:"detections"`
}

// maybeSample keeps the frame as a sample if it is worth it and the camera's budget of
// time allows. It runs after the frame's actions.
func (a *Agent) maybeSample(cam *camera, f capture.Frame, run *loaded, dets []infer.Detection) {
	c := a.parts().cfg.Samples
	if !cam.cfg().StoreFrames || c.MaxBytes == 0 {
		cam.flagged.Store(false)
		return
	}
	reason := ""
	switch {
	case cam.flagged.Swap(false):
		reason = "flagged"
	case time.Since(time.Unix(0, cam.lastSample.Load())) < c.Interval:
		return
	case cam.drift != nil && cam.drift.Status().Drifting:
		reason = "drift"
	default:
		threshold := run.detector.Manifest().Thresholds.Score
		for _, d := range dets {
			if float64(d.Score) < float64(threshold)+c.Near {
				reason = "unsure"
				break
			}
		}
	}
	if reason == "" {
		return
	}
	cam.lastSample.Store(time.Now().UnixNano())
	man := run.detector.Manifest()
	side, _ := json.MarshalIndent(sampleSidecar{
		Camera: cam.cfg().Name, Frame: f.Seq, Time: f.Time.UTC(), Reason: reason,
		Model: man.Name, Version: man.Version, Detections: dets,
	}, "", "  ")
	name, problem := a.samples.SaveWith(cam.cfg().Name, f, dets, side)
	if name == "" {
		if problem != "" {
			cam.logger.Warn("sample not kept", "reason", reason, "problem", problem)
		}
		return
	}
	a.recordEvent(context.Background(), "sample", map[string]string{"camera": cam.cfg().Name, "file": name, "reason": reason})
}

// Uploading samples (samples.upload; sync/upload says how they travel): one goroutine
// sends what the store keeps, oldest first, and never holds up the pipeline, which only
// drops a token on the store's saved channel. The target is read from the current
// config before every pass, so a reload applies; an HTTP sender is built again only
// when its settings change.

// sampleUploader is the agent's samples uploader; Run's group runs it.
type sampleUploader struct {
	*upload.Uploader

	mu     sync.Mutex // guards the HTTP sender, kept while its settings stay the same
	http   *upload.HTTP
	key    config.SamplesUpload // its settings (backoff aside)
	device string
}

func (a *Agent) newUploader() *sampleUploader {
	u := &sampleUploader{}
	u.Uploader = upload.New(upload.Options{
		Dir: a.samples.Dir(), List: a.samples.List, Notify: a.samples.Saved(), Target: func() upload.Target { return a.uploadTarget(u) },
		Logger: a.logBase,
	})
	return u
}

// uploadTarget is where samples go under the current config.
func (a *Agent) uploadTarget(u *sampleUploader) upload.Target {
	cfg := a.parts().cfg
	c := cfg.Samples.Upload
	t := upload.Target{BackoffMin: c.Backoff.Min, BackoffMax: c.Backoff.Max}
	switch c.Via {
	case "mqtt":
		s, err := upload.NewMQTT(linkPublisher{a}, int(c.ChunkSize))
		if err != nil {
			a.logger.Error("samples.upload: no MQTT sender", "err", err)
			return upload.Target{}
		}
		t.Sender = s
	case "http":
		u.mu.Lock()
		defer u.mu.Unlock()
		key := c
		key.Backoff = config.Backoff{}
		if u.http == nil || u.key != key || u.device != cfg.Device.ID {
			s, err := newHTTPSender(c, cfg.Device.ID)
			if err != nil {
				a.logger.Error("samples are not uploaded", "err", err)
				return upload.Target{}
			}
			u.http, u.key, u.device = s, key, cfg.Device.ID
		}
		t.Sender = u.http
	}
	return t
}

func newHTTPSender(c config.SamplesUpload, device string) (*upload.HTTP, error) {
	var tlsConfig *tls.Config
	if c.CAFile != "" {
		var err error
		if tlsConfig, err = tlsconf.Client(c.CAFile, "", ""); err != nil {
			return nil, fmt.Errorf("samples.upload.ca_file: %w", err)
		}
	}
	s, err := upload.NewHTTP(upload.HTTPOptions{URL: c.URL, Device: device, Token: c.Token, TLS: tlsConfig})
	if err != nil {
		return nil, fmt.Errorf("samples.upload.url: %w", err)
	}
	return s, nil
}

// linkPublisher publishes on the MQTT link of the moment (a reload may replace it).
type linkPublisher struct{ a *Agent }

func (p linkPublisher) Publish(ctx context.Context, suffix string, payload []byte, qos byte) error {
	link := p.a.parts().link
	if link == nil {
		return errors.New("the MQTT link is off (mqtt.enabled: false)")
	}
	return link.Publish(ctx, suffix, payload, qos)
}

func (a *Agent) samplesStatus() SamplesStatus {
	st := SamplesStatus{Upload: a.parts().cfg.Samples.Upload.Via}
	if a.samples != nil {
		st.Stored, st.Bytes = a.samples.Usage()
	}
	if a.uploader != nil {
		st.Stats = a.uploader.Stats()
	}
	return st
}
