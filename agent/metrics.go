package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vigil-edge/vigil/infer"
)

// metrics is the agent's Prometheus registry. Counters that the rooms already keep
// (camera frames, actuator transitions, outbox depth) are read at scrape time by
// stateCollector, so the leaf rooms need no Prometheus code; what happens in the
// pipeline (latencies, detections, firings) is observed as it happens.
type metrics struct {
	registry     *prometheus.Registry
	inference    *prometheus.HistogramVec
	detectLat    *prometheus.HistogramVec
	actuateLat   *prometheus.HistogramVec
	detections   *prometheus.CounterVec
	detectFrames *prometheus.CounterVec
	firings      *prometheus.CounterVec
}

// Latency buckets from 1 ms to about 4 s.
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 2, 13)

func newMetrics(a *Agent) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		inference: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vigil_inference_seconds", Help: "Time the inference engine takes for one frame.", Buckets: latencyBuckets,
		}, []string{"model"}),
		detectLat: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vigil_detect_latency_seconds", Help: "Time from frame capture to its detections (pre-processing, inference, decoding).", Buckets: latencyBuckets,
		}, []string{"camera"}),
		actuateLat: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "vigil_actuate_latency_seconds", Help: "Time from frame capture to the actuator command of a rule that fired on it.", Buckets: latencyBuckets,
		}, []string{"rule"}),
		detections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_detections_total", Help: "Objects detected, by camera and label.",
		}, []string{"camera", "label"}),
		detectFrames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_detect_frames_total", Help: "Frames that went through detection.",
		}, []string{"camera"}),
		firings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vigil_rule_firings_total", Help: "Times a rule fired.",
		}, []string{"rule"}),
	}
	m.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.inference, m.detectLat, m.actuateLat, m.detections, m.detectFrames, m.firings,
		&stateCollector{a: a},
	)
	return m
}

func (m *metrics) observeDetection(camera, model string, inference, latency time.Duration, dets []infer.Detection) {
	m.inference.WithLabelValues(model).Observe(inference.Seconds())
	m.detectLat.WithLabelValues(camera).Observe(latency.Seconds())
	m.detectFrames.WithLabelValues(camera).Inc()
	for _, d := range dets {
		m.detections.WithLabelValues(camera, d.Label).Inc()
	}
}

func (m *metrics) observeFiring(rule string, latency time.Duration) {
	m.firings.WithLabelValues(rule).Inc()
	m.actuateLat.WithLabelValues(rule).Observe(latency.Seconds())
}

var (
	descBuild         = prometheus.NewDesc("vigil_build_info", "Vigil's version.", []string{"version"}, nil)
	descUp            = prometheus.NewDesc("vigil_uptime_seconds", "Seconds since the agent started.", nil, nil)
	descCamFrames     = prometheus.NewDesc("vigil_camera_frames_total", "Frames captured.", []string{"camera"}, nil)
	descCamDropped    = prometheus.NewDesc("vigil_camera_dropped_frames_total", "Frames replaced by a newer one before detection took them.", []string{"camera"}, nil)
	descCamReconnects = prometheus.NewDesc("vigil_camera_reconnects_total", "Times the camera failed and was reopened.", []string{"camera"}, nil)
	descCamFPS        = prometheus.NewDesc("vigil_camera_fps", "Capture frame rate, smoothed.", []string{"camera"}, nil)
	descDrift         = prometheus.NewDesc("vigil_drift_score", "How far what the camera sees is from its model's baseline: the largest population stability index of its statistics (above drift.threshold it drifts).", []string{"camera"}, nil)
	descCamAge        = prometheus.NewDesc("vigil_camera_last_frame_age_seconds", "Seconds since the last frame.", []string{"camera"}, nil)
	descCamState      = prometheus.NewDesc("vigil_camera_state", "1 for the camera's current state.", []string{"camera", "state"}, nil)
	descActState      = prometheus.NewDesc("vigil_actuator_high", "1 when the actuator is high.", []string{"actuator", "driver"}, nil)
	descActTrans      = prometheus.NewDesc("vigil_actuator_transitions_total", "Level changes of the actuator.", []string{"actuator", "driver"}, nil)
	descModelUp       = prometheus.NewDesc("vigil_model_loaded", "1 when the model is loaded and running.", []string{"model", "bundle", "version", "backend"}, nil)
	descOutDepth      = prometheus.NewDesc("vigil_outbox_depth", "Messages waiting in the outbox.", nil, nil)
	descOutBytes      = prometheus.NewDesc("vigil_outbox_bytes", "Bytes of the messages waiting in the outbox.", nil, nil)
	descOutPending    = prometheus.NewDesc("vigil_outbox_pending", "Messages accepted but not yet committed to disk.", nil, nil)
	descOutDropped    = prometheus.NewDesc("vigil_outbox_dropped_total", "Messages evicted from a full outbox.", nil, nil)
	descOutSeq        = prometheus.NewDesc("vigil_outbox_next_seq", "Sequence number the next message will get.", nil, nil)
	descOutError      = prometheus.NewDesc("vigil_outbox_store_error", "1 while the outbox cannot write to disk.", nil, nil)
	descOutEvicted    = prometheus.NewDesc("vigil_outbox_evicted_telemetry_total", "Telemetry messages evicted to stay within outbox.max_bytes.", nil, nil)
	descOutDisk       = prometheus.NewDesc("vigil_outbox_disk_bytes", "Bytes the outbox uses on disk.", nil, nil)
	descMQTTUp        = prometheus.NewDesc("vigil_mqtt_connected", "1 while the MQTT link is connected.", nil, nil)
	descMQTTState     = prometheus.NewDesc("vigil_mqtt_state", "1 for the MQTT link's current state.", []string{"state"}, nil)
	descMQTTConnects  = prometheus.NewDesc("vigil_mqtt_connects_total", "Successful MQTT connections.", nil, nil)
	descMQTTPub       = prometheus.NewDesc("vigil_mqtt_published_total", "Messages published (republished after a reconnect included).", nil, nil)
	descMQTTAcked     = prometheus.NewDesc("vigil_mqtt_acked_total", "Messages the broker acknowledged and the outbox deleted.", nil, nil)
	descMQTTInflight  = prometheus.NewDesc("vigil_mqtt_inflight", "Messages published and not yet acknowledged.", nil, nil)
	descSamplesSent   = prometheus.NewDesc("vigil_samples_uploaded_total", "Samples for retraining uploaded (samples.upload).", nil, nil)
	descSamplesErrs   = prometheus.NewDesc("vigil_samples_upload_errors_total", "Failed attempts to upload a sample (each retried).", nil, nil)
	descSamplesSkip   = prometheus.NewDesc("vigil_samples_upload_skipped_total", "Samples removed by samples.max_bytes before they could be uploaded.", nil, nil)
	descSamplesPend   = prometheus.NewDesc("vigil_samples_pending", "Samples waiting to be uploaded.", nil, nil)
	mqttStates        = []string{"disabled", "connecting", "connected", "backoff", "stopped"}
	cameraStates      = []string{"connecting", "streaming", "stalled", "backoff", "stopped"}
)

