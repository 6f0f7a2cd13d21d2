package deploy

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Actions a manifest may carry.
const (
	ActionDeploy   = "deploy"
	ActionRollback = "rollback"
	// ActionShadow delivers a bundle as ActionDeploy does, but the device runs it in
	// shadow beside the model instead of swapping it in, and reports how the two agree;
	// ActionPromote swaps that candidate in, ActionDiscard drops it.
	ActionShadow  = "shadow"
	ActionPromote = "promote"
	ActionDiscard = "discard"
)

// CarriesBundle reports whether the manifest's action delivers a bundle (deploy and
// shadow); the others act on bundles the device already has.
func (m *Manifest) CarriesBundle() bool {
	return m.Action == ActionDeploy || m.Action == ActionShadow
}

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

// MaxChunks bounds Manifest.Transfer.Chunks: a device keeps one flag per chunk, and
// a broker holds each as a retained message.
const MaxChunks = 1 << 16

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
	// Action is one of the Action constants.
	Action string `json:"action"`
	// Model is the name (config models[].name) of the model this bundle replaces.
	Model string `json:"model"`
	// Issued is when the operator issued the deployment (RFC 3339 with nanoseconds).
	Issued time.Time `json:"issued"`

	// The rest is set for the actions that carry a bundle (CarriesBundle) only.

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
	if len(bytes.TrimSpace(data)) == 0 {
		// What the operator's tool publishes to clear the retained manifest.
		return nil, ErrEmptyManifest
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("deployment manifest: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("deployment manifest: data after the JSON object")
	}
	if err := m.Validate(lim); err != nil {
		return nil, err
	}
	return &m, nil
}

// ErrEmptyManifest is ParseManifest's error for an empty payload: the operator's tool
// clearing a retained manifest, which a device ignores.
var ErrEmptyManifest = errors.New("deployment manifest: empty payload (a cleared retained message)")

// Names and ids that become topic levels and directory names.
var (
	// idRE is a deployment id; the first character keeps "." and ".." out, since the
	// id is also a directory name.
	idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	// nameRE is a config model name (agent/config uses the same rule).
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
	// versionRE is a bundle version; it becomes part of a directory name.
	versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)
	hexRE     = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ValidDeploymentID reports whether id may be a deployment id.
func ValidDeploymentID(id string) bool { return idRE.MatchString(id) }

// ValidVersion reports whether v may be a bundle version in a manifest (it becomes
// part of a directory name on the device).
func ValidVersion(v string) bool { return versionRE.MatchString(v) }

// Validate checks the manifest as ParseManifest does; errors name the field.
func (m *Manifest) Validate(lim Limits) error {
	lim = lim.withDefaults()
	var errs []string
	bad := func(field, format string, args ...any) {
		errs = append(errs, field+": "+fmt.Sprintf(format, args...))
	}
	switch {
	case m.Deployment == "":
		bad("deployment", "missing")
	case !idRE.MatchString(m.Deployment):
		bad("deployment", "%q is not a deployment id (1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)", m.Deployment)
	}
	switch {
	case m.Model == "":
		bad("model", "missing")
	case !nameRE.MatchString(m.Model):
		bad("model", "%q is not a model name (1 to 63 of A-Z a-z 0-9 . _ -, starting with a letter or digit)", m.Model)
	}
	if m.Issued.IsZero() {
		bad("issued", "missing")
	}
	switch m.Action {
	case ActionDeploy, ActionShadow:
		m.validateDeploy(lim, bad)
	case ActionRollback, ActionPromote, ActionDiscard:
		// These name no bundle: anything more is a mistake, not something to ignore.
		for field, set := range map[string]bool{
			"bundle": m.Bundle != nil, "size": m.Size != 0, "sha256": m.SHA256 != "",
			"key": m.Key != "", "signature": m.Signature != "", "transfer": m.Transfer != nil,
		} {
			if set {
				bad(field, "not allowed with action %q", m.Action)
			}
		}
	case "":
		bad("action", "missing")
	default:
		bad("action", "%q is not one of %q, %q, %q, %q, %q", m.Action, ActionDeploy, ActionRollback, ActionShadow, ActionPromote, ActionDiscard)
	}
	if len(errs) == 0 {
		return nil
	}
	slices.Sort(errs)
	return fmt.Errorf("deployment manifest: %s", strings.Join(errs, "; "))
}

