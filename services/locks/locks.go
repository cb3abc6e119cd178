package locks

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/services/resources"
)

// Service manages locks.
type Service struct {
	store *resources.Store
	clock func() time.Time
}

// New returns a lock Service.
func New(store *resources.Store, clock func() time.Time) (*Service, error) {
	if store == nil {
		return nil, trace.BadParameter("locks: missing resource store")
	}
	if clock == nil {
		clock = time.Now
	}
	return &Service{store: store, clock: clock}, nil
}

// Add creates a lock on target; ttl 0 means until removed.
func (s *Service) Add(ctx context.Context, target types.LockTarget, ttl time.Duration, message, createdBy string) (*types.Lock, error) {
	if ttl < 0 {
		return nil, trace.BadParameter("--ttl must be positive")
	}
	now := s.clock().UTC()
	lock := &types.Lock{
		Metadata: types.Metadata{Name: uuid.NewString()},
		Spec:     types.LockSpec{Target: target, Message: message, CreatedBy: createdBy, CreatedAt: now},
	}
	if ttl > 0 {
		exp := now.Add(ttl)
		lock.Metadata.Expires = &exp
	}
	if _, err := s.store.Create(ctx, lock); err != nil {
		return nil, trace.Wrap(err)
	}
	return lock, nil
}

// Remove deletes a lock by id.
func (s *Service) Remove(ctx context.Context, id string) error {
	return trace.Wrap(s.store.Delete(ctx, types.KindLock, id))
}

// List returns the live locks.
func (s *Service) List(ctx context.Context) ([]*types.Lock, error) {
	all, err := resources.List[*types.Lock](ctx, s.store, types.KindLock)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	now := s.clock()
	out := all[:0]
	for _, l := range all {
		if l.Metadata.Expires != nil && !now.Before(*l.Metadata.Expires) {
			continue
		}
		out = append(out, l)
	}
	return out, nil
}

// Check returns trace.AccessDenied naming the lock if any live lock targets
// the identity (by name, by one of its roles, or as a bot).
func (s *Service) Check(ctx context.Context, name string, kind string, roles []string) error {
	locks, err := s.List(ctx)
	if err != nil {
		return trace.Wrap(err)
	}
	bot := ""
	user := name
	if kind == types.IdentityKindBot || kind == types.IdentityKindAgent {
		bot, user = name, ""
	}
	for _, l := range locks {
		if l.Matches(user, roles, bot) {
			msg := l.Spec.Message
			if msg == "" {
				msg = "no reason given"
			}
			return trace.AccessDenied("access is locked for %s (lock %s: %s); ask an admin to run \"sigilctl unlock %s\"", l.Spec.Target, l.Metadata.Name, msg, l.Metadata.Name)
		}
	}
	return nil
}

// Changes returns a channel that receives a value (coalesced, never
// blocking the store) whenever a lock is created, changed or removed,
// until ctx ends. Live sessions re-check their identity on each one.
func (s *Service) Changes(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	notify := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	go func() {
		defer close(out)
		backoff := 100 * time.Millisecond
		for ctx.Err() == nil {
			events, err := s.store.Backend().Watch(ctx, resources.KindPrefix(types.KindLock))
			if err != nil {
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				continue
			}
			// The watch may have missed changes while (re)subscribing.
			notify()
			for range events {
				notify()
			}
		}
	}()
	return out
}
