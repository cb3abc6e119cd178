package store

import (
	"context"
	"time"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

// Query selects events for Search. Zero fields do not filter.
type Query struct {
	Since, Until time.Time
	User         string
	Kind         string // identity kind: human | bot | agent
	Types        []string
	Resource     string // resource name
	SessionID    string
	Success      *bool
	// Limit is the page size (default 100, at most 1000).
	Limit int
	// PageToken continues a previous Search (opaque).
	PageToken string
}

// Store is the append-only, hash-chained audit log. Implementations (badger
// today, PostgreSQL for HA later) must pass storetest.Run.
type Store interface {
	// Append assigns seq, prev_hash and hash and stores ev. With durable,
	// it returns only once ev is fsynced (group-committed with others);
	// otherwise once ev is queued for the next group commit. An error
	// means the event is not (and will not be) stored.
	Append(ctx context.Context, ev *sigilv1.AuditEvent, durable bool) error
	// Flush waits until every event queued so far is durable.
	Flush(ctx context.Context) error
	// Search returns matching events newest first and a token for the next
	// page ("" at the end).
	Search(ctx context.Context, q Query) ([]*sigilv1.AuditEvent, string, error)
	// Range returns up to limit events with seq >= from, in seq order.
	Range(ctx context.Context, from uint64, limit int) ([]*sigilv1.AuditEvent, error)
	// LastSeq is the seq of the newest durable event (0 when empty).
	LastSeq() uint64
	// Notify returns a channel that receives (without blocking the store;
	// values may be coalesced) the last durable seq after each commit. It
	// is closed when ctx ends or the store closes.
	Notify(ctx context.Context) <-chan uint64
	// Checkpoint returns the signed checkpoint of the last pruned event,
	// or nil if nothing was ever pruned.
	Checkpoint(ctx context.Context) (*sigilv1.AuditCheckpoint, error)
	// Prune deletes events older than before (whole prefix of the chain)
	// and records a signed checkpoint of the last one deleted.
	Prune(ctx context.Context, before time.Time) (int, error)
	// Close flushes and closes the store.
	Close() error
}