func (m *Manifest) validateDeploy(lim Limits, bad func(field, format string, args ...any)) {
	if m.Bundle == nil {
		bad("bundle", "missing")
	} else {
		switch {
		case m.Bundle.Name == "":
			bad("bundle.name", "missing")
		case len(m.Bundle.Name) > 128 || strings.IndexFunc(m.Bundle.Name, unicode.IsControl) >= 0:
			bad("bundle.name", "%q is longer than 128 bytes or has control characters", m.Bundle.Name)
		}
		switch {
		case m.Bundle.Version == "":
			bad("bundle.version", "missing")
		case !versionRE.MatchString(m.Bundle.Version):
			bad("bundle.version", "%q is not a version (1 to 64 of A-Z a-z 0-9 . _ + -, starting with a letter or digit)", m.Bundle.Version)
		}
	}
	switch {
	case m.Size == 0:
		bad("size", "missing")
	case m.Size < 0:
		bad("size", "%d is negative", m.Size)
	case m.Size > lim.MaxBytes:
		bad("size", "%d bytes is over the limit of %d bytes", m.Size, lim.MaxBytes)
	}
	switch {
	case m.SHA256 == "":
		bad("sha256", "missing")
	case !hexRE.MatchString(m.SHA256):
		bad("sha256", "%q is not 64 lowercase hex digits", m.SHA256)
	}
	if m.Key == "" {
		bad("key", "missing")
	} else if _, err := decodeKey(m.Key); err != nil {
		bad("key", "%v", err)
	}
	if m.Signature == "" {
		bad("signature", "missing")
	} else if b, err := base64.StdEncoding.DecodeString(m.Signature); err != nil || len(b) != ed25519SignatureSize {
		bad("signature", "not a base64 Ed25519 signature (%d bytes)", ed25519SignatureSize)
	}
	t := m.Transfer
	if t == nil {
		bad("transfer", "missing")
		return
	}
	switch t.Via {
	case ViaChunks:
		if t.URL != "" {
			bad("transfer.url", "not allowed with via %q", ViaChunks)
		}
		switch {
		case t.ChunkSize <= 0:
			bad("transfer.chunk_size", "missing or not positive")
		case t.ChunkSize > MaxChunkSize:
			bad("transfer.chunk_size", "%d is over the limit of %d bytes", t.ChunkSize, MaxChunkSize)
		case m.Size > 0 && m.Size <= lim.MaxBytes:
			want := (m.Size + int64(t.ChunkSize) - 1) / int64(t.ChunkSize)
			if want > MaxChunks {
				bad("transfer.chunk_size", "%d makes %d chunks, over the limit of %d; use larger chunks", t.ChunkSize, want, MaxChunks)
			} else if int64(t.Chunks) != want {
				bad("transfer.chunks", "%d does not fit size %d and chunk_size %d (want %d)", t.Chunks, m.Size, t.ChunkSize, want)
			}
		}
	case ViaURL:
		if t.Chunks != 0 || t.ChunkSize != 0 {
			bad("transfer", "chunks and chunk_size are not allowed with via %q", ViaURL)
		}
		u, err := url.Parse(t.URL)
		switch {
		case t.URL == "":
			bad("transfer.url", "missing")
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			bad("transfer.url", "%q is not an http:// or https:// URL", t.URL)
		}
	case "":
		bad("transfer.via", "missing")
	default:
		bad("transfer.via", "%q is not one of %q, %q", t.Via, ViaChunks, ViaURL)
	}
}

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxFiles <= 0 {
		l.MaxFiles = DefaultMaxFiles
	}
	return l
}

// Marshal encodes the manifest as published.
func (m *Manifest) Marshal() ([]byte, error) { return json.Marshal(m) }

// ChunkLen is the length of chunk i of a chunked transfer (ChunkSize, or less for the
// last chunk), or -1 when i is out of range or the manifest has no chunks.
func (m *Manifest) ChunkLen(i int) int {
	t := m.Transfer
	if t == nil || t.Via != ViaChunks || t.ChunkSize <= 0 || i < 0 || i >= t.Chunks {
		return -1
	}
	if i < t.Chunks-1 {
		return t.ChunkSize
	}
	return int(m.Size - int64(t.Chunks-1)*int64(t.ChunkSize))
}

