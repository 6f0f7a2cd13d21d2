package web

import (
	"github.com/vigil-edge/vigil/agent/rules"
	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/hal"
	"github.com/vigil-edge/vigil/hal/sim"
	"github.com/vigil-edge/vigil/infer/drift"
	"github.com/vigil-edge/vigil/infer/shadow"
	"github.com/vigil-edge/vigil/sync/deploy"
	"github.com/vigil-edge/vigil/sync/mqttlink"
	"github.com/vigil-edge/vigil/sync/outbox"
	"github.com/vigil-edge/vigil/sync/upload"
)

// The JSON shapes of the API. They are a contract (docs/http-api.md): tools read them.
// Fields are added, never renamed.

// Status is /api/status. Its shape is a contract (DESIGN.md, HTTP): tools read it.
// Fields are added, never renamed.
type Status struct {
	Device    string           `json:"device"`
	Version   string           `json:"version"`
	UptimeS   int64            `json:"uptime_s"`
	Ready     bool             `json:"ready"`
	Cameras   []CameraStatus   `json:"cameras"`
	Models    []ModelStatus    `json:"models"`
	Actuators []ActuatorStatus `json:"actuators"`
	Rules     []RuleStatus     `json:"rules"`
	Inputs    []hal.InputState `json:"inputs"`
	// Reload is the last config reload's result (nil until one happens).
	Reload *ReloadResult `json:"reload,omitempty"`
	// Deployment is the last model deployment's state (nil until one arrives).
	Deployment *deploy.State     `json:"deployment,omitempty"`
	Outbox     OutboxStatus      `json:"outbox"`
	Samples    SamplesStatus     `json:"samples"`
	MQTT       mqttlink.State    `json:"mqtt"`
	Events     []outbox.Envelope `json:"events"`
}

// CameraStatus is one camera: capture state and counters, and its detection figures.
type CameraStatus struct {
	capture.Status
	URL    string       `json:"url"` // password redacted
	Model  string       `json:"model"`
	Detect DetectStatus `json:"detect"`
	// Drift is how far what the camera sees is from its model's baseline (nil when off).
	Drift *drift.Status `json:"drift,omitempty"`
}

// ModelStatus is one configured model.
type ModelStatus struct {
	Name    string `json:"name"`
	Model   string `json:"model"`
	Version string `json:"version"`
	Backend string `json:"backend"`
	Input   string `json:"input,omitempty"`
	State   string `json:"state"` // loaded | failed
	// Shadow is the candidate model run beside it (models[].shadow), and how they agree.
	Shadow *shadow.Status `json:"shadow,omitempty"`
	// Deployment is the push that installed the running bundle ("" for the configured one).
	Deployment string `json:"deployment,omitempty"`
	Error      string `json:"error,omitempty"`
}

// ActuatorStatus is one actuator, with its recent transitions when simulated.
type ActuatorStatus struct {
	hal.State
	History []sim.Transition `json:"history,omitempty"`
}

// RuleStatus is one rule: whether it holds or latches its actuator, how often it fired
// and how long from the frame's capture to its actuator command.
type RuleStatus struct {
	rules.Status
	Firings    uint64  `json:"firings"`
	ActuateP50 float64 `json:"actuate_ms_p50"`
	ActuateP99 float64 `json:"actuate_ms_p99"`
	LastMS     float64 `json:"actuate_ms_last"`
	// AddedP50/P99: what the rule and the actuator command add after the frame's
	// detections are ready (the actuate latency minus the same frame's detect latency).
	AddedP50 float64 `json:"added_ms_p50"`
	AddedP99 float64 `json:"added_ms_p99"`
}

// OutboxStatus is the durable queue.
type OutboxStatus struct {
	Depth   int    `json:"depth"`
	Bytes   int64  `json:"bytes"`
	Dropped uint64 `json:"dropped"`
	Pending int    `json:"pending"`
	NextSeq uint64 `json:"next_seq"`
	// Evicted counts telemetry removed to stay within outbox.max_bytes; Dropped the
	// events (only when events alone fill the budget).
	Evicted   uint64 `json:"evicted_telemetry"`
	DiskBytes int64  `json:"disk_bytes"`
	LastError string `json:"last_error,omitempty"`
}

// DetectStatus is the detection part of a camera's status.
type DetectStatus struct {
	Frames       uint64  `json:"frames"`
	Skipped      uint64  `json:"skipped"` // left out to keep to detect_fps
	FPS          float64 `json:"fps"`
	InferenceP50 float64 `json:"inference_ms_p50"`
	InferenceP99 float64 `json:"inference_ms_p99"`
	LatencyP50   float64 `json:"latency_ms_p50"`
	LatencyP99   float64 `json:"latency_ms_p99"`
	LastError    string  `json:"last_error,omitempty"`
}

// SamplesStatus is what /api/status shows of the samples kept for retraining.
type SamplesStatus struct {
	Stored int    `json:"stored"` // samples on disk
	Bytes  int64  `json:"bytes"`  // their bytes, sidecars included
	Upload string `json:"upload"` // samples.upload.via: off | http | mqtt
	upload.Stats
}

// ReloadResult says what a reload did.
type ReloadResult struct {
	At string `json:"at"`
	OK bool   `json:"ok"`
	// Errors are why the new config was refused (the old one keeps running).
	Errors []string `json:"errors,omitempty"`
	// Changed lists what was started again, added or removed ("camera door", ...).
	Changed []string `json:"changed,omitempty"`
	// AtRestart lists settings that changed but apply only when the agent restarts.
	AtRestart []string `json:"at_restart,omitempty"`
}
