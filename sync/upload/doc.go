// Package upload sends the samples kept for retraining off the device: each sample is
// a JPEG (NAME.jpg) and its JSON sidecar (NAME.json) in one directory, sent oldest
// first, each once, retried with backoff while the destination is down. Its sending
// side is imported by agent/ and knows the MQTT link only through the Publisher
// interface; its receiving side (Receiver, NewHandler, Subscribe) is for
// `vigil samples receive` and other tools.
//
// Over HTTP(S), each file is PUT to <url>/<device>/<file> (Content-Type image/jpeg or
// application/json, "Authorization: Bearer <token>" when a token is set): the JPEG
// first, then its sidecar, so a receiver that has the .json has the whole sample. Any
// 2xx status is success; anything else is retried.
//
// Over MQTT, each file is cut into chunks of at most chunk_size bytes, published raw at
// QoS 1 to <prefix>/<device>/samples/<file>/<index> (index from 0), each acknowledged by
// the broker before the next, then a manifest on <prefix>/<device>/samples/<file>:
//
//	{"file": "door-20250101T120000.000Z-42.jpg", "size": 81234, "sha256": "<hex>", "chunks": 2}
//
// The JPEG goes first, then the sidecar the same way: its manifest is the last message
// of a sample. Delivery is at-least-once: after a broker outage a file is sent again
// from its first chunk, so a receiver keys chunks by file and index and checks the
// assembled bytes against the manifest's size and SHA-256.
//
// What was uploaded is remembered in the directory's .uploaded file (a name per line,
// appended and synced after each sample), so a restart uploads nothing twice; only a
// crash between the destination's answer and that write sends one sample again. A
// sample removed by the directory's budget before it could be sent is skipped and
// counted.
//
// On the receiving side, Receiver puts MQTT chunks together and checks each file
// against its manifest (a chunk 0 received again starts the file over), holding
// incomplete files within bounds of age and bytes; Subscribe feeds it from a broker
// with a persistent session, since a device counts a file as sent once the broker has
// it; NewHandler takes the HTTP PUTs. With a spool directory, Receiver writes each
// chunk to <spool>/<device>/<file>/<index> (atomically, synced) before Add returns,
// so before Subscribe acknowledges it, and a new Receiver on the spool takes those
// chunks again: a receiver stopped or crashed in the middle of a file loses nothing
// it acknowledged. A file's chunks stay in the spool until Receiver.Saved; Subscribe
// acknowledges nothing that was not kept (a chunk not written, a file its callback
// could not save) and connects again to have it sent again. Both write Dir/<device>/<file> atomically, and
// only names of a sample's alphabet (CheckFileName, CheckDevice).
package upload
