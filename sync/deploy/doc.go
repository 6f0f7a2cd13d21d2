// Package deploy is the pure-Go half of remote model push: the deployment manifest,
// the topics, the device's reported State, bundle archives and their Ed25519
// signatures, chunk assembly with on-disk resume, and the store of installed bundles
// on a device. It imports only the standard library (never paho, gocv or a runtime).
// The agent (subscribing, phases, warm-up, swap), sync/deploy/push (the operator's
// side, with paho), sync/fleet (reading devices' State) and cmd/vigil (model sign,
// pack and keygen) import it.
//
// # Signing
//
// An operator signs a bundle directory offline (`vigil model sign`): the directory is
// packed into a deterministic, uncompressed tar (Pack: entries sorted by path, mtime 0,
// uid/gid 0, modes 0644/0755, no user or group names, USTAR, regular files and
// directories only, the top-level signature.json left out), so the same directory
// gives the same bytes on any machine and Go version (GNU tar can make them too; see
// Pack). signature.json holds the archive's SHA-256 and size, the signer's public key
// and an Ed25519 signature over Message(sha256), that is "vigil-bundle-v1\n" followed
// by the lowercase hex SHA-256. A device accepts a bundle only when that key is one
// of its trust.keys and the signature verifies (Verify).
//
// The signature covers the bundle, not the manifest: whoever may publish on the
// deploy topics can replay a signed bundle under a new deployment id, or ask for a
// rollback (which carries no signature). Broker ACLs decide who may publish there.
//
// # Topics
//
// `vigil model push` publishes, all retained at QoS 1, under a base topic that is
// either <prefix>/<device>/models or <prefix>/group/<group>/models (Target):
//
//	<base>/chunks/<deployment>/<i>   chunk i (0-based) of the archive, raw bytes
//	<base>/deploy                    the Manifest (JSON), published after the chunks
//
// Chunks are retained so that a device that reconnects, after a broker outage, a
// broker restart or its own restart, subscribes to <base>/chunks/<deployment>/+ again
// and receives every chunk again: that is how a transfer resumes. If the broker lost
// its retained messages (a restart without persistence), the push tool, on
// reconnecting, publishes them all again. The device keeps the chunks it has on disk
// (Transfer), so duplicates cost nothing. After a restart a device learns its
// transfers in progress from LoadTransfers; the agent keeps the deploy topic a manifest
// came on beside its transfer, to subscribe to the right base again.
//
// When every device has answered (or the push times out) the push tool clears the
// retained manifest and chunks by publishing empty retained payloads. A device
// ignores an empty payload on these topics (ParseManifest returns ErrEmptyManifest);
// a transfer still incomplete when its manifest is cleared was withdrawn, and the
// device rejects it. A manifest may instead name an HTTP(S) URL to fetch the archive
// from (`vigil model pack` writes the archive to upload).
//
// A broker holds each chunk as a retained message and sends them all at once to a
// subscriber: its queue for one client (mosquitto's max_queued_messages, 1000 by
// default) must be larger than a bundle's chunk count, or chunks are dropped and the
// device must subscribe again for what Transfer.Missing lists.
//
// # On the device
//
// The device reports on the retained <prefix>/<device>/models/state (State, published
// again on every connect) through the phases received, downloading, verifying,
// staging, warming, then active, or rejected / rolled_back with the reason in
// "error". In order: ParseManifest with the configured Limits; Store.Seen (a
// deployment id already seen, or a manifest issued no later than the last one applied
// to that model, is ignored); Store.Record(received); Verify; FreeBytes (room for the
// archive and the unpacked bundle); OpenTransfer
// and Put each chunk; Transfer.Assemble (size and SHA-256); Store.Install (which
// checks them again, then unpacks safely and atomically); warm-up; Store.Activate;
// Store.Record(active). A manifest with action "rollback" makes the device return to
// its previous bundle (Store.Rollback; "" is the bundle the config names).
//
// Action "shadow" carries a bundle as "deploy" does and goes through the same phases to
// warm-up, then Store.SetShadow instead of Store.Activate: the device runs it beside
// the model and reports their agreement, and the deployment ends in "shadowing".
// "promote" (no bundle) makes that candidate active (warm-up, Store.Activate,
// Store.ClearShadow, then the watch window) and ends in "active"; "discard" drops it
// (Store.ClearShadow) and ends in "discarded". Either is "rejected" on a device with no
// pushed candidate.
package deploy
