package resources

import (
	"context"
	"encoding/json"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/services/storage"
)

const prefix = "/resources/"

// Key is the storage key of a resource.
func Key(kind, name string) string { return prefix + kind + "/" + name }

// KindPrefix is the storage key prefix of every resource of a kind.
func KindPrefix(kind string) string { return prefix + kind + "/" }

// Store reads and writes resources.
type Store struct {
	backend storage.Backend
}

// New returns a Store over backend.
func New(backend storage.Backend) (*Store, error) {
	if backend == nil {
		return nil, trace.BadParameter("resources: missing storage backend")
	}
	return &Store{backend: backend}, nil
}

// Backend returns the underlying backend (for watchers).
func (s *Store) Backend() storage.Backend { return s.backend }

func toItem(r types.Resource) (storage.Item, error) {
	if err := r.CheckAndSetDefaults(); err != nil {
		return storage.Item{}, trace.Wrap(err)
	}
	md := r.GetMetadata()
	rev := md.Revision
	md.Revision = 0
	data, err := json.Marshal(r)
	md.Revision = rev
	if err != nil {
		return storage.Item{}, trace.Wrap(err)
	}
	item := storage.Item{Key: Key(r.GetKind(), md.Name), Value: data}
	if md.Expires != nil {
		item.Expires = *md.Expires
	}
	return item, nil
}

// FromItem decodes a stored resource and stamps its revision.
func FromItem(item *storage.Item, kind string) (types.Resource, error) {
	r, err := types.UnmarshalResource(kind, item.Value)
	if err != nil {
		return nil, trace.Wrap(err, "decoding stored %s %q", kind, item.Key)
	}
	r.GetMetadata().Revision = item.Revision
	return r, nil
}

// Create stores a new resource; trace.AlreadyExists if one of that kind and
// name exists.
func (s *Store) Create(ctx context.Context, r types.Resource) (types.Resource, error) {
	item, err := toItem(r)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	out, err := s.backend.Create(ctx, item)
	if trace.IsAlreadyExists(err) {
		return nil, trace.AlreadyExists("%s %q already exists (use --force to overwrite)", r.GetKind(), r.GetMetadata().Name)
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}
	r.GetMetadata().Revision = out.Revision
	return r, nil
}

// Upsert stores r whether or not it exists.
func (s *Store) Upsert(ctx context.Context, r types.Resource) (types.Resource, error) {
	item, err := toItem(r)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	out, err := s.backend.Put(ctx, item)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	r.GetMetadata().Revision = out.Revision
	return r, nil
}

// Get returns one resource; trace.NotFound names the kind and name.
func (s *Store) Get(ctx context.Context, kind, name string) (types.Resource, error) {
	if err := types.ValidateName("name", name); err != nil {
		return nil, trace.Wrap(err)
	}
	item, err := s.backend.Get(ctx, Key(kind, name))
	if trace.IsNotFound(err) {
		return nil, trace.NotFound("%s %q not found", kind, name)
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return FromItem(item, kind)
}

// List returns every resource of a kind, ordered by name.
func (s *Store) List(ctx context.Context, kind string) ([]types.Resource, error) {
	items, err := s.backend.List(ctx, KindPrefix(kind), 0)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	out := make([]types.Resource, 0, len(items))
	for i := range items {
		r, err := FromItem(&items[i], kind)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		out = append(out, r)
	}
	return out, nil
}

// Delete removes one resource.
func (s *Store) Delete(ctx context.Context, kind, name string) error {
	if err := types.ValidateName("name", name); err != nil {
		return trace.Wrap(err)
	}
	err := s.backend.Delete(ctx, Key(kind, name))
	if trace.IsNotFound(err) {
		return trace.NotFound("%s %q not found", kind, name)
	}
	return trace.Wrap(err)
}

// Update applies fn to the current resource and writes it back with
// compare-and-swap, retrying when another writer got there first.
func (s *Store) Update(ctx context.Context, kind, name string, fn func(types.Resource) error) (types.Resource, error) {
	for attempt := 0; attempt < 16; attempt++ {
		cur, err := s.Get(ctx, kind, name)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		rev := cur.GetMetadata().Revision
		if err := fn(cur); err != nil {
			return nil, trace.Wrap(err)
		}
		item, err := toItem(cur)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		out, err := s.backend.CompareAndSwap(ctx, rev, item)
		if trace.IsCompareFailed(err) {
			continue
		}
		if err != nil {
			return nil, trace.Wrap(err)
		}
		cur.GetMetadata().Revision = out.Revision
		return cur, nil
	}
	return nil, trace.CompareFailed("%s %q is being changed concurrently; try again", kind, name)
}

// Get is the typed form of Store.Get.
func Get[T types.Resource](ctx context.Context, s *Store, kind, name string) (T, error) {
	var zero T
	r, err := s.Get(ctx, kind, name)
	if err != nil {
		return zero, trace.Wrap(err)
	}
	t, ok := r.(T)
	if !ok {
		return zero, trace.BadParameter("stored %s %q has an unexpected type %T", kind, name, r)
	}
	return t, nil
}

// List is the typed form of Store.List.
func List[T types.Resource](ctx context.Context, s *Store, kind string) ([]T, error) {
	rs, err := s.List(ctx, kind)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	out := make([]T, 0, len(rs))
	for _, r := range rs {
		t, ok := r.(T)
		if !ok {
			return nil, trace.BadParameter("stored %s has an unexpected type %T", kind, r)
		}
		out = append(out, t)
	}
	return out, nil
}
