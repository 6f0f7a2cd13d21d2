package config

import "github.com/vigil-edge/vigil/capture/camurl"

// Camera URLs are read by capture/camurl, beside the capture code that opens them. These
// forwarders keep the old names working until their last callers (agent/bench.go,
// agent/status.go) switch; new code calls camurl directly.

// ParseCameraURL reads a camera's url.
//
// Deprecated: use camurl.Parse.
func ParseCameraURL(raw string) (camurl.URL, error) { return camurl.Parse(raw) }

// Redact hides the password in a URL.
//
// Deprecated: use camurl.Redact.
func Redact(raw string) string { return camurl.Redact(raw) }
