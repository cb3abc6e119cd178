package storage

import (
	"context"
	"time"
)

// Limits every Backend enforces; larger keys or values are trace.BadParameter.
const (
	// MaxKeyLen is the longest key, in bytes. Keys must also start with "/".
	MaxKeyLen = 1 << 10
	// MaxValueLen is the largest value, in bytes.
	MaxValueLen = 4 << 20
)

// Item is one key/value record in a Backend.
type Item struct {
	// Key is a slash-separated path, e.g. "/roles/dev".
	Key string
	// Value is opaque to the backend.
	Value []byte
	// Revision is set by the backend on every write; it increases
	// monotonically across the whole backend. Zero on input.
	Revision int64
	// Expires, when non-zero, makes the item disappear (from Get, List and
	// Watch's view) after that time.
	Expires time.Time
}

// EventType says what happened to a key.
type EventType int

const (
	// EventPut is a create or an update.
	EventPut EventType = iota + 1
	// EventDelete is a delete (explicit, or an expiry the backend noticed).
	EventDelete
)

// Event is one change seen by a Watch.
type Event struct {
	Type EventType
	// Item holds the new value for EventPut, and at least the Key for EventDelete.
	Item Item
}

// Backend is what every state store implements (badger today, PostgreSQL
// for HA later). Every implementation must pass storagetest.Run.
//
// Errors: Get/Delete/CompareAndSwap on a missing key return trace.NotFound;
// Create on an existing key returns trace.AlreadyExists; a CompareAndSwap
// whose expected revision does not match returns trace.CompareFailed.
type Backend interface {
	// Get returns the live item at key.
	Get(ctx context.Context, key string) (*Item, error)
	// Create writes item only if key does not exist.
	Create(ctx context.Context, item Item) (*Item, error)
	// Put writes item unconditionally.
	Put(ctx context.Context, item Item) (*Item, error)
	// CompareAndSwap replaces the item at replace.Key only if its current
	// revision equals expectedRevision.
	CompareAndSwap(ctx context.Context, expectedRevision int64, replace Item) (*Item, error)
	// Delete removes key.
	Delete(ctx context.Context, key string) error
	// List returns the live items whose key starts with prefix, in key
	// order, at most limit of them (0 means no limit).
	List(ctx context.Context, prefix string, limit int) ([]Item, error)
	// Watch streams changes to keys starting with prefix until ctx ends.
	// The channel is closed when ctx is done or the backend closes.
	Watch(ctx context.Context, prefix string) (<-chan Event, error)
	// Close releases the backend.
	Close() error
}
