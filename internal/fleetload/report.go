package fleetload

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/vigil-edge/vigil/internal/window"
)

// Report is what one fleet load run measured.
type Report struct {
	Devices   int    `json:"devices"`
	GoMaxProc int    `json:"gomaxprocs"`
	Bundle    Bundle `json:"bundle"`
	Telemetry string `json:"telemetry_interval"`

	// Start: New for every agent (sequential), then Run; online when every device's
	// retained status said so.
	StartS  float64 `json:"start_s"`
	OnlineS float64 `json:"online_s"`

	Push Push `json:"push"`
	// FleetStatus is `vigil fleet status --group` (sync/fleet.Snapshot) right after the
	// push: how long one look at the whole group takes, and what it shows.
	FleetStatus FleetStatus `json:"fleet_status"`

	// Steady is a window without a push: telemetry and rule events only.
	Steady Traffic `json:"steady"`
	// During is the push, from its start until every device's final phase.
	During Traffic `json:"during_push"`

	Memory Memory `json:"memory"`
	Seq    Seq    `json:"seq"`
}

// Bundle is what was pushed.
type Bundle struct {
	Bytes     int64 `json:"bytes"`
	Chunks    int   `json:"chunks"`
	ChunkSize int   `json:"chunk_size"`
}

// Push is the group push's outcome.
type Push struct {
	Deployment string `json:"deployment"`
	// Canary and Wave are the staged rollout's options ("": one group push); Waves how
	// many waves it made.
	Canary   string            `json:"canary,omitempty"`
	Wave     string            `json:"wave,omitempty"`
	Waves    int               `json:"waves,omitempty"`
	TookS    float64           `json:"took_s"` // push.Push called until it returned
	Active   int               `json:"active"`
	Rejected map[string]string `json:"rejected,omitempty"` // device -> reason (also rolled back, no answer)
	// Time from the push's start until a device reported active: quantiles.
	ActiveP50S float64 `json:"active_p50_s"`
	ActiveP90S float64 `json:"active_p90_s"`
	ActiveMaxS float64 `json:"active_max_s"`
	// The same by the devices' own deployment events (when each recorded the phase),
	// which does not depend on how fast the push tool reads the states.
	DeviceActiveP50S float64 `json:"device_active_p50_s"`
	DeviceActiveP90S float64 `json:"device_active_p90_s"`
	DeviceActiveMaxS float64 `json:"device_active_max_s"`
	// Phases: p50 and max seconds from the push's start until devices recorded each
	// phase (received, downloading, verifying, staging, warming, active).
	Phases map[string][2]float64 `json:"phases_p50_max_s"`
}

// FleetStatus is one snapshot of the group's retained statuses.
type FleetStatus struct {
	Seconds float64 `json:"seconds"`
	Devices int     `json:"devices"` // listed
	Online  int     `json:"online"`
	Active  int     `json:"active"` // showing the push's deployment active
}

// Traffic is the broker's and the process's load over a window.
type Traffic struct {
	Seconds float64 `json:"seconds"`
	// From mosquitto's $SYS counters: all MQTT messages in and out (PUBLISH and
	// acknowledgements), PUBLISH messages in and out, bytes.
	MsgsInPerS     float64 `json:"msgs_in_per_s"`
	MsgsOutPerS    float64 `json:"msgs_out_per_s"`
	PublishInPerS  float64 `json:"publish_in_per_s"`
	PublishOutPerS float64 `json:"publish_out_per_s"`
	BytesInPerS    float64 `json:"bytes_in_per_s"`
	BytesOutPerS   float64 `json:"bytes_out_per_s"`
	// Counted by the test's subscriber: distinct telemetry and event envelopes.
	EnvelopesPerS float64 `json:"envelopes_per_s"`
	// CPU in cores (the machine has GoMaxProc): the agents' process, and mosquitto.
	AgentsCores float64 `json:"agents_cores"`
	BrokerCores float64 `json:"broker_cores"`
}

// Memory per simulated device: the increase from before the first agent to all
// running, divided by the devices.
type Memory struct {
	HeapPerDeviceB    int64   `json:"heap_per_device_bytes"` // Go heap in use after a GC
	RSSPerDeviceB     int64   `json:"rss_per_device_bytes"`  // the process's resident set (Go + ONNX Runtime + OpenCV)
	GoroutinesPerDev  float64 `json:"goroutines_per_device"`
	FDsPerDevice      float64 `json:"fds_per_device"`
	BrokerRSSB        int64   `json:"broker_rss_bytes"`
	BrokerRetained    float64 `json:"broker_retained_messages"`
	BrokerConnections float64 `json:"broker_clients_connected"`
}

