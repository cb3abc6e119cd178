package audit

import (
	"context"
	"time"

	"github.com/gravitational/trace"
	"google.golang.org/protobuf/proto"

	"github.com/sigilhq/sigil/audit/store"
)

// Emitter records audit events. Emit fills ev.Id and ev.Time when they are
// empty (so the caller can log or return the ID) and otherwise does not
// modify ev. For durable event types (see IsDurable) Emit returns only once
// the event is durable, because callers use a failed Emit to refuse the
// action (fail closed).
type Emitter interface {
	Emit(ctx context.Context, ev *Event) error
}

// MultiEmitter fans an event out to several emitters.
type MultiEmitter struct {
	emitters []Emitter
	clock    func() time.Time
}

// NewMultiEmitter returns an emitter that emits to each of emitters in turn.
func NewMultiEmitter(emitters ...Emitter) *MultiEmitter {
	return &MultiEmitter{emitters: emitters, clock: time.Now}
}

// Emit sends ev to every emitter, even after one fails, and returns the
// first error. ID and Time are filled before fan-out so every sink records
// the same identity for the event.
func (m *MultiEmitter) Emit(ctx context.Context, ev *Event) error {
	if err := SetDefaults(ev, m.clock()); err != nil {
		return trace.Wrap(err)
	}
	var first error
	for _, e := range m.emitters {
		if err := e.Emit(ctx, ev); err != nil && first == nil {
			first = err
		}
	}
	return trace.Wrap(first)
}

// DiscardEmitter validates events and drops them; for tests and for
// components run without an audit sink.
type DiscardEmitter struct{}

// Emit fills ID and Time like every emitter, then drops ev.
func (DiscardEmitter) Emit(ctx context.Context, ev *Event) error {
	return trace.Wrap(SetDefaults(ev, time.Now()))
}

// StoreEmitter records events in the hash-chained audit store.
type StoreEmitter struct {
	store store.Store
	clock func() time.Time
}

// NewStoreEmitter returns an Emitter appending to s.
func NewStoreEmitter(s store.Store) *StoreEmitter {
	return &StoreEmitter{store: s, clock: time.Now}
}

// Emit fills defaults on ev, then appends a redacted, bounded copy (the
// caller's event keeps its details and parameters), waiting for the fsync
// when IsDurable(ev.Type).
func (e *StoreEmitter) Emit(ctx context.Context, ev *Event) error {
	if err := ctx.Err(); err != nil {
		return trace.Wrap(err)
	}
	if err := SetDefaults(ev, e.clock()); err != nil {
		return trace.Wrap(err)
	}
	out := Clone(ev)
	Redact(out)
	Bound(out)
	if n := proto.Size(out); n > MaxEventBytes {
		return trace.LimitExceeded("audit event %s is %d bytes, over the %d byte limit", ev.Id, n, MaxEventBytes)
	}
	return trace.Wrap(e.store.Append(ctx, out, IsDurable(ev.Type)))
}
