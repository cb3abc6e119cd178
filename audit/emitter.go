package audit

import (
	"context"
	"time"

	"github.com/gravitational/trace"
)

// Emitter records audit events. Emit fills ev.ID and ev.Time when they are
// empty (so the caller can log or return the ID) and otherwise does not
// modify ev. Emit returns only once the event is durable as far as the sink
// can promise, because callers use a failed Emit to refuse the action.
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
	if err := ev.SetDefaults(m.clock()); err != nil {
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
	return trace.Wrap(ev.SetDefaults(time.Now()))
}
