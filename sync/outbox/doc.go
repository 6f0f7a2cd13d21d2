// Package outbox is Vigil's durable offline queue: every event and telemetry message
// is enqueued here, stamped with a per-device sequence number that survives restarts,
// and kept on disk until the uplink (sync/mqttlink) reads it with Peek and forgets it
// with Ack once the broker has it. Only agent/ and the uplink import it; it imports
// no MQTT or gocv code, so it and its tests run anywhere, without a broker.
//
// # Why a log and not a database
//
// The store was a bbolt file. bbolt cannot give what the outbox promises: a torn
// write cannot be detected and cut off (a page is either valid or the file is
// refused), its file never shrinks after a backlog drains, and its mmap pages count
// as the daemon's RSS, which then grows with the backlog. The store is now a
// segmented append-only log with a CRC per record, read with pread.
//
// # On disk
//
// Under Options.Path (a directory):
//
//	lock                  flock(LOCK_EX|LOCK_NB): a second process gets "in use"
//	state                 next_seq and each log's acked head (see state.go), written atomically
//	events/%020d.seg      ClassEvent messages (faults included)
//	telemetry/%020d.seg   ClassTelemetry messages
//
// A segment is named after the first seq it holds and is a run of records, little
// endian: u32 payload length | u32 CRC-32C (Castagnoli) of seq||payload | u64 seq |
// payload, the envelope JSON exactly as json.Marshal(Envelope) writes it. Seqs rise
// within a log and are contiguous across the two. A sealed segment ends with a
// trailer record (seq 0, payload "VGSEAL01" | u64 count | u64 last seq), so that Open
// learns it from its last 40 bytes. Segments hold clamp(MaxBytes/32, 64 KiB, 4 MiB);
// a message over MaxBytes/4 is refused.
//
// # Durability
//
// Enqueue writes its record with write(2) before it returns, under a mutex that also
// assigns the seq, so records land in seq order and a kill -9 loses nothing that
// Enqueue returned. No fsync happens under that mutex: sealing a segment only writes
// its trailer and hands the descriptor to the syncer, a new segment's directory entry
// is fsynced by the syncer too, and state saves that must precede a deletion happen
// after the mutex is released (see Recovery). Under "always" Enqueue then waits for an
// fdatasync covering the record: one syncer goroutine syncs as soon as someone waits,
// covering everything written so far (new directories, sealed segments not synced
// yet, open segments), so concurrent callers share it. The synced mark moves only if
// all of that succeeded: a sealed segment whose fdatasync failed stays open and
// listed, is retried like any failure (LastError meanwhile), and holds back every
// later record. Peek under "always" returns only synced records, so the broker never
// acknowledges a message a power cut could take back (its seq would be given again);
// Open fdatasyncs the segments it finds for the same reason. Under "interval" the
// syncer runs every FsyncInterval, Peek returns written records at once, and a power
// loss can lose up to one interval.
//
// # Recovery
//
// Open validates every record of each log's last segment and truncates it at the
// first bad one (a torn tail, logged as a warning with the path, offset and bytes
// cut). Older segments are validated as they are read: a bad record there costs the
// rest of that segment, which is logged as an error, counted in Stats.Dropped
// (events) or Stats.EvictedTelemetry, and reported by a fault event. A state file
// that cannot be decoded costs only the acked heads: it is logged, a fault event
// {"fault":"outbox_state_lost","error":...} is queued, and Open goes on as if there
// were none, so everything on disk is delivered again (at least once) and seq
// continues after the highest one in the segments. A store that is not an outbox at
// all (a file that is not a segment, an older segment whose first record is bad,
// overlapping segments) is renamed to Path.corrupt-<UTC time> and replaced by an
// empty one whose first message is a fault event
// {"fault":"outbox_corrupt","moved_to":...,"error":...}; seq then continues above
// the highest one known from the state file and from the segments of both logs
// (their file names and intact records), so it never goes back. Open fails only for
// I/O errors and a held lock.
// next_seq is max(state next_seq, highest seq in any log + 1), and the state is
// saved before a deletion could remove the highest seq, so seqs are never reused
// after a crash; such a deletion forgets the segment under the write mutex and
// unlinks its file after the state is saved, outside it. Acks beyond the saved head
// are lost in a crash: those messages are delivered again (at least once; the cloud
// de-duplicates by id).
//
// # Space
//
// Stats.DiskBytes (segments and state) never exceeds MaxBytes. Before a write that
// would, the outbox deletes fully acked segments, then the oldest telemetry segments
// (Stats.EvictedTelemetry), then the oldest event segments (Stats.Dropped, a warning,
// and one fault event {"fault":"outbox_full","dropped_events":N,"first_seq":..,
// "last_seq":..}). Acks delete segments left behind the acked head, and the open
// segment once it is fully acked and over a quarter full, so disk space returns as
// the backlog drains. A deleted segment's descriptors (the writer's, and Peek's and
// Ack's readers) are closed at once where that is safe, else by the syncer or at the
// reader's next use, so its space returns. When the disk refuses writes (ENOSPC,
// EIO), the partial record is cut, LastError is set, telemetry is evicted and the
// write retried once (for ENOSPC, saving the state under the write mutex if it must
// precede the deletion: the space is needed before the retry); then messages wait in
// memory, up to MaxPending, and a goroutine retries them in seq order with backoff
// (100ms to 5s). Nothing is dropped silently.
//
// # Memory
//
// The backlog is never loaded: Peek keeps a cursor per log and a buffer of 64 KiB,
// Ack an index of what Peek read ahead of the oldest unacked message (at most
// 16384 entries per log), so RSS stays flat however long the backlog is.
package outbox
