package bots

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/locks"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/storage"
	"github.com/sigilhq/sigil/services/users"
)

const (
	keyPrefix = "/bots/"
	// casAttempts bounds retries of a contended renewal.
	casAttempts = 16
	// LockedBy names the locks this service creates.
	LockedBy = "sigil (bot generation check)"
)

// Bot is a joined bot or agent as stored.
type Bot struct {
	Name       string   `json:"name"`
	Kind       string   `json:"kind"`
	Roles      []string `json:"roles"`
	OnBehalfOf string   `json:"on_behalf_of,omitempty"`
	// DelegateRoles and DelegateTraits are what the person had when they
	// made the token themselves; used only when that person is not a local
	// user (an SSO user is not stored).
	DelegateRoles  []string            `json:"delegate_roles,omitempty"`
	DelegateTraits map[string][]string `json:"delegate_traits,omitempty"`
	// Generation is the generation of the latest certificate issued.
	Generation uint64    `json:"generation"`
	Joined     time.Time `json:"joined"`
	Renewed    time.Time `json:"renewed,omitempty"`
	// Revision is the storage revision (not stored).
	Revision int64 `json:"-"`
}

// Identity is the certificate identity of the bot's latest generation.
func (b *Bot) Identity() *certid.Identity {
	return &certid.Identity{
		Name:       b.Name,
		Kind:       certid.Kind(b.Kind),
		Roles:      slices.Clone(b.Roles),
		OnBehalfOf: b.OnBehalfOf,
		Generation: b.Generation,
	}
}

// Config configures a Service.
type Config struct {
	// Backend stores the bots.
	Backend storage.Backend
	// Resources holds the join tokens.
	Resources *resources.Store
	// Locks receives the lock of a bot whose identity was copied.
	Locks *locks.Service
	// Users resolves the people agents act for.
	Users *users.Service
	// Clock defaults to time.Now.
	Clock func() time.Time
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	switch {
	case c.Backend == nil:
		return trace.BadParameter("bots: missing Backend")
	case c.Resources == nil:
		return trace.BadParameter("bots: missing Resources")
	case c.Locks == nil:
		return trace.BadParameter("bots: missing Locks")
	case c.Users == nil:
		return trace.BadParameter("bots: missing Users")
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return nil
}

// Service joins and renews bots and agents.
type Service struct{ cfg Config }

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return &Service{cfg: cfg}, nil
}

func key(name string) string { return keyPrefix + name }

// errJoinRefused is the one answer to every bad token, so that a caller
// cannot tell an unknown token from a used or expired one.
func errJoinRefused() error {
	return trace.AccessDenied("join token refused: it is unknown, already used or expired; ask an admin for a new one (\"sigilctl tokens add\")")
}

// Join consumes a join token (each works once) and records the bot or
// agent it names at generation 1. Joining again with a new token starts
// the bot over: a new token is an admin's (or the person's) fresh grant.
func (s *Service) Join(ctx context.Context, secret string) (*Bot, error) {
	if types.ValidateName("token", secret) != nil {
		return nil, errJoinRefused()
	}
	tok, err := resources.Get[*types.Token](ctx, s.cfg.Resources, types.KindToken, secret)
	if trace.IsNotFound(err) {
		return nil, errJoinRefused()
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}
	// Deleting is what makes the token single-use: of two concurrent joins
	// only one delete finds it.
	if err := s.cfg.Resources.Delete(ctx, types.KindToken, secret); err != nil {
		if trace.IsNotFound(err) {
			return nil, errJoinRefused()
		}
		return nil, trace.Wrap(err)
	}
	now := s.cfg.Clock()
	if !now.Before(tok.Expiry()) {
		return nil, errJoinRefused()
	}
	// A person's token must not take over someone else's agent (an
	// admin's token without on_behalf_of may start any bot over).
	if old, err := s.Get(ctx, tok.Spec.BotName); err == nil && tok.Spec.OnBehalfOf != "" && old.OnBehalfOf != tok.Spec.OnBehalfOf {
		return nil, trace.AlreadyExists("%s %q exists and acts for someone else; ask for a token with another name", old.Kind, old.Name)
	} else if err != nil && !trace.IsNotFound(err) {
		return nil, trace.Wrap(err)
	}
	b := &Bot{
		Name:           tok.Spec.BotName,
		Kind:           tok.Spec.Kind,
		Roles:          slices.Clone(tok.Spec.Roles),
		OnBehalfOf:     tok.Spec.OnBehalfOf,
		DelegateRoles:  slices.Clone(tok.Spec.OnBehalfOfRoles),
		DelegateTraits: tok.Spec.OnBehalfOfTraits,
		Generation:     1,
		Joined:         now.UTC(),
	}
	if err := s.put(ctx, b); err != nil {
		return nil, trace.Wrap(err)
	}
	return b, nil
}

func (s *Service) put(ctx context.Context, b *Bot) error {
	data, err := json.Marshal(b)
	if err != nil {
		return trace.Wrap(err)
	}
	item, err := s.cfg.Backend.Put(ctx, storage.Item{Key: key(b.Name), Value: data})
	if err != nil {
		return trace.Wrap(err)
	}
	b.Revision = item.Revision
	return nil
}

