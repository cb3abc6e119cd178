// Package roles resolves role names to roles: the built-in ones and those
// stored as resources. Everything that evaluates policy (the API, the
// gateway) loads roles through it.
package roles

import (
	"context"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/identity/policy"
	"github.com/sigilhq/sigil/services/resources"
)

// Get loads roles by name, built-in ones included. A missing role is a
// trace.NotFound naming it.
func Get(ctx context.Context, store *resources.Store, names []string) ([]*types.Role, error) {
	builtin := map[string]*types.Role{}
	for _, r := range types.BuiltinRoles() {
		builtin[r.Metadata.Name] = r
	}
	out := make([]*types.Role, 0, len(names))
	for _, name := range names {
		if r, ok := builtin[name]; ok {
			out = append(out, r)
			continue
		}
		r, err := resources.Get[*types.Role](ctx, store, types.KindRole, name)
		if trace.IsNotFound(err) {
			return nil, trace.NotFound("role %q does not exist", name)
		}
		if err != nil {
			return nil, trace.Wrap(err)
		}
		out = append(out, r)
	}
	return out, nil
}

// Checker builds the access checker for an identity's roles and traits.
func Checker(ctx context.Context, store *resources.Store, roleNames []string, traits map[string][]string, kind string, opts ...policy.Option) (*policy.AccessChecker, error) {
	rs, err := Get(ctx, store, roleNames)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return policy.NewAccessChecker(rs, traits, append([]policy.Option{policy.WithIdentityKind(kind)}, opts...)...)
}
