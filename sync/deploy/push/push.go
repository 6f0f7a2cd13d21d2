// Package push is the operator's side of remote model push (`vigil model push`): it
// publishes a signed bundle's chunks and its deployment manifest, retained at QoS 1,
// to one device or a group, waits for each device's final phase on its retained
// models/state, and clears the retained messages again. See package deploy for the
// protocol. Only cmd/vigil imports it.
package push

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"time"

	"github.com/vigil-edge/vigil/sync/deploy"
)

// Options configure one push.
type Options struct {
	Broker   string // tcp://, ssl://, ws://, wss://
	Username string
	Password string
	TLS      *tls.Config // for ssl:// and wss://; nil means the system's roots
	ClientID string      // default: vigil-push-<random>

	TopicPrefix string // default "vigil"
	Device      string // exactly one of Device and Group
	Group       string
	Model       string // config models[].name on the devices; default "default"

	Via       string // deploy.ViaChunks (default) or deploy.ViaURL
	URL       string // with ViaURL: where devices fetch the archive
	ChunkSize int    // default deploy.DefaultChunkSize

	// Rollback sends action "rollback" instead of a bundle.
	Rollback bool
	// Deployment is the deployment id; default: time and random.
	Deployment string
	// Timeout bounds the wait for the devices' final phases (default 10m).
	Timeout time.Duration

	// Progress, when set, is called as chunks are acknowledged by the broker.
	Progress func(sent, total int64)
	// OnState, when set, is called for each state a target device reports for this
	// deployment.
	OnState func(device string, s deploy.State)
	// Now is the clock for "issued" (default time.Now).
	Now func() time.Time
}

// Result is the outcome of a push.
type Result struct {
	Deployment string
	// Success is the phase every device must reach: active, or rolled_back for a
	// rollback.
	Success deploy.Phase
	Devices []DeviceResult // sorted by device
}

// DeviceResult is one device's row in the table.
type DeviceResult struct {
	Device  string
	Phase   deploy.Phase // "" when the device never answered
	Version string
	Reason  string
}

// OK reports whether every device reached the success phase.
func (r *Result) OK() bool { return false }

// WriteTable prints the result as a table: device, phase, version, reason.
func (r *Result) WriteTable(w io.Writer) {}

// Push publishes the bundle in bundleDir (ignored for a rollback) to the target and
// waits for the devices. An error means the push could not be carried out (unsigned
// bundle, broker unreachable, no device in the group); the devices' answers are in
// the Result.
func Push(ctx context.Context, bundleDir string, opts Options) (*Result, error) {
	return nil, errors.New("TODO")
}

// ProgressPrinter returns a Progress func drawing a bar on w when tty is set, or a
// plain line every 10% otherwise.
func ProgressPrinter(w io.Writer, tty bool) func(sent, total int64) { return nil }
