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
	return e.append(ctx, Clone(ev))
}

// EmitOwned is Emit for a caller that hands ev over: it redacts and
// bounds ev in place instead of a deep copy, which is most of the cost of
// a per-query event. See OwningEmitter for what the caller promises.
func (e *StoreEmitter) EmitOwned(ctx context.Context, ev *Event) error {
	if err := ctx.Err(); err != nil {
		return trace.Wrap(err)
	}
	if err := SetDefaults(ev, e.clock()); err != nil {
		return trace.Wrap(err)
	}
	return e.append(ctx, ev)
}

// append redacts and bounds out, which the emitter owns, and stores it:
// the one path both Emit and EmitOwned take.
func (e *StoreEmitter) append(ctx context.Context, out *Event) error {
	Redact(out)
	Bound(out)
	if n := proto.Size(out); n > MaxEventBytes {
		return trace.LimitExceeded("audit event %s is %d bytes, over the %d byte limit", out.Id, n, MaxEventBytes)
	}
	return trace.Wrap(e.store.Append(ctx, out, IsDurable(out.Type)))
}

// OwningEmitter is an Emitter that can take over the caller's event
// instead of copying it.
//
// With EmitOwned the caller gives up ev: the emitter fills Id and Time,
// rewrites Details and Parameters in place (Redact, Bound) and may keep ev
// until it is stored, so the caller must not read or reuse ev afterwards.
// A Details map or Parameters slice the caller does keep using (say a
// constant {"protocol": "simple"} per connection) must already hold what
// Redact and Bound would leave unchanged, and must not be used by another
// goroutine during the call: the rewrite then writes back the same values.
// Sub-messages (Identity, Resource, Time) are only read, never modified,
// so one immutable instance may be shared by many events.
type OwningEmitter interface {
	Emitter
	EmitOwned(ctx context.Context, ev *Event) error
}

// EmitOwned hands ev over to e when e is an OwningEmitter, and otherwise
// calls e.Emit (which copies what it keeps).
func EmitOwned(ctx context.Context, e Emitter, ev *Event) error {
	if o, ok := e.(OwningEmitter); ok {
		return o.EmitOwned(ctx, ev)
	}
	return e.Emit(ctx, ev)
}
