package agent

import (
	"context"
	"encoding/json"
	"time"

	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/infer"
)

// Samples for retraining: the frames the next model would learn most from are kept as
// they were captured (JPEG, no boxes) with a JSON sidecar of what the model saw, within
// samples.max_bytes (oldest out first), at most one per camera every samples.interval:
// frames where the model is unsure (a score just over its threshold), frames while the
// camera drifts, and frames an operator flags. A camera with store_frames: false never
// has a frame kept. Each sample is a `sample` event naming its file
// (GET /api/samples/<file>).

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
	if !cam.cfg.StoreFrames || c.MaxBytes == 0 {
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
		Camera: cam.cfg.Name, Frame: f.Seq, Time: f.Time.UTC(), Reason: reason,
		Model: man.Name, Version: man.Version, Detections: dets,
	}, "", "  ")
	name, problem := a.samples.saveWith(cam.cfg.Name, f, dets, side)
	if name == "" {
		if problem != "" {
			cam.logger.Warn("sample not kept", "reason", reason, "problem", problem)
		}
		return
	}
	a.recordEvent(context.Background(), "sample", map[string]string{"camera": cam.cfg.Name, "file": name, "reason": reason})
}
