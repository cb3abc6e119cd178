package requests

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/identity/policy"
	"github.com/sigilhq/sigil/services/storage"
)

// Request states. Expired is derived from Expires, never stored.
const (
	StatePending  = "pending"
	StateApproved = "approved"
	StateDenied   = "denied"
	StateExpired  = "expired"
)

const (
	// keyPrefix holds one item per request.
	keyPrefix = "/access_requests/"
	// keepAfterExpiry is how long an ended request stays listable.
	keepAfterExpiry = 7 * 24 * time.Hour
	// MinDuration is the shortest request.
	MinDuration = 10 * time.Second
	// MaxReasonLen bounds a request's or review's reason.
	MaxReasonLen = 1024
	// maxRoles and maxResources bound one request.
	maxRoles     = 32
	maxResources = 32
	// casAttempts bounds retries of a contended review.
	casAttempts = 16
)

// Request is one access request as stored.
type Request struct {
	ID        string    `json:"id"`
	User      string    `json:"user"`
	Kind      string    `json:"kind"`
	Roles     []string  `json:"roles"`
	Resources []string  `json:"resources,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	State     string    `json:"state"`
	Created   time.Time `json:"created"`
	Expires   time.Time `json:"expires"`
	Approvals int       `json:"approvals"`
	Reviews   []Review  `json:"reviews,omitempty"`
}

// Review is one reviewer's decision.
type Review struct {
	Reviewer string    `json:"reviewer"`
	Approve  bool      `json:"approve"`
	Reason   string    `json:"reason,omitempty"`
	Time     time.Time `json:"time"`
}

// StateAt is the request's state at now: a pending or approved request
// past its expiry is expired.
func (r *Request) StateAt(now time.Time) string {
	if (r.State == StatePending || r.State == StateApproved) && !now.Before(r.Expires) {
		return StateExpired
	}
	return r.State
}

// Approvers lists who approved, in order.
func (r *Request) Approvers() []string {
	var out []string
	for _, rv := range r.Reviews {
		if rv.Approve {
			out = append(out, rv.Reviewer)
		}
	}
	return out
}

// Covers reports whether the request's roles apply to the resource kind/name.
func (r *Request) Covers(kind, name string) bool {
	return len(r.Resources) == 0 || slices.Contains(r.Resources, kind+"/"+name)
}

// Config configures a Service.
type Config struct {
	Backend storage.Backend
	// Clock defaults to time.Now.
	Clock func() time.Time
}

// CheckAndSetDefaults validates c and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Backend == nil {
		return trace.BadParameter("requests: missing Backend")
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return nil
}

// Service stores access requests and applies the review rules.
type Service struct {
	cfg Config
}

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return &Service{cfg: cfg}, nil
}

// Now is the service's clock.
func (s *Service) Now() time.Time { return s.cfg.Clock() }

// CreateParams is what CreateRequest needs.
type CreateParams struct {
	// Requester and Checker (over the requester's roles) decide what may
	// be asked for.
	Requester *certid.Identity
	Checker   *policy.AccessChecker
	Roles     []string
	Reason    string
	// MaxDuration, when set, asks for less than the roles allow.
	MaxDuration time.Duration
	// Resources limit the roles to "kind/name" resources ("db/pg1" is
	// accepted for "database/pg1").
	Resources []string
}

// Create validates and stores a new pending request.
func (s *Service) Create(ctx context.Context, p CreateParams) (*Request, error) {
	if p.Requester == nil || p.Checker == nil {
		return nil, trace.BadParameter("requests: missing requester")
	}
	if p.Requester.Kind == certid.KindAgent {
		return nil, trace.AccessDenied("AI agents cannot request access; the person they act for can")
	}
	roles, err := normaliseRoles(p.Roles)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if len(p.Reason) > MaxReasonLen {
		return nil, trace.BadParameter("--reason: longer than %d characters", MaxReasonLen)
	}
	resources, err := normaliseResources(p.Resources)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	limit, approvals := time.Duration(0), 1
	for _, role := range roles {
		if slices.Contains(p.Requester.Roles, role) {
			return nil, trace.BadParameter("you already hold role %q; request only roles you lack", role)
		}
		if err := p.Checker.CheckRequestRole(role); err != nil {
			return nil, trace.Wrap(err)
		}
		d, n := p.Checker.RequestLimits(role)
		if limit == 0 || d < limit {
			limit = d
		}
		approvals = max(approvals, n)
	}
	duration := limit
	switch {
	case p.MaxDuration < 0:
		return nil, trace.BadParameter("--max-duration must be positive")
	case p.MaxDuration > limit:
		return nil, trace.BadParameter("--max-duration %s exceeds the %s that your roles allow for %s", p.MaxDuration, limit, strings.Join(roles, ", "))
	case p.MaxDuration > 0 && p.MaxDuration < MinDuration:
		return nil, trace.BadParameter("--max-duration must be at least %s", MinDuration)
	case p.MaxDuration > 0:
		duration = p.MaxDuration
	}
	now := s.cfg.Clock().UTC()
	r := &Request{
		ID:        uuid.NewString(),
		User:      p.Requester.Name,
		Kind:      string(p.Requester.Kind),
		Roles:     roles,
		Resources: resources,
		Reason:    p.Reason,
		State:     StatePending,
		Created:   now,
		Expires:   now.Add(duration),
		Approvals: approvals,
	}
	item, err := s.item(r)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if _, err := s.cfg.Backend.Create(ctx, item); err != nil {
		return nil, trace.Wrap(err)
	}
	return r, nil
}

// Get returns a request by id.
func (s *Service) Get(ctx context.Context, id string) (*Request, error) {
	r, _, err := s.get(ctx, id)
	return r, trace.Wrap(err)
}

func (s *Service) get(ctx context.Context, id string) (*Request, int64, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, 0, trace.BadParameter("%q is not an access request id", truncate(id, 64))
	}
	item, err := s.cfg.Backend.Get(ctx, keyPrefix+id)
	if trace.IsNotFound(err) {
		return nil, 0, trace.NotFound("access request %s not found", id)
	}
	if err != nil {
		return nil, 0, trace.Wrap(err)
	}
	var r Request
	if err := json.Unmarshal(item.Value, &r); err != nil {
		return nil, 0, trace.Wrap(err, "decoding access request %s", id)
	}
	return &r, item.Revision, nil
}

// List returns every stored request, newest first.
func (s *Service) List(ctx context.Context) ([]*Request, error) {
	items, err := s.cfg.Backend.List(ctx, keyPrefix, 0)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	out := make([]*Request, 0, len(items))
	for _, it := range items {
		var r Request
		if err := json.Unmarshal(it.Value, &r); err != nil {
			return nil, trace.Wrap(err, "decoding access request %s", strings.TrimPrefix(it.Key, keyPrefix))
		}
		out = append(out, &r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, nil
}

// ReviewParams is what Review needs.
type ReviewParams struct {
	// Reviewer and Checker (over the reviewer's roles) decide whether the
	// reviewer may review every role of the request.
	Reviewer *certid.Identity
	Checker  *policy.AccessChecker
	ID       string
	Approve  bool
	Reason   string
	// MFAVerified says the reviewer passed an MFA check for this review;
	// a reviewer whose roles require session MFA needs it.
	MFAVerified bool
}

// Review records a decision on a pending request: enough distinct
// approvals approve it, one denial denies it.
func (s *Service) Review(ctx context.Context, p ReviewParams) (*Request, error) {
	if p.Reviewer == nil || p.Checker == nil {
		return nil, trace.BadParameter("requests: missing reviewer")
	}
	// The daemon host's sigilctl identity is a bot acting for an admin;
	// an AI agent never reviews.
	if p.Reviewer.Kind == certid.KindAgent {
		return nil, trace.AccessDenied("AI agents cannot review access requests; %q is an agent", p.Reviewer.Name)
	}
	if len(p.Reason) > MaxReasonLen {
		return nil, trace.BadParameter("--reason: longer than %d characters", MaxReasonLen)
	}
	for attempt := 0; attempt < casAttempts; attempt++ {
		r, rev, err := s.get(ctx, p.ID)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		now := s.cfg.Clock().UTC()
		if err := checkReview(r, p, now); err != nil {
			return nil, trace.Wrap(err)
		}
		r.Reviews = append(r.Reviews, Review{Reviewer: p.Reviewer.Name, Approve: p.Approve, Reason: p.Reason, Time: now})
		switch {
		case !p.Approve:
			r.State = StateDenied
		case len(r.Approvers()) >= r.Approvals:
			r.State = StateApproved
		}
		item, err := s.item(r)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		if _, err := s.cfg.Backend.CompareAndSwap(ctx, rev, item); err != nil {
			if trace.IsCompareFailed(err) {
				continue
			}
			return nil, trace.Wrap(err)
		}
		return r, nil
	}
	return nil, trace.CompareFailed("access request %s changed under too many concurrent reviews; try again", p.ID)
}

func checkReview(r *Request, p ReviewParams, now time.Time) error {
	switch st := r.StateAt(now); st {
	case StatePending:
	case StateExpired:
		return trace.BadParameter("access request %s expired at %s; it can no longer be reviewed", r.ID, r.Expires.Format(time.RFC3339))
	default:
		return trace.BadParameter("access request %s is already %s", r.ID, st)
	}
	if p.Reviewer.Name == r.User {
		return trace.AccessDenied("you cannot review your own access request")
	}
	for _, rv := range r.Reviews {
		if rv.Reviewer == p.Reviewer.Name {
			return trace.AlreadyExists("you already reviewed access request %s; each reviewer counts once", r.ID)
		}
	}
	for _, role := range r.Roles {
		if err := p.Checker.CheckReviewRole(role); err != nil {
			return trace.Wrap(err)
		}
	}
	if role := p.Checker.SessionMFARole(); role != "" && !p.MFAVerified {
		return trace.AccessDenied("role %q requires an MFA check to review access requests (require_session_mfa); review from the web console with your MFA device", role)
	}
	return nil
}

// Grant is what the access requests in a certificate add for one resource.
type Grant struct {
	// Roles are the certificate's roles that apply: its own roles, minus
	// the roles of requests that are not approved, have expired or do not
	// cover the resource.
	Roles []string
	// Until is when the earliest request still in use expires; zero when
	// the certificate holds none. Sessions end then.
	Until time.Time
	// Requests are the ids in use.
	Requests []string
}

// Effective applies the access requests of id to one resource (kind and
// name; both empty for resource-independent uses). Roles a request added
// count only while it is approved and unexpired, and only for resources it
// covers. Create refuses to request a role the user holds, so a
// request's roles were not in the base set.
func (s *Service) Effective(ctx context.Context, id *certid.Identity, kind, name string) (*Grant, error) {
	g := &Grant{Roles: id.Roles}
	if len(id.AccessRequests) == 0 {
		return g, nil
	}
	now := s.cfg.Clock()
	drop := map[string]bool{}
	for _, reqID := range id.AccessRequests {
		r, err := s.Get(ctx, reqID)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		if r.User != id.Name {
			return nil, trace.AccessDenied("access request %s belongs to %s, not %s", reqID, r.User, id.Name)
		}
		// A request limited to some resources never applies where no
		// resource is named (listings, admin API rules).
		usable := r.StateAt(now) == StateApproved && r.Covers(kind, name)
		if !usable {
			for _, role := range r.Roles {
				drop[role] = true
			}
			continue
		}
		g.Requests = append(g.Requests, r.ID)
		if g.Until.IsZero() || r.Expires.Before(g.Until) {
			g.Until = r.Expires
		}
	}
	if len(drop) > 0 {
		g.Roles = slices.DeleteFunc(slices.Clone(id.Roles), func(role string) bool { return drop[role] })
	}
	return g, nil
}

func (s *Service) item(r *Request) (storage.Item, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return storage.Item{}, trace.Wrap(err)
	}
	return storage.Item{Key: keyPrefix + r.ID, Value: b, Expires: r.Expires.Add(keepAfterExpiry)}, nil
}

func normaliseRoles(in []string) ([]string, error) {
	var out []string
	for _, r := range in {
		for _, part := range strings.Split(r, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			if err := types.ValidateName("--roles", part); err != nil {
				return nil, trace.Wrap(err)
			}
			if !slices.Contains(out, part) {
				out = append(out, part)
			}
		}
	}
	if len(out) == 0 {
		return nil, trace.BadParameter("--roles: name at least one role to request")
	}
	if len(out) > maxRoles {
		return nil, trace.BadParameter("--roles: at most %d roles per request", maxRoles)
	}
	return out, nil
}

// resourceKinds maps what users type to resource kinds.
var resourceKinds = map[string]string{
	"db": types.KindDatabase, types.KindDatabase: types.KindDatabase,
	types.KindNode: types.KindNode,
}

func normaliseResources(in []string) ([]string, error) {
	var out []string
	for _, r := range in {
		kind, name, ok := strings.Cut(r, "/")
		k, known := resourceKinds[kind]
		if !ok || !known {
			return nil, trace.BadParameter("--resource %q: want KIND/NAME with KIND db or node, e.g. db/pg1", truncate(r, 64))
		}
		if err := types.ValidateName("--resource", name); err != nil {
			return nil, trace.Wrap(err)
		}
		if v := k + "/" + name; !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	if len(out) > maxResources {
		return nil, trace.BadParameter("--resource: at most %d resources per request", maxResources)
	}
	return out, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s...", strings.ToValidUTF8(s[:n], ""))
}