// stateCollector reads the agent's status at scrape time.
type stateCollector struct{ a *Agent }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuild, descUp, descCamFrames, descCamDropped, descCamReconnects, descCamFPS, descCamAge,
		descDrift, descCamState, descActState, descActTrans, descModelUp, descOutDepth, descOutBytes, descOutPending, descOutDropped, descOutSeq, descOutError,
		descOutEvicted, descOutDisk, descMQTTUp, descMQTTState, descMQTTConnects, descMQTTPub, descMQTTAcked, descMQTTInflight,
		descSamplesSent, descSamplesErrs, descSamplesSkip, descSamplesPend} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.a.Status(false)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descBuild, 1, st.Version)
	gauge(descUp, float64(st.UptimeS))
	for _, cam := range st.Cameras {
		counter(descCamFrames, float64(cam.Frames), cam.Name)
		counter(descCamDropped, float64(cam.Dropped), cam.Name)
		counter(descCamReconnects, float64(cam.Reconnects), cam.Name)
		gauge(descCamFPS, cam.FPS, cam.Name)
		gauge(descCamAge, cam.LastFrameAgeS, cam.Name)
		if cam.Drift != nil && cam.Drift.Baseline {
			gauge(descDrift, cam.Drift.Score, cam.Name)
		}
		for _, s := range cameraStates {
			gauge(descCamState, b2f(cam.State == s), cam.Name, s)
		}
	}
	for _, act := range st.Actuators {
		gauge(descActState, b2f(act.State.State == "high"), act.Name, act.Driver)
		counter(descActTrans, float64(act.Transitions), act.Name, act.Driver)
	}
	for _, m := range st.Models {
		gauge(descModelUp, b2f(m.State == "loaded"), m.Name, m.Model, m.Version, m.Backend)
	}
	gauge(descOutDepth, float64(st.Outbox.Depth))
	gauge(descOutBytes, float64(st.Outbox.Bytes))
	gauge(descOutPending, float64(st.Outbox.Pending))
	counter(descOutDropped, float64(st.Outbox.Dropped))
	gauge(descOutSeq, float64(st.Outbox.NextSeq))
	gauge(descOutError, b2f(st.Outbox.LastError != ""))
	counter(descOutEvicted, float64(st.Outbox.Evicted))
	gauge(descOutDisk, float64(st.Outbox.DiskBytes))
	gauge(descMQTTUp, b2f(st.MQTT.State == "connected"))
	for _, s := range mqttStates {
		gauge(descMQTTState, b2f(st.MQTT.State == s), s)
	}
	counter(descMQTTConnects, float64(st.MQTT.Connects))
	counter(descMQTTPub, float64(st.MQTT.Published))
	counter(descMQTTAcked, float64(st.MQTT.Acked))
	gauge(descMQTTInflight, float64(st.MQTT.InFlight))
	counter(descSamplesSent, float64(st.Samples.Uploaded))
	counter(descSamplesErrs, float64(st.Samples.Failed))
	counter(descSamplesSkip, float64(st.Samples.Skipped))
	gauge(descSamplesPend, float64(st.Samples.Pending))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
