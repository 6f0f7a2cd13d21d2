// Package deploy is the pure-Go half of remote model push: the deployment manifest,
// bundle archives and their Ed25519 signatures, chunk assembly with on-disk resume,
// and the store of installed bundles on a device. It imports only infer and
// infer/modelfile (never paho, gocv or a runtime); the agent (subscribing, phases,
// warm-up, swap) and sync/deploy/push (the operator's side, with paho) use it.
//
// # Protocol
//
// An operator signs a bundle directory offline (`vigil model sign`): the directory is
// packed into a deterministic, uncompressed tar (Pack: entries sorted by path, mtime 0,
// uid/gid 0, modes 0644/0755, no names, USTAR, regular files and directories only, the
// top-level signature.json left out), so the same directory gives the same bytes on any
// machine and Go version. signature.json holds the archive's SHA-256 and size, the
// signer's public key and an Ed25519 signature over Message(sha256), that is
// "vigil-bundle-v1\n" followed by the lowercase hex SHA-256. A device accepts a bundle
// only when that key is one of its trust.keys and the signature verifies (Verify).
//
// `vigil model push` publishes, all retained at QoS 1, under a base topic that is
// either <prefix>/<device>/models or <prefix>/group/<group>/models (Target):
//
//	<base>/chunks/<deployment>/<i>   chunk i (0-based) of the archive, raw bytes
//	<base>/deploy                    the Manifest (JSON), published after the chunks
//
// Chunks are retained so that a device that reconnects, after a broker outage, a
// broker restart or its own restart, subscribes to <base>/chunks/<deployment>/+ again
// and receives every chunk again: that is how a transfer resumes. The device keeps the
// chunks it has on disk (Transfer), so duplicates cost nothing. When every device has
// answered (or the push times out) the operator's tool clears the retained manifest and
// chunks by publishing empty retained payloads: a device must ignore an empty payload
// on these topics. A manifest may instead name an HTTP(S) URL to fetch the archive from.
//
// The device reports on the retained <prefix>/<device>/models/state (State) through the
// phases received, downloading, verifying, staging, warming, then active, or rejected /
// rolled_back with the reason in "error". A manifest with action "rollback" makes the
// device return to its previous bundle. A deployment id already seen, or a manifest
// issued no later than the last one applied to that model, is ignored (Store.Seen).
//
// Only agent/ and sync/deploy/push import this package.
package deploy
