package agent

import "time"

// What a tool outside the agent (`vigil bench`) reads to measure a camera's pipeline
// while the agent runs. Status has the same figures, but assembles the whole agent's
// (outbox, samples, rules, drift) on every call; these read one camera's counters and
// nothing else, so polling them does not slow the pipeline being measured. Each call
// takes its own snapshot of the parts: a camera that a reload replaces starts from zero.

// CameraCounters are a camera's running totals since it started. A measurement reads
// them as its window opens and as it closes and takes the difference.
type CameraCounters struct {
	// Captured frames were read from the source.
	Captured uint64
	// Dropped frames were replaced in the latest-frame slot before the detect loop took
	// them; Skipped ones were taken but left out to keep to detect_fps.
	Dropped uint64
	Skipped uint64
	// Detected frames went through the model.
	Detected uint64
}

// CameraCounters returns the counters of the camera named; false when the agent has no
// camera of that name.
func (a *Agent) CameraCounters(name string) (CameraCounters, bool) {
	cam := a.parts().camera(name)
	if cam == nil {
		return CameraCounters{}, false
	}
	st := cam.stats.status()
	return CameraCounters{
		Captured: cam.cap.Status().Frames, Dropped: cam.cap.Slot().Dropped(),
		Skipped: st.Skipped, Detected: st.Frames,
	}, true
}

// DetectLatencies appends to out the capture-to-detection time of each of the named
// camera's detections after the first since, oldest first, and returns it with the
// number of detections so far: the since of the next call. Only the newest 256 are
// kept, so a caller that lets more pass between two calls misses the older ones;
// polling every 50 ms keeps up with 5000 detections a second. For a camera the agent
// does not have, out and since come back unchanged.
func (a *Agent) DetectLatencies(name string, since uint64, out []time.Duration) ([]time.Duration, uint64) {
	cam := a.parts().camera(name)
	if cam == nil {
		return out, since
	}
	return cam.stats.collect(since, out)
}

// collect appends to out the capture-to-detection latencies of the detections after the
// first since, and returns it with how many detections there are now. Detections that
// have already left the ring (statsWindow) are missed.
func (s *detectStats) collect(since uint64, out []time.Duration) ([]time.Duration, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latency.Since(since, out), s.frames
}
