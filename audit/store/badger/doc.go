// Package badger is the embedded audit store: an append-only, hash-chained
// log in its own badger database (separate from control-plane state) with
// group commit, secondary indexes for Search, and retention that leaves a
// signed checkpoint behind.
//
// Layout: a batch stores its events in a few chunks of consecutive events,
// its index entries in bucketed posting lists (one key per index bucket it
// touches, not one per event) and a manifest for retention; encoding.go
// documents the keys and values (format version 1).
//
// Durability: badger runs with SyncWrites off; one committer goroutine
// writes each batch of queued events (assigning seq and hashes in order),
// and a syncer goroutine calls DB.Sync once for every batch written since
// its last sync, then acks all their durable waiters together, while the
// committer already writes the next batch. Only acked durable events are
// promised to survive a crash. If a write or sync fails the store marks
// itself failed and refuses every later Append (fail closed): a gap or fork
// in the chain is worse than no audit, and callers refuse the action.
package badger