// Get returns one bot.
func (s *Service) Get(ctx context.Context, name string) (*Bot, error) {
	if err := types.ValidateName("bot name", name); err != nil {
		return nil, trace.Wrap(err)
	}
	item, err := s.cfg.Backend.Get(ctx, key(name))
	if trace.IsNotFound(err) {
		return nil, trace.NotFound("bot %q has not joined (or was removed)", name)
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return decode(item)
}

func decode(item *storage.Item) (*Bot, error) {
	b := &Bot{}
	if err := json.Unmarshal(item.Value, b); err != nil {
		return nil, trace.Wrap(err, "decoding stored bot %s", item.Key)
	}
	b.Revision = item.Revision
	return b, nil
}

// List returns every joined bot and agent by name.
func (s *Service) List(ctx context.Context) ([]*Bot, error) {
	items, err := s.cfg.Backend.List(ctx, keyPrefix, 0)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	out := make([]*Bot, 0, len(items))
	for i := range items {
		b, err := decode(&items[i])
		if err != nil {
			return nil, trace.Wrap(err)
		}
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Remove forgets a bot: it can no longer renew. Certificates it holds
// stay valid until they expire; lock it to cut it off at once.
func (s *Service) Remove(ctx context.Context, name string) error {
	if err := types.ValidateName("bot name", name); err != nil {
		return trace.Wrap(err)
	}
	err := s.cfg.Backend.Delete(ctx, key(name))
	if trace.IsNotFound(err) {
		return trace.NotFound("bot %q has not joined (or was removed)", name)
	}
	return trace.Wrap(err)
}

// GenerationMismatchError is a renewal from a certificate that is not the
// latest generation: the identity exists in two places. The bot is locked.
type GenerationMismatchError struct {
	Bot             string
	Presented, Want uint64
	Lock            string
}

func (e *GenerationMismatchError) Error() string {
	return fmt.Sprintf("renewal refused: %s presented certificate generation %d but the latest is %d, so its identity is in use somewhere else (copied?); it is now locked (lock %s): an admin should investigate, then \"sigilctl unlock %s\" and issue a new join token", e.Bot, e.Presented, e.Want, e.Lock, e.Lock)
}

// Renew checks that id (from a verified, unexpired certificate) is the
// bot's latest generation and moves the bot to the next one. A stale
// generation locks the bot and returns *GenerationMismatchError (wrapped
// as AccessDenied).
func (s *Service) Renew(ctx context.Context, id *certid.Identity) (*Bot, error) {
	if id.Kind != certid.KindBot && id.Kind != certid.KindAgent {
		return nil, trace.AccessDenied("only bots and agents renew this way; people run \"sigil login\"")
	}
	if !id.Route.IsZero() || id.MFADevice != "" || len(id.AccessRequests) > 0 {
		return nil, trace.AccessDenied("renew with the bot's own identity certificate, not a certificate issued from it")
	}
	for range casAttempts {
		b, err := s.Get(ctx, id.Name)
		if trace.IsNotFound(err) {
			return nil, trace.AccessDenied("%s %q was removed; join again with a new token", id.Kind, id.Name)
		}
		if err != nil {
			return nil, trace.Wrap(err)
		}
		if b.Kind != string(id.Kind) {
			return nil, trace.AccessDenied("%q is a %s, not a %s", id.Name, b.Kind, id.Kind)
		}
		if id.Generation != b.Generation {
			return nil, trace.Wrap(s.lockCopied(ctx, b, id.Generation))
		}
		next := *b
		next.Generation++
		next.Renewed = s.cfg.Clock().UTC()
		data, err := json.Marshal(&next)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		item, err := s.cfg.Backend.CompareAndSwap(ctx, b.Revision, storage.Item{Key: key(b.Name), Value: data})
		if trace.IsCompareFailed(err) {
			// Another renewal of the same generation won: this one is the
			// second copy, and the next loop locks it.
			continue
		}
		if err != nil {
			return nil, trace.Wrap(err)
		}
		next.Revision = item.Revision
		return &next, nil
	}
	return nil, trace.CompareFailed("bot %q is being renewed concurrently; try again", id.Name)
}

func (s *Service) lockCopied(ctx context.Context, b *Bot, presented uint64) error {
	msg := fmt.Sprintf("certificate generation %d presented for renewal, latest is %d: identity copied?", presented, b.Generation)
	lock, err := s.cfg.Locks.Add(ctx, types.LockTarget{Bot: b.Name}, 0, msg, LockedBy)
	if err != nil {
		return trace.Wrap(err, "locking %s %q after a generation mismatch", b.Kind, b.Name)
	}
	return trace.AccessDenied("%s", (&GenerationMismatchError{Bot: fmt.Sprintf("%s %q", b.Kind, b.Name), Presented: presented, Want: b.Generation, Lock: lock.Metadata.Name}).Error())
}

// Delegate returns the roles and traits of the person agent acts for: a
// local user's current ones, else what the person had when they made the
// agent's token. A deleted person leaves the agent with nothing.
func (s *Service) Delegate(ctx context.Context, agent *certid.Identity) (roles []string, traits map[string][]string, err error) {
	if agent.OnBehalfOf == "" {
		return nil, nil, trace.BadParameter("%q acts on behalf of no one", agent.Name)
	}
	u, err := s.cfg.Users.Get(ctx, agent.OnBehalfOf)
	if err == nil {
		return u.Spec.Roles, u.Spec.Traits, nil
	}
	if !trace.IsNotFound(err) {
		return nil, nil, trace.Wrap(err)
	}
	b, berr := s.Get(ctx, agent.Name)
	if berr == nil && b.OnBehalfOf == agent.OnBehalfOf && len(b.DelegateRoles) > 0 {
		return b.DelegateRoles, b.DelegateTraits, nil
	}
	if berr != nil && !trace.IsNotFound(berr) {
		return nil, nil, trace.Wrap(berr)
	}
	return nil, nil, trace.AccessDenied("agent %q acts on behalf of %q, who is no longer a user", agent.Name, agent.OnBehalfOf)
}
