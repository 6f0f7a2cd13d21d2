package agent

import (
	"context"
	"time"

	"github.com/vigil-edge/vigil/agent/web"
	"github.com/vigil-edge/vigil/infer/drift"
	"github.com/vigil-edge/vigil/internal/sysstat"
	"github.com/vigil-edge/vigil/sync/outbox"
)

// telemetryLoop puts a summary of the agent's state into the outbox every
// mqtt.telemetry_interval, whether or not MQTT is enabled: it waits there for the link.
// It also refreshes the retained status when what it shows changed.
func (a *Agent) telemetryLoop(ctx context.Context) error {
	t := time.NewTicker(a.parts().cfg.MQTT.TelemetryInterval)
	defer t.Stop()
	cpu := sysstat.NewCPUMeter()
	var status statusRefresher
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			// Before the telemetry is queued, so the backlog shown is not just it.
			status.refresh(a)
			if _, err := a.outbox.Enqueue(ctx, "telemetry", outbox.ClassTelemetry, a.telemetry(cpu)); err != nil && ctx.Err() == nil {
				a.logger.Error("telemetry not queued", "err", err)
			}
		}
	}
}

type cameraTelemetry struct {
	State      string            `json:"state"`
	FPS        float64           `json:"fps"`
	Frames     uint64            `json:"frames"`
	Dropped    uint64            `json:"dropped"`
	Reconnects uint64            `json:"reconnects"`
	Detect     web.DetectStatus  `json:"detect"`
	Detections map[string]uint64 `json:"detections"` // by label, since start
	Drift      *drift.Status     `json:"drift,omitempty"`
}

// telemetry is the body of one telemetry message.
func (a *Agent) telemetry(cpu *sysstat.CPUMeter) map[string]any {
	st := a.Status(false)
	byName := map[string]*camera{}
	for _, cam := range a.parts().cameras {
		byName[cam.cfg().Name] = cam
	}
	cams := map[string]cameraTelemetry{}
	for _, c := range st.Cameras {
		ct := cameraTelemetry{
			State: c.State, FPS: c.FPS, Frames: c.Frames, Dropped: c.Dropped, Reconnects: c.Reconnects,
			Detect: c.Detect, Drift: c.Drift,
		}
		if cam := byName[c.Name]; cam != nil { // a reload may have removed it meanwhile
			ct.Detections = cam.stats.labels()
		}
		cams[c.Name] = ct
	}
	acts := map[string]string{}
	for _, act := range st.Actuators {
		acts[act.Name] = act.State.State
	}
	body := map[string]any{
		"uptime_s": st.UptimeS, "cameras": cams, "actuators": acts, "outbox": st.Outbox, "mqtt": st.MQTT,
		"cpu_percent": cpu.Percent(), "rss_bytes": sysstat.RSSBytes(),
	}
	if c, ok := sysstat.TemperatureC(); ok {
		body["temperature_c"] = c
	}
	// A candidate in shadow is judged from afar: its agreement travels with telemetry.
	shadows := map[string]*ShadowStatus{}
	for _, m := range st.Models {
		if m.Shadow != nil {
			shadows[m.Name] = m.Shadow
		}
	}
	if len(shadows) > 0 {
		body["shadows"] = shadows
	}
	return body
}
