package approvals

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/storage"
)

const (
	// keyPrefix holds one item per approval.
	keyPrefix = "/write_approvals/"
	// byKeyPrefix indexes live approvals by what they are bound to:
	// /write_approvals_by_key/<match hash>/<id>. Use lists one hash, so
	// it never scans every approval.
	byKeyPrefix = "/write_approvals_by_key/"
	// pendingPrefix indexes pending approvals per agent
	// (/write_approvals_pending/<agent hash>/<id>) to bound them.
	pendingPrefix = "/write_approvals_pending/"
	// keepAfterExpiry is how long an ended approval stays listable.
	keepAfterExpiry = 7 * 24 * time.Hour
	// MaxReasonLen bounds a review's reason.
	MaxReasonLen = 1024
	// DefaultMaxPending bounds the pending approvals of one agent.
	DefaultMaxPending = 100
	// maxFingerprintLen and maxFieldLen bound what the gateway hands over.
	maxFingerprintLen = 512
	maxFieldLen       = 256
	// casAttempts bounds retries of a contended state change.
	casAttempts = 16
)

// Approval is one write waiting for, or having had, a human's decision.
type Approval struct {
	ID string `json:"id"`
	// Agent is the identity that ran the write; AgentKind its kind.
	Agent      string   `json:"agent"`
	AgentKind  string   `json:"agent_kind"`
	OnBehalfOf string   `json:"on_behalf_of,omitempty"`
	Roles      []string `json:"roles,omitempty"`
	Database   string   `json:"database"`
	DBUser     string   `json:"db_user,omitempty"`
	DBName     string   `json:"db_name,omitempty"`
	// Statement is what the reviewer sees (at most MaxStatementLen bytes);
	// Fingerprint is what the approval is bound to.
	Statement   string    `json:"statement"`
	Fingerprint string    `json:"fingerprint"`
	Class       string    `json:"class,omitempty"`
	SessionID   string    `json:"session_id,omitempty"`
	ClientAddr  string    `json:"client_addr,omitempty"`
	State       string    `json:"state"`
	Created     time.Time `json:"created"`
	// Expires ends a pending approval (Created+PendingTTL) or the use
	// window of an approved one (review time + UseWindow).
	Expires     time.Time `json:"expires"`
	Reviewer    string    `json:"reviewer,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	ReviewTime  time.Time `json:"review_time,omitzero"`
	UsedAt      time.Time `json:"used_at,omitzero"`
	UsedSession string    `json:"used_session,omitempty"`
}

// StateAt is the approval's state at now: pending or approved past its
// expiry is expired.
func (a *Approval) StateAt(now time.Time) string {
	if (a.State == StatePending || a.State == StateApproved) && !now.Before(a.Expires) {
		return StateExpired
	}
	return a.State
}

// matches reports whether a is bound to what req asks to run.
func (a *Approval) matches(req *UseRequest) bool {
	return a.Agent == req.Identity.Name && a.AgentKind == string(req.Identity.Kind) &&
		a.Database == req.Database && a.DBUser == req.DBUser && a.DBName == req.DBName &&
		a.Fingerprint == req.Fingerprint
}

// Config configures a Service.
type Config struct {
	Backend storage.Backend
	// MaxPending bounds the pending approvals of one agent; default
	// DefaultMaxPending.
	MaxPending int
	// Clock defaults to time.Now.
	Clock func() time.Time
}

// CheckAndSetDefaults validates c and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Backend == nil {
		return trace.BadParameter("approvals: missing Backend")
	}
	if c.MaxPending < 0 {
		return trace.BadParameter("approvals: MaxPending must not be negative")
	}
	if c.MaxPending == 0 {
		c.MaxPending = DefaultMaxPending
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return nil
}

// Service stores write approvals and applies the review rules.
type Service struct {
	cfg Config
}

var _ WriteApprovals = (*Service)(nil)

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return &Service{cfg: cfg}, nil
}

// Now is the service's clock.
func (s *Service) Now() time.Time { return s.cfg.Clock().UTC() }

// Use consumes an approved, unused, unexpired approval bound to the
// agent, database and fingerprint of req (the write runs once), or else
// returns the pending approval for them, creating one if there is none.
func (s *Service) Use(ctx context.Context, req UseRequest) (UseResult, error) {
	if err := checkUse(&req); err != nil {
		return UseResult{}, trace.Wrap(err)
	}
	now := s.Now()
	prefix := keyDir(string(req.Identity.Kind), req.Identity.Name, req.Database, req.DBUser, req.DBName, req.Fingerprint)
	items, err := s.cfg.Backend.List(ctx, prefix, 0)
	if err != nil {
		return UseResult{}, trace.Wrap(err)
	}
	var pending *Approval
	for _, it := range items {
		res, p, err := s.tryUse(ctx, it.Key, strings.TrimPrefix(it.Key, prefix), &req, now)
		if err != nil {
			return UseResult{}, trace.Wrap(err)
		}
		if res != nil {
			return *res, nil
		}
		if p != nil && (pending == nil || p.Created.Before(pending.Created)) {
			pending = p
		}
	}
	if pending != nil {
		return UseResult{ID: pending.ID}, nil
	}
	a, err := s.create(ctx, &req, prefix, now)
	if err != nil {
		return UseResult{}, trace.Wrap(err)
	}
	return UseResult{ID: a.ID}, nil
}

// tryUse looks at one indexed approval: approved, it is marked used (the
// compare-and-swap makes sure only one use wins); pending, it is
// returned; ended, its index entry goes.
func (s *Service) tryUse(ctx context.Context, indexKey, id string, req *UseRequest, now time.Time) (*UseResult, *Approval, error) {
	for range casAttempts {
		a, rev, err := s.get(ctx, id)
		if trace.IsNotFound(err) {
			// The index entry is written before the approval, and an
			// approval may have been pruned: either way, nothing to use.
			return nil, nil, nil
		}
		if err != nil {
			return nil, nil, trace.Wrap(err)
		}
		if !a.matches(req) {
			return nil, nil, nil
		}
		switch a.StateAt(now) {
		case StatePending:
			return nil, a, nil
		case StateApproved:
		default:
			s.forget(ctx, indexKey)
			return nil, nil, nil
		}
		a.State, a.UsedAt, a.UsedSession = StateUsed, now, req.SessionID
		item, err := s.item(a)
		if err != nil {
			return nil, nil, trace.Wrap(err)
		}
		if _, err := s.cfg.Backend.CompareAndSwap(ctx, rev, item); err != nil {
			if trace.IsCompareFailed(err) {
				continue
			}
			return nil, nil, trace.Wrap(err)
		}
		s.forget(ctx, indexKey)
		return &UseResult{ID: a.ID, Approved: true, Reviewer: a.Reviewer}, nil, nil
	}
	return nil, nil, trace.CompareFailed("write approval %s changed under too many concurrent uses; try again", id)
}

func (s *Service) create(ctx context.Context, req *UseRequest, prefix string, now time.Time) (*Approval, error) {
	id := req.Identity
	pendingDir := pendingPrefix + agentHash(string(id.Kind), id.Name) + "/"
	// Two concurrent creates may both pass the count: the bound is
	// approximate by one or two, which is enough to stop a runaway agent.
	waiting, err := s.pendingCount(ctx, pendingDir, now)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if waiting >= s.cfg.MaxPending {
		who := "a reviewer"
		if id.OnBehalfOf != "" {
			who = id.OnBehalfOf
		}
		return nil, trace.LimitExceeded("%s %q already has %d write approvals waiting for review; ask %s to review them (sigil approval ls --state pending) or wait until they expire (%s after they were asked for)",
			id.Kind, id.Name, waiting, who, PendingTTL)
	}
	a := &Approval{
		ID:          uuid.NewString(),
		Agent:       id.Name,
		AgentKind:   string(id.Kind),
		OnBehalfOf:  id.OnBehalfOf,
		Roles:       slices.Clone(id.Roles),
		Database:    req.Database,
		DBUser:      req.DBUser,
		DBName:      req.DBName,
		Statement:   req.Statement,
		Fingerprint: req.Fingerprint,
		Class:       req.Class,
		SessionID:   req.SessionID,
		ClientAddr:  req.ClientAddr,
		State:       StatePending,
		Created:     now,
		Expires:     now.Add(PendingTTL),
	}
	item, err := s.item(a)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	// Index entries first: an entry without its approval is skipped, an
	// approval without its entry could never be used. Entries go when
	// their approval is seen to have ended; the backend's expiry, as for
	// the approval itself, is only the backstop. The pending entry holds
	// the approval's expiry, so that counting needs no approval reads.
	indexes := []storage.Item{
		{Key: prefix + a.ID, Value: []byte(a.ID), Expires: item.Expires},
		{Key: pendingDir + a.ID, Value: []byte(a.Expires.Format(time.RFC3339Nano)), Expires: item.Expires},
	}
	for _, ix := range indexes {
		if _, err := s.cfg.Backend.Create(ctx, ix); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	if _, err := s.cfg.Backend.Create(ctx, item); err != nil {
		return nil, trace.Wrap(err)
	}
	return a, nil
}

// pendingCount counts the live entries under an agent's pending index,
// dropping those whose approval expired.
func (s *Service) pendingCount(ctx context.Context, dir string, now time.Time) (int, error) {
	items, err := s.cfg.Backend.List(ctx, dir, 0)
	if err != nil {
		return 0, trace.Wrap(err)
	}
	n := 0
	for _, it := range items {
		if until, err := time.Parse(time.RFC3339Nano, string(it.Value)); err == nil && now.Before(until) {
			n++
			continue
		}
		s.forget(ctx, it.Key)
	}
	return n, nil
}

// forget drops an index entry that no longer leads to a usable approval.
// A failure is harmless: the entry expires on its own, and entries that
// lead nowhere are skipped.
func (s *Service) forget(ctx context.Context, key string) {
	_ = s.cfg.Backend.Delete(ctx, key)
}

// Get returns an approval by id.
func (s *Service) Get(ctx context.Context, id string) (*Approval, error) {
	a, _, err := s.get(ctx, id)
	return a, trace.Wrap(err)
}

// NotFound is the error for an approval that does not exist, or that the
// caller may not see (the API answers both alike).
func NotFound(id string) error {
	return trace.NotFound("write approval %s not found; run \"sigil approval ls\" to see the approvals you may see", truncate(id, 64))
}

func (s *Service) get(ctx context.Context, id string) (*Approval, int64, error) {
	if _, err := uuid.Parse(id); err != nil {
		return nil, 0, trace.BadParameter("%q is not a write approval id; run \"sigil approval ls\" to see the ids", truncate(id, 64))
	}
	item, err := s.cfg.Backend.Get(ctx, keyPrefix+id)
	if trace.IsNotFound(err) {
		return nil, 0, NotFound(id)
	}
	if err != nil {
		return nil, 0, trace.Wrap(err)
	}
	var a Approval
	if err := json.Unmarshal(item.Value, &a); err != nil {
		return nil, 0, trace.Wrap(err, "decoding write approval %s", id)
	}
	return &a, item.Revision, nil
}

// Filter selects approvals in List; empty fields select all.
type Filter struct {
	// State is one of the states, or "all" (same as empty).
	State      string
	Agent      string
	OnBehalfOf string
}

// CheckState validates a state filter.
func CheckState(state string) error {
	switch state {
	case "", "all", StatePending, StateApproved, StateDenied, StateUsed, StateExpired:
		return nil
	}
	return trace.BadParameter("--state: %q is not one of pending, approved, denied, used, expired, all", truncate(state, 32))
}

// List returns the stored approvals f selects, newest first. Ended
// approvals stay listable for a week, then the backend drops them.
func (s *Service) List(ctx context.Context, f Filter) ([]*Approval, error) {
	if err := CheckState(f.State); err != nil {
		return nil, trace.Wrap(err)
	}
	items, err := s.cfg.Backend.List(ctx, keyPrefix, 0)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	now := s.Now()
	out := make([]*Approval, 0, len(items))
	for _, it := range items {
		var a Approval
		if err := json.Unmarshal(it.Value, &a); err != nil {
			return nil, trace.Wrap(err, "decoding write approval %s", strings.TrimPrefix(it.Key, keyPrefix))
		}
		switch {
		case f.State != "" && f.State != "all" && a.StateAt(now) != f.State,
			f.Agent != "" && a.Agent != f.Agent,
			f.OnBehalfOf != "" && a.OnBehalfOf != f.OnBehalfOf:
			continue
		}
		out = append(out, &a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, nil
}

// Review approves or denies a pending approval. Only a person reviews,
// never the agent itself: the person the agent acts for, or anyone when
// canReviewAll (the API sets it from the reviewer's roles). Approved, the
// write may run once within UseWindow; a denial is final.
func (s *Service) Review(ctx context.Context, reviewer *certid.Identity, id string, approve bool, reason string, canReviewAll bool) (*Approval, error) {
	if reviewer == nil {
		return nil, trace.BadParameter("approvals: missing reviewer")
	}
	if len(reason) > MaxReasonLen {
		return nil, trace.BadParameter("--reason: longer than %d characters", MaxReasonLen)
	}
	for range casAttempts {
		a, rev, err := s.get(ctx, id)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		now := s.Now()
		if err := checkReview(a, reviewer, canReviewAll, now); err != nil {
			return nil, trace.Wrap(err)
		}
		a.Reviewer, a.Reason, a.ReviewTime = reviewer.Name, reason, now
		a.State = StateDenied
		if approve {
			a.State, a.Expires = StateApproved, now.Add(UseWindow)
		}
		item, err := s.item(a)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		if _, err := s.cfg.Backend.CompareAndSwap(ctx, rev, item); err != nil {
			if trace.IsCompareFailed(err) {
				continue
			}
			return nil, trace.Wrap(err)
		}
		s.forget(ctx, pendingPrefix+agentHash(a.AgentKind, a.Agent)+"/"+a.ID)
		if !approve {
			s.forget(ctx, keyDir(a.AgentKind, a.Agent, a.Database, a.DBUser, a.DBName, a.Fingerprint)+a.ID)
		}
		return a, nil
	}
	return nil, trace.CompareFailed("write approval %s changed under too many concurrent reviews; try again", id)
}

func checkReview(a *Approval, reviewer *certid.Identity, canReviewAll bool, now time.Time) error {
	if reviewer.Kind != certid.KindHuman {
		return trace.AccessDenied("only people review write approvals; %s %q cannot", reviewer.Kind, reviewer.Name)
	}
	if reviewer.Name == a.Agent {
		return trace.AccessDenied("%q cannot review its own write", reviewer.Name)
	}
	if reviewer.Name != a.OnBehalfOf && !canReviewAll {
		if a.OnBehalfOf == "" {
			return trace.AccessDenied("write approval %s is for %s %q, which acts for nobody; only someone whose role allows \"update\" on \"approvals\" may review it", a.ID, a.AgentKind, a.Agent)
		}
		return trace.AccessDenied("write approval %s is for agent %q acting on behalf of %q; only %s, or someone whose role allows \"update\" on \"approvals\", may review it", a.ID, a.Agent, a.OnBehalfOf, a.OnBehalfOf)
	}
	switch st := a.StateAt(now); st {
	case StatePending:
		return nil
	case StateExpired:
		return trace.BadParameter("write approval %s expired at %s; the agent has to run the statement again to ask anew", a.ID, a.Expires.Format(time.RFC3339))
	default:
		return trace.BadParameter("write approval %s is already %s", a.ID, st)
	}
}

func (s *Service) item(a *Approval) (storage.Item, error) {
	b, err := json.Marshal(a)
	if err != nil {
		return storage.Item{}, trace.Wrap(err)
	}
	return storage.Item{Key: keyPrefix + a.ID, Value: b, Expires: a.Expires.Add(keepAfterExpiry)}, nil
}

// checkUse validates req and bounds what is stored from it.
func checkUse(req *UseRequest) error {
	id := req.Identity
	switch {
	case id == nil || id.Name == "":
		return trace.BadParameter("approvals: missing identity")
	case req.Database == "":
		return trace.BadParameter("approvals: missing database")
	case req.Fingerprint == "":
		return trace.BadParameter("approvals: missing statement fingerprint")
	case len(req.Fingerprint) > maxFingerprintLen:
		return trace.BadParameter("approvals: statement fingerprint longer than %d bytes", maxFingerprintLen)
	}
	for _, f := range []string{id.Name, id.OnBehalfOf, req.Database, req.DBUser, req.DBName, req.Class} {
		if len(f) > maxFieldLen {
			return trace.BadParameter("approvals: a name is longer than %d bytes", maxFieldLen)
		}
	}
	req.Statement = clip(req.Statement, MaxStatementLen)
	req.SessionID = clip(req.SessionID, maxFieldLen)
	req.ClientAddr = clip(req.ClientAddr, maxFieldLen)
	return nil
}

// keyDir is the by-key index directory of what an approval is bound to:
// the agent, the database with the db user and name it was asked for (a
// write approved in one database must not run in another of the same
// server), and the statement's fingerprint. Use lists it for a request;
// a review drops the approval's entry from it.
func keyDir(kind, agent, database, dbUser, dbName, fingerprint string) string {
	return byKeyPrefix + hashFields(kind, agent, database, dbUser, dbName, fingerprint) + "/"
}

func agentHash(kind, name string) string { return hashFields(kind, name) }

// hashFields hashes length-prefixed fields, so that no two different
// field lists share an encoding.
func hashFields(fields ...string) string {
	h := sha256.New()
	for _, f := range fields {
		h.Write([]byte(strconv.Itoa(len(f)) + ":" + f))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// clip cuts s to at most n bytes of valid UTF-8.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s...", clip(s, n))
}
