// Package outbox is Vigil's durable offline queue: every event and telemetry message
// is enqueued here, stamped with a per-device sequence number that survives restarts,
// and kept in a bbolt file until the uplink reads it with Peek and deletes it with Ack
// once the broker has acknowledged it. Durability depends on the fsync policy: under
// "always" Enqueue returns only after the bbolt transaction holding the message has
// committed (and been fsynced), with concurrent callers sharing one commit; under
// "interval" Enqueue returns once the message is queued in memory and a background
// committer writes the queue every FsyncInterval, so a crash or kill -9 loses at most
// the last interval. When the disk cannot be written, messages are held in memory and
// retried with backoff up to MaxPending, after which Enqueue fails loudly rather than
// dropping anything. The package imports no MQTT code (the uplink lives in
// sync/mqttlink), so it and its tests run without a broker.
package outbox
