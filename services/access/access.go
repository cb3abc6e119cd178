// Package access turns a certificate identity into the access checker
// that decides for it: its own roles, the roles of access requests it
// carries (while approved, for the resources they cover) and, for an
// agent acting on behalf of a person, the bound of that person's current
// access. The API and the gateway both decide through it, so a decision
// never differs between the two.
package access

import (
	"context"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/identity/policy"
	"github.com/sigilhq/sigil/services/requests"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/roles"
)

// Delegates resolves the person an agent acts for (see bots.Service).
type Delegates interface {
	Delegate(ctx context.Context, agent *certid.Identity) (roles []string, traits map[string][]string, err error)
}

// Config configures a Resolver.
type Config struct {
	// Resources holds the roles.
	Resources *resources.Store
	// Requests resolves access requests; without it certificates naming
	// requests are refused.
	Requests *requests.Service
	// Delegates resolves on_behalf_of; without it agents acting for a
	// person are refused.
	Delegates Delegates
}

// CheckAndSetDefaults validates the config.
func (c *Config) CheckAndSetDefaults() error {
	if c.Resources == nil {
		return trace.BadParameter("access: missing Resources")
	}
	return nil
}

// Resolver builds access checkers for identities.
type Resolver struct{ cfg Config }

// New returns a Resolver.
func New(cfg Config) (*Resolver, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return &Resolver{cfg: cfg}, nil
}

// Checker evaluates id's access to one resource (kind and name; empty for
// questions that name none). until is when the earliest access request in
// use expires, zero when none is. Errors are AccessDenied, NotFound or
// BadParameter when the identity itself is the problem.
func (r *Resolver) Checker(ctx context.Context, id *certid.Identity, kind, name string) (*policy.AccessChecker, time.Time, error) {
	names := id.Roles
	var until time.Time
	if len(id.AccessRequests) > 0 {
		if r.cfg.Requests == nil {
			return nil, until, trace.AccessDenied("this certificate carries access requests, which this server does not support; run \"sigil login\" without --request-id")
		}
		g, err := r.cfg.Requests.Effective(ctx, id, kind, name)
		if err != nil {
			return nil, until, trace.Wrap(err, "checking the access requests of %q", id.Name)
		}
		names, until = g.Roles, g.Until
	}
	traits := id.Traits
	var opts []policy.Option
	if id.OnBehalfOf != "" {
		if r.cfg.Delegates == nil {
			return nil, until, trace.AccessDenied("agent %q acts on behalf of %q, which this server does not support", id.Name, id.OnBehalfOf)
		}
		personRoles, personTraits, err := r.cfg.Delegates.Delegate(ctx, id)
		if err != nil {
			return nil, until, trace.Wrap(err)
		}
		person, err := roles.Checker(ctx, r.cfg.Resources, personRoles, personTraits, string(certid.KindHuman))
		if err != nil {
			return nil, until, trace.Wrap(err, "evaluating the roles of %q, on whose behalf %q acts", id.OnBehalfOf, id.Name)
		}
		opts = append(opts, policy.WithOnBehalfOf(id.OnBehalfOf, person))
		// The agent's roles are templated with the person's traits: it
		// works as them, within its own roles.
		if len(traits) == 0 {
			traits = personTraits
		}
	}
	checker, err := roles.Checker(ctx, r.cfg.Resources, names, traits, string(id.Kind), opts...)
	if err != nil {
		return nil, until, trace.Wrap(err, "evaluating the roles of %q", id.Name)
	}
	return checker, until, nil
}