// Seq is the accounting of every device's telemetry and events.
type Seq struct {
	Enqueued   uint64         `json:"enqueued"`  // sum of the devices' last seqs
	Delivered  int            `json:"delivered"` // arrived at the subscriber
	Queued     int            `json:"queued"`    // still in an outbox after the stop (not lost)
	Lost       int            `json:"lost"`      // neither
	Duplicates int            `json:"duplicates"`
	Malformed  int            `json:"malformed"`
	Kinds      map[string]int `json:"kinds"`
	LostOn     []Account      `json:"lost_on,omitempty"` // the first devices with gaps
	// Delivery latency (enqueued on the device until it reached the subscriber).
	LatencyP50S float64 `json:"latency_p50_s"`
	LatencyP99S float64 `json:"latency_p99_s"`
	LatencyMaxS float64 `json:"latency_max_s"`
}

// Quantile is the q-quantile (0..1) of ds (internal/window's), in seconds; 0 for none.
func Quantile(ds []time.Duration, q float64) float64 {
	return window.Quantile(ds, q).Seconds()
}

// WriteText prints the report for people.
func (r *Report) WriteText(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("fleet load: %d devices in one process (GOMAXPROCS %d), one mosquitto, telemetry every %s", r.Devices, r.GoMaxProc, r.Telemetry)
	p("  start:   %.1fs to create and start every agent, %.1fs until every device was online", r.StartS, r.OnlineS)
	p("  push:    %d-byte bundle in %d chunks of %d bytes to group of %d: %d active in %.1fs (per device p50 %.1fs, p90 %.1fs, max %.1fs)",
		r.Bundle.Bytes, r.Bundle.Chunks, r.Bundle.ChunkSize, r.Devices, r.Push.Active, r.Push.TookS, r.Push.ActiveP50S, r.Push.ActiveP90S, r.Push.ActiveMaxS)
	if r.Push.Canary != "" {
		p("           staged: --canary %s --wave %s, %d waves", r.Push.Canary, cmp.Or(r.Push.Wave, "(the rest)"), r.Push.Waves)
	}
	p("           by the devices' events: active p50 %.1fs, p90 %.1fs, max %.1fs", r.Push.DeviceActiveP50S, r.Push.DeviceActiveP90S, r.Push.DeviceActiveMaxS)
	for _, ph := range []string{"received", "downloading", "verifying", "staging", "warming", "active"} {
		if v, ok := r.Push.Phases[ph]; ok {
			p("           %-12s p50 %6.1fs  max %6.1fs", ph, v[0], v[1])
		}
	}
	devs := make([]string, 0, len(r.Push.Rejected))
	for d := range r.Push.Rejected {
		devs = append(devs, d)
	}
	slices.Sort(devs)
	for i, d := range devs {
		if i == 20 {
			p("           ... and %d more", len(devs)-20)
			break
		}
		p("           %s: %s", d, r.Push.Rejected[d])
	}
	f := r.FleetStatus
	p("  fleet status: %d devices listed in %.2fs, %d online, %d showing the push active", f.Devices, f.Seconds, f.Online, f.Active)
	for _, t := range []struct {
		name string
		tr   Traffic
	}{{"steady", r.Steady}, {"push", r.During}} {
		if t.tr.Seconds == 0 {
			continue
		}
		p("  broker (%s, %.0fs): %.0f msgs/s in, %.0f out (PUBLISH %.0f in, %.0f out); %.0f KB/s in, %.0f KB/s out; %.0f envelopes/s at the subscriber",
			t.name, t.tr.Seconds, t.tr.MsgsInPerS, t.tr.MsgsOutPerS, t.tr.PublishInPerS, t.tr.PublishOutPerS, t.tr.BytesInPerS/1e3, t.tr.BytesOutPerS/1e3, t.tr.EnvelopesPerS)
		p("  cpu (%s): agents %.2f cores, mosquitto %.2f cores (of %d)", t.name, t.tr.AgentsCores, t.tr.BrokerCores, r.GoMaxProc)
	}
	m := r.Memory
	p("  memory:  %.0f KB Go heap and %.0f KB RSS per device; %.1f goroutines and %.1f fds per device",
		float64(m.HeapPerDeviceB)/1e3, float64(m.RSSPerDeviceB)/1e3, m.GoroutinesPerDev, m.FDsPerDevice)
	p("  broker:  %.1f MB RSS, %.0f clients, %.0f retained messages", float64(m.BrokerRSSB)/1e6, m.BrokerConnections, m.BrokerRetained)
	s := r.Seq
	p("  seq:     %d enqueued, %d delivered, %d still queued on disk, %d lost; %d duplicates, %d malformed; by kind %v",
		s.Enqueued, s.Delivered, s.Queued, s.Lost, s.Duplicates, s.Malformed, s.Kinds)
	p("           delivery latency p50 %.2fs, p99 %.2fs, max %.2fs", s.LatencyP50S, s.LatencyP99S, s.LatencyMaxS)
	for _, a := range s.LostOn {
		p("           %s: missing %v (last %d)", a.Device, a.Missing[:min(len(a.Missing), 10)], a.Last)
	}
}
