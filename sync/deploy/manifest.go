package deploy

import (
	"errors"
	"time"
)

// Actions a manifest may carry.
const (
	ActionDeploy   = "deploy"
	ActionRollback = "rollback"
)

// Transfer kinds (Manifest.Transfer.Via).
const (
	ViaChunks = "chunks"
	ViaURL    = "url"
)

// DefaultChunkSize is the chunk size `vigil model push` uses unless told otherwise.
const DefaultChunkSize = 256 << 10

// MaxChunkSize bounds Manifest.Transfer.ChunkSize: one chunk is one MQTT message held
// in memory by the broker and the device.
const MaxChunkSize = 16 << 20

// Limits bound what a device accepts. The zero value means the defaults.
type Limits struct {
	// MaxBytes bounds a bundle archive's size and the total bytes of the files
	// unpacked from it (default DefaultMaxBytes).
	MaxBytes int64
	// MaxFiles bounds the entries (files and directories) of an archive (default
	// DefaultMaxFiles).
	MaxFiles int
}

// Default limits.
const (
	DefaultMaxBytes = 512 << 20
	DefaultMaxFiles = 1000
)

// Manifest is a deployment manifest, as published on <base>/deploy.
type Manifest struct {
	// Deployment is the deployment id: [A-Za-z0-9][A-Za-z0-9._-]{0,63}.
	Deployment string `json:"deployment"`
	// Action is ActionDeploy or ActionRollback.
	Action string `json:"action"`
	// Model is the name (config models[].name) of the model this bundle replaces.
	Model string `json:"model"`
	// Issued is when the operator issued the deployment (RFC 3339 with nanoseconds).
	Issued time.Time `json:"issued"`

	// The rest is set for ActionDeploy only.

	// Bundle is the bundle's name and version from its model.yaml.
	Bundle *BundleRef `json:"bundle,omitempty"`
	// Size and SHA256 (lowercase hex) describe the archive (Pack).
	Size   int64  `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	// Key is the signer's Ed25519 public key and Signature the signature over
	// Message(SHA256), both base64 (standard encoding).
	Key       string        `json:"key,omitempty"`
	Signature string        `json:"signature,omitempty"`
	Transfer  *TransferSpec `json:"transfer,omitempty"`
}

// BundleRef names a bundle (model.yaml name and version).
type BundleRef struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// TransferSpec says how the archive travels: in Chunks chunks of ChunkSize bytes
// (the last one shorter) on <base>/chunks/<deployment>/<i>, or from URL.
type TransferSpec struct {
	Via       string `json:"via"`
	Chunks    int    `json:"chunks,omitempty"`
	ChunkSize int    `json:"chunk_size,omitempty"`
	URL       string `json:"url,omitempty"`
}

// ParseManifest decodes a manifest strictly: unknown fields, missing fields, a bad
// deployment id or model name, a size over lim.MaxBytes, a chunk count that does not
// match size and chunk size, bad hex or base64 are errors naming the field.
func ParseManifest(data []byte, lim Limits) (*Manifest, error) {
	return nil, errors.New("TODO")
}

// Marshal encodes the manifest as published.
func (m *Manifest) Marshal() ([]byte, error) { return nil, errors.New("TODO") }

// ChunkLen is the length of chunk i of a chunked transfer (ChunkSize, or less for the
// last chunk), or -1 when i is out of range.
func (m *Manifest) ChunkLen(i int) int { return -1 }

// Phases a device reports in State.Phase.
type Phase string

// The phases, in order; the last three are final.
const (
	PhaseReceived    Phase = "received"
	PhaseDownloading Phase = "downloading"
	PhaseVerifying   Phase = "verifying"
	PhaseStaging     Phase = "staging"
	PhaseWarming     Phase = "warming"
	PhaseActive      Phase = "active"
	PhaseRejected    Phase = "rejected"
	PhaseRolledBack  Phase = "rolled_back"
)

// Final reports whether a device is done with a deployment in this phase.
func (p Phase) Final() bool { return false }

// State is the retained <prefix>/<device>/models/state.
type State struct {
	Deployment string `json:"deployment"`
	Model      string `json:"model"`
	Version    string `json:"version,omitempty"`
	Phase      Phase  `json:"phase"`
	// Error is why a deployment was rejected or rolled back.
	Error string `json:"error,omitempty"`
	// Progress is the fraction of the archive received, 0..1.
	Progress float64 `json:"progress"`
}

// Target is where a deployment is published: one device or a group (exactly one set).
type Target struct {
	Device string
	Group  string
}

// Base is the topic under which the target's deploy and chunk topics live:
// <prefix>/<device>/models or <prefix>/group/<group>/models.
func (t Target) Base(prefix string) string { return "" }

// DeployTopic is <base>/deploy.
func (t Target) DeployTopic(prefix string) string { return "" }

// ChunkTopic is <base>/chunks/<deployment>/<i>.
func (t Target) ChunkTopic(prefix, deployment string, i int) string { return "" }

// ChunkFilter is <base>/chunks/<deployment>/+, what a device subscribes to.
func (t Target) ChunkFilter(prefix, deployment string) string { return "" }

// TargetOf returns the target whose deploy topic is topic (the topic a manifest
// arrived on), so a device knows where that deployment's chunks are.
func TargetOf(prefix, topic string) (Target, error) { return Target{}, errors.New("TODO") }

// ParseChunkTopic returns the deployment id and the chunk index of a chunk topic.
func ParseChunkTopic(topic string) (deployment string, index int, err error) {
	return "", 0, errors.New("TODO")
}

// StateTopic is <prefix>/<device>/models/state.
func StateTopic(prefix, device string) string { return "" }

// StatusTopic is <prefix>/<device>/status, the agent's retained status.
func StatusTopic(prefix, device string) string { return "" }