// Phases a device reports in State.Phase.
type Phase string

// The phases, in order; the last ones, from active, are final.
const (
	PhaseReceived    Phase = "received"
	PhaseDownloading Phase = "downloading"
	PhaseVerifying   Phase = "verifying"
	PhaseStaging     Phase = "staging"
	PhaseWarming     Phase = "warming"
	PhaseActive      Phase = "active"
	PhaseRejected    Phase = "rejected"
	PhaseRolledBack  Phase = "rolled_back"
	// PhaseShadowing ends a shadow deployment: the candidate runs beside the model.
	PhaseShadowing Phase = "shadowing"
	// PhaseDiscarded ends a discard: the candidate no longer runs.
	PhaseDiscarded Phase = "discarded"
)

// Final reports whether a device is done with a deployment in this phase.
func (p Phase) Final() bool {
	switch p {
	case PhaseActive, PhaseRejected, PhaseRolledBack, PhaseShadowing, PhaseDiscarded:
		return true
	}
	return false
}

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
func (t Target) Base(prefix string) string {
	if t.Group != "" {
		return prefix + "/group/" + t.Group + "/models"
	}
	return prefix + "/" + t.Device + "/models"
}

// DeployTopic is <base>/deploy.
func (t Target) DeployTopic(prefix string) string { return t.Base(prefix) + "/deploy" }

// ChunkTopic is <base>/chunks/<deployment>/<i>.
func (t Target) ChunkTopic(prefix, deployment string, i int) string {
	return t.Base(prefix) + "/chunks/" + deployment + "/" + strconv.Itoa(i)
}

// ChunkFilter is <base>/chunks/<deployment>/+, what a device subscribes to.
func (t Target) ChunkFilter(prefix, deployment string) string {
	return t.Base(prefix) + "/chunks/" + deployment + "/+"
}

// String is "device X" or "group X".
func (t Target) String() string {
	if t.Group != "" {
		return "group " + t.Group
	}
	return "device " + t.Device
}

// TargetOf returns the target whose deploy topic is topic (the topic a manifest
// arrived on), so a device knows where that deployment's chunks are.
func TargetOf(prefix, topic string) (Target, error) {
	rest, ok := strings.CutPrefix(topic, prefix+"/")
	if ok {
		if rest, ok = strings.CutSuffix(rest, "/models/deploy"); ok {
			levels := strings.Split(rest, "/")
			switch {
			case len(levels) == 1 && levels[0] != "":
				return Target{Device: levels[0]}, nil
			case len(levels) == 2 && levels[0] == "group" && levels[1] != "":
				return Target{Group: levels[1]}, nil
			}
		}
	}
	return Target{}, fmt.Errorf("topic %q is not %s/<device>/models/deploy or %s/group/<group>/models/deploy", topic, prefix, prefix)
}

// ParseChunkTopic returns the deployment id and the chunk index of a chunk topic
// (.../models/chunks/<deployment>/<i>).
func ParseChunkTopic(topic string) (deployment string, index int, err error) {
	levels := strings.Split(topic, "/")
	n := len(levels)
	if n < 4 || levels[n-4] != "models" || levels[n-3] != "chunks" {
		return "", 0, fmt.Errorf("topic %q is not .../models/chunks/<deployment>/<index>", topic)
	}
	deployment, idx := levels[n-2], levels[n-1]
	if !idRE.MatchString(deployment) {
		return "", 0, fmt.Errorf("topic %q: %q is not a deployment id", topic, deployment)
	}
	// Digits only, no sign or leading zero: one index has one topic.
	if idx == "" || len(idx) > 9 || strings.Trim(idx, "0123456789") != "" || (len(idx) > 1 && idx[0] == '0') {
		return "", 0, fmt.Errorf("topic %q: %q is not a chunk index", topic, idx)
	}
	index, _ = strconv.Atoi(idx)
	return deployment, index, nil
}

// StateTopic is <prefix>/<device>/models/state.
func StateTopic(prefix, device string) string { return prefix + "/" + device + "/models/state" }

// StatusTopic is <prefix>/<device>/status, the agent's retained status.
func StatusTopic(prefix, device string) string { return prefix + "/" + device + "/status" }
