package agent

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vigil-edge/vigil/agent/web"
	"github.com/vigil-edge/vigil/infer/drift"
	"github.com/vigil-edge/vigil/sync/outbox"
)

// telemetryLoop puts a summary of the agent's state into the outbox every
// mqtt.telemetry_interval, whether or not MQTT is enabled: it waits there for the link.
// It also refreshes the retained status when what it shows changed.
func (a *Agent) telemetryLoop(ctx context.Context) error {
	t := time.NewTicker(a.parts().cfg.MQTT.TelemetryInterval)
	defer t.Stop()
	cpu := newCPUMeter()
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
func (a *Agent) telemetry(cpu *cpuMeter) map[string]any {
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
		"cpu_percent": cpu.percent(), "rss_bytes": rssBytes(),
	}
	if c, ok := temperatureC(); ok {
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

// cpuMeter turns the process's CPU time into a percentage of one core since the last
// reading.
type cpuMeter struct {
	last    time.Time
	lastCPU time.Duration
}

func newCPUMeter() *cpuMeter { return &cpuMeter{last: time.Now(), lastCPU: cpuTime()} }

func (m *cpuMeter) percent() float64 {
	now, c := time.Now(), cpuTime()
	wall := now.Sub(m.last)
	p := 0.0
	if wall > 0 {
		p = round(100*float64(c-m.lastCPU)/float64(wall), 1)
	}
	m.last, m.lastCPU = now, c
	return p
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rssBytes is the resident set size from /proc/self/statm.
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// temperatureC is the hottest thermal zone the board reports, if any.
func temperatureC() (float64, bool) {
	zones, _ := filepath.Glob("/sys/class/thermal/thermal_zone*/temp")
	best, ok := 0.0, false
	for _, z := range zones {
		b, err := os.ReadFile(z)
		if err != nil {
			continue
		}
		milli, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
		if err != nil {
			continue
		}
		if c := milli / 1000; !ok || c > best {
			best, ok = c, true
		}
	}
	return best, ok
}
