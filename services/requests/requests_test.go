package requests

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/identity/policy"
	"github.com/sigilhq/sigil/services/storage/badger"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func role(t *testing.T, name string, spec types.RoleSpec) *types.Role {
	t.Helper()
	r, err := types.NewRole(name, spec)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Roles of the tests: dev may request dba (1h, two approvals) and ops
// (default duration, one approval); lead reviews dba and ops; mfa-lead
// reviews but requires session MFA.
func checkerFor(t *testing.T, names ...string) *policy.AccessChecker {
	t.Helper()
	all := map[string]*types.Role{
		"dev": role(t, "dev", types.RoleSpec{Allow: types.RoleConditions{Request: &types.RequestConditions{Roles: []string{"dba"}, MaxDuration: types.Duration(time.Hour), Approvals: 2}}}),
		"dev-ops": role(t, "dev-ops", types.RoleSpec{Allow: types.RoleConditions{Request: &types.RequestConditions{Roles: []string{"ops"}}},
			Deny: types.RoleConditions{Request: &types.RequestConditions{Roles: []string{"root"}}}}),
		"lead":     role(t, "lead", types.RoleSpec{Allow: types.RoleConditions{ReviewRequests: &types.ReviewConditions{Roles: []string{"dba", "ops"}}}}),
		"mfa-lead": role(t, "mfa-lead", types.RoleSpec{Options: types.RoleOptions{RequireSessionMFA: true}, Allow: types.RoleConditions{ReviewRequests: &types.ReviewConditions{Roles: []string{"*"}}}}),
	}
	var rs []*types.Role
	for _, n := range names {
		rs = append(rs, all[n])
	}
	c, err := policy.NewAccessChecker(rs, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newService(t *testing.T) (*Service, *clock) {
	t.Helper()
	b, err := badger.New(context.Background(), badger.Config{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	c := &clock{now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	s, err := New(Config{Backend: b, Clock: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

func human(name string, roles ...string) *certid.Identity {
	return &certid.Identity{Name: name, Kind: certid.KindHuman, Roles: roles}
}

func TestCreateRules(t *testing.T) {
	s, _ := newService(t)
	ctx := context.Background()
	alice := human("alice", "dev", "dev-ops")
	ac := checkerFor(t, "dev", "dev-ops")
	for _, tc := range []struct {
		name string
		p    CreateParams
		want string
	}{
		{"no roles", CreateParams{Roles: []string{" , "}}, "name at least one role"},
		{"not requestable", CreateParams{Roles: []string{"admin"}}, `request for role "admin" denied: no role allows requesting it`},
		{"denied", CreateParams{Roles: []string{"root"}}, `role "dev-ops" denies request.roles "root"`},
		{"held", CreateParams{Roles: []string{"dev"}}, `you already hold role "dev"`},
		{"too long", CreateParams{Roles: []string{"dba"}, MaxDuration: 2 * time.Hour}, "--max-duration 2h0m0s exceeds the 1h0m0s that your roles allow for dba"},
		{"too short", CreateParams{Roles: []string{"dba"}, MaxDuration: time.Second}, "at least 10s"},
		{"bad resource", CreateParams{Roles: []string{"dba"}, Resources: []string{"pg1"}}, "want KIND/NAME"},
		{"long reason", CreateParams{Roles: []string{"dba"}, Reason: strings.Repeat("x", MaxReasonLen+1)}, "--reason: longer than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.p.Requester, tc.p.Checker = alice, ac
			if _, err := s.Create(ctx, tc.p); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	r, err := s.Create(ctx, CreateParams{Requester: alice, Checker: ac, Roles: []string{"dba,ops", "dba"}, Reason: "ticket 42", Resources: []string{"db/pg1"}})
	if err != nil {
		t.Fatal(err)
	}
	// Combined strictly: the shortest duration (1h for dba, 4h default for
	// ops) and the most approvals.
	if r.State != StatePending || r.Approvals != 2 || r.Expires.Sub(r.Created) != time.Hour ||
		strings.Join(r.Roles, ",") != "dba,ops" || strings.Join(r.Resources, ",") != "database/pg1" {
		t.Fatalf("request = %+v", r)
	}
	got, err := s.Get(ctx, r.ID)
	if err != nil || got.Reason != "ticket 42" {
		t.Fatalf("Get = %+v, %v", got, err)
	}
}

func TestReviewRules(t *testing.T) {
	s, clk := newService(t)
	ctx := context.Background()
	alice := human("alice", "dev")
	r, err := s.Create(ctx, CreateParams{Requester: alice, Checker: checkerFor(t, "dev"), Roles: []string{"dba"}})
	if err != nil {
		t.Fatal(err)
	}
	review := func(who *certid.Identity, c *policy.AccessChecker, approve bool, mfa bool) (*Request, error) {
		return s.Review(ctx, ReviewParams{Reviewer: who, Checker: c, ID: r.ID, Approve: approve, Reason: "ok", MFAVerified: mfa})
	}
	lead := checkerFor(t, "lead")
	if _, err := review(human("alice", "dev", "lead"), checkerFor(t, "dev", "lead"), true, false); err == nil || !strings.Contains(err.Error(), "cannot review your own") {
		t.Fatalf("self review: %v", err)
	}
	agent := &certid.Identity{Name: "copilot", Kind: certid.KindAgent, Roles: []string{"lead"}}
	if _, err := review(agent, lead, true, false); err == nil || !strings.Contains(err.Error(), "AI agents cannot review") {
		t.Fatalf("review by an agent: %v", err)
	}
	if _, err := s.Create(ctx, CreateParams{Requester: agent, Checker: checkerFor(t, "dev"), Roles: []string{"dba"}}); err == nil || !strings.Contains(err.Error(), "AI agents cannot request") {
		t.Fatalf("request by an agent: %v", err)
	}
	if _, err := review(human("mallory", "dev"), checkerFor(t, "dev"), true, false); err == nil || !strings.Contains(err.Error(), `review of role "dba" denied`) {
		t.Fatalf("review without a reviewing role: %v", err)
	}
	if _, err := review(human("erin", "mfa-lead"), checkerFor(t, "mfa-lead"), true, false); err == nil || !strings.Contains(err.Error(), "requires an MFA check") {
		t.Fatalf("review by an MFA role without MFA: %v", err)
	}
	got, err := review(human("bob", "lead"), lead, true, false)
	if err != nil || got.State != StatePending {
		t.Fatalf("first approval: %+v, %v", got, err)
	}
	// The same reviewer counts once.
	if _, err := review(human("bob", "lead"), lead, true, false); err == nil || !strings.Contains(err.Error(), "already reviewed") {
		t.Fatalf("second approval by bob: %v", err)
	}
	if got, _ := s.Get(ctx, r.ID); got.State != StatePending || len(got.Approvers()) != 1 {
		t.Fatalf("after bob twice: %+v", got)
	}
	got, err = review(human("erin", "mfa-lead"), checkerFor(t, "mfa-lead"), true, true)
	if err != nil || got.State != StateApproved || strings.Join(got.Approvers(), ",") != "bob,erin" {
		t.Fatalf("second reviewer: %+v, %v", got, err)
	}
	if _, err := review(human("carol", "lead"), lead, false, false); err == nil || !strings.Contains(err.Error(), "already approved") {
		t.Fatalf("review of an approved request: %v", err)
	}

	// Effective: the roles count while approved, for covered resources,
	// and are gone after expiry.
	elevated := human("alice", "dev", "dba")
	elevated.AccessRequests = []string{r.ID}
	g, err := s.Effective(ctx, elevated, types.KindDatabase, "pg1")
	if err != nil || strings.Join(g.Roles, ",") != "dev,dba" || !g.Until.Equal(r.Expires) {
		t.Fatalf("Effective while approved: %+v, %v", g, err)
	}
	if _, err := s.Effective(ctx, human("eve", "dba"), "", ""); err != nil {
		t.Fatal(err)
	}
	stolen := human("eve", "dba")
	stolen.AccessRequests = []string{r.ID}
	if _, err := s.Effective(ctx, stolen, "", ""); err == nil || !strings.Contains(err.Error(), "belongs to alice") {
		t.Fatalf("someone else's request: %v", err)
	}
	clk.advance(r.Expires.Sub(clk.Now()))
	if g, err := s.Effective(ctx, elevated, types.KindDatabase, "pg1"); err != nil || strings.Join(g.Roles, ",") != "dev" {
		t.Fatalf("Effective after expiry: %+v, %v", g, err)
	}

	// A pending request expires and can no longer be reviewed.
	r2, err := s.Create(ctx, CreateParams{Requester: alice, Checker: checkerFor(t, "dev"), Roles: []string{"dba"}, MaxDuration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	clk.advance(2 * time.Minute)
	if _, err := s.Review(ctx, ReviewParams{Reviewer: human("bob", "lead"), Checker: lead, ID: r2.ID, Approve: true}); err == nil || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("review after expiry: %v", err)
	}
	// One denial denies.
	r3, err := s.Create(ctx, CreateParams{Requester: alice, Checker: checkerFor(t, "dev"), Roles: []string{"dba"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.Review(ctx, ReviewParams{Reviewer: human("bob", "lead"), Checker: lead, ID: r3.ID, Approve: false}); err != nil || got.State != StateDenied {
		t.Fatalf("denial: %+v, %v", got, err)
	}
}

// Resource-scoped requests apply only to the resources they name, and
// never where no resource is named.
func TestEffectiveScope(t *testing.T) {
	s, _ := newService(t)
	ctx := context.Background()
	alice := human("alice", "dev")
	r, err := s.Create(ctx, CreateParams{Requester: alice, Checker: checkerFor(t, "dev"), Roles: []string{"dba"}, Resources: []string{"db/pg1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, who := range []string{"bob", "carol"} {
		if _, err := s.Review(ctx, ReviewParams{Reviewer: human(who, "lead"), Checker: checkerFor(t, "lead"), ID: r.ID, Approve: true}); err != nil {
			t.Fatal(err)
		}
	}
	id := human("alice", "dev", "dba")
	id.AccessRequests = []string{r.ID}
	for _, tc := range []struct {
		kind, name, want string
	}{
		{types.KindDatabase, "pg1", "dev,dba"},
		{types.KindDatabase, "pg2", "dev"},
		{types.KindNode, "pg1", "dev"},
		{"", "", "dev"},
	} {
		g, err := s.Effective(ctx, id, tc.kind, tc.name)
		if err != nil || strings.Join(g.Roles, ",") != tc.want {
			t.Errorf("Effective(%s/%s) = %+v, %v; want roles %s", tc.kind, tc.name, g, err, tc.want)
		}
	}
}
