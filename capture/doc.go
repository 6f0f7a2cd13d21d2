// Package capture brings frames in. A Source reads one camera (file, pattern, RTSP,
// V4L2 through OpenCV); a Camera supervises one Source, reconnecting with capped
// exponential backoff and jitter, and keeps only the newest frame in its Slot, so the
// detector never works on stale frames and latency never grows with load.
//
// Mat ownership: a Frame owns its Mat. Source.Read hands a new Frame to the caller;
// Slot.Put takes it over and closes any frame it replaces; Slot.Take hands it on; the
// final holder calls Frame.Close.
//
// capture/camurl reads camera URLs into what Open needs (SpecFor); it is pure Go, so
// agent/config checks URLs with it without linking OpenCV.
//
// Only agent/ imports capture.
package capture
