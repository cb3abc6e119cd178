package apiserver_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/apiserver"
	"github.com/sigilhq/sigil/services/approvals"
	"github.com/sigilhq/sigil/services/storage/badger"
)

// withApprovals gives the server a write approvals service on its clock.
func withApprovals(t *testing.T, out **approvals.Service) envOption {
	return func(c *apiserver.Config) {
		b, err := badger.New(context.Background(), badger.Config{InMemory: true})
		must(t, err)
		t.Cleanup(func() { b.Close() })
		svc, err := approvals.New(approvals.Config{Backend: b, Clock: c.Clock})
		must(t, err)
		c.Approvals, *out = svc, svc
	}
}

func listIDs(t *testing.T, c *client.Client, state string) []string {
	t.Helper()
	resp, err := c.Approvals.ListApprovals(context.Background(), connect.NewRequest(&sigilv1.ListApprovalsRequest{State: state}))
	must(t, err)
	var ids []string
	for _, a := range resp.Msg.Approvals {
		ids = append(ids, a.Id)
	}
	return ids
}

func sameIDs(got []string, want ...string) bool {
	return strings.Join(got, ",") == strings.Join(want, ",")
}

func TestWriteApprovalsAPI(t *testing.T) {
	var svc *approvals.Service
	e := newEnv(t, withApprovals(t, &svc))
	ctx := context.Background()
	admin := e.admin()
	reviewRule := []types.Rule{{Resources: []string{types.RuleResourceApprovals}, Verbs: []string{types.VerbUpdate}}}
	createRole(t, admin, "plain", types.RoleSpec{})
	createRole(t, admin, "approver", types.RoleSpec{Allow: types.RoleConditions{Rules: reviewRule}})
	createRole(t, admin, "mfa-approver", types.RoleSpec{Options: types.RoleOptions{RequireSessionMFA: true}, Allow: types.RoleConditions{Rules: reviewRule}})
	createRole(t, admin, "auditor", types.RoleSpec{Allow: types.RoleConditions{Rules: []types.Rule{{Resources: []string{types.RuleResourceApprovals}, Verbs: []string{types.VerbList}}}}})

	human := func(name string, roles ...string) *certid.Identity {
		return &certid.Identity{Name: name, Kind: certid.KindHuman, Roles: roles}
	}
	agent := func(name, person string) *certid.Identity {
		return &certid.Identity{Name: name, Kind: certid.KindAgent, Roles: []string{"plain"}, OnBehalfOf: person}
	}
	use := func(id *certid.Identity, db string) string {
		t.Helper()
		res, err := svc.Use(ctx, approvals.UseRequest{Identity: id, Database: db, DBUser: "app", DBName: "shop",
			Statement: "DELETE FROM carts WHERE id = 7", Fingerprint: "fp-" + db, Class: "write", SessionID: "s1"})
		must(t, err)
		e.clock.Advance(time.Second)
		return res.ID
	}
	claude, cron := agent("claude", "alice"), agent("cron", "")
	a1 := use(claude, "pg1")
	a2 := use(agent("gpt", "carol"), "pg1")
	a3 := use(cron, "pg1")
	a4 := use(claude, "pg2")

	alice := e.clientFor(human("alice", "plain"))
	carol := e.clientFor(human("carol", "plain"))
	bob := e.clientFor(human("bob", "approver"))
	auditor := e.clientFor(human("eve", "auditor"))
	cronClient := e.clientFor(cron)

	// Who sees what: a person the approvals of agents acting for them, an
	// agent its own, reviewers and auditors of approvals all of them.
	for name, tc := range map[string]struct {
		c    *client.Client
		want []string
	}{
		"alice":   {alice, []string{a4, a1}},
		"carol":   {carol, []string{a2}},
		"bob":     {bob, []string{a4, a3, a2, a1}},
		"auditor": {auditor, []string{a4, a3, a2, a1}},
		"agent":   {cronClient, []string{a3}},
	} {
		if got := listIDs(t, tc.c, ""); !sameIDs(got, tc.want...) {
			t.Errorf("%s sees %v, want %v", name, got, tc.want)
		}
	}
	_, err := alice.Approvals.GetApproval(ctx, connect.NewRequest(&sigilv1.GetApprovalRequest{Id: a2}))
	requireCode(t, err, connect.CodeNotFound, "write approval "+a2+" not found", `run "sigil approval ls"`)
	got, err := alice.Approvals.GetApproval(ctx, connect.NewRequest(&sigilv1.GetApprovalRequest{Id: a1}))
	must(t, err)
	if g := got.Msg.Approval; g.Agent != "claude" || g.AgentKind != "agent" || g.OnBehalfOf != "alice" || g.Database != "pg1" ||
		g.DbUser != "app" || g.DbName != "shop" || g.Statement != "DELETE FROM carts WHERE id = 7" || g.State != "pending" ||
		g.Class != "write" || g.GetExpires() == nil || g.GetReviewTime() != nil {
		t.Fatalf("approval = %v", g)
	}
	_, err = bob.Approvals.ListApprovals(ctx, connect.NewRequest(&sigilv1.ListApprovalsRequest{State: "done"}))
	requireCode(t, err, connect.CodeInvalidArgument, `--state: "done" is not one of`)

	review := func(c *client.Client, id string, approve bool, reason string) (*sigilv1.WriteApproval, error) {
		resp, err := c.Approvals.ReviewApproval(ctx, connect.NewRequest(&sigilv1.ReviewApprovalRequest{Id: id, Approve: approve, Reason: reason}))
		if err != nil {
			return nil, err
		}
		return resp.Msg.Approval, nil
	}
	_, err = review(carol, a1, true, "")
	requireCode(t, err, connect.CodeNotFound, "not found")
	_, err = review(cronClient, a3, true, "")
	requireCode(t, err, connect.CodePermissionDenied, `only people review write approvals; agent "cron" cannot`)
	_, err = review(auditor, a1, true, "")
	requireCode(t, err, connect.CodePermissionDenied, `only alice, or someone whose role allows "update" on "approvals"`)

	approved, err := review(alice, a1, true, "ticket 7")
	must(t, err)
	if approved.State != "approved" || approved.Reviewer != "alice" || approved.Reason != "ticket 7" || approved.GetReviewTime() == nil {
		t.Fatalf("approved = %v", approved)
	}
	res, err := svc.Use(ctx, approvals.UseRequest{Identity: claude, Database: "pg1", DBUser: "app", DBName: "shop", Fingerprint: "fp-pg1", Statement: "DELETE FROM carts WHERE id = 7"})
	must(t, err)
	if !res.Approved || res.ID != a1 || res.Reviewer != "alice" {
		t.Fatalf("use after the API approved: %+v", res)
	}
	if ids := listIDs(t, alice, "used"); !sameIDs(ids, a1) {
		t.Fatalf("alice's used approvals: %v", ids)
	}

	// A reviewer whose role requires session MFA needs an MFA-verified
	// identity (the certificate's MFA claim, or the console's check).
	dave := human("dave", "mfa-approver")
	_, err = review(e.clientFor(dave), a3, true, "")
	requireCode(t, err, connect.CodePermissionDenied, `role "mfa-approver" requires an MFA check to review write approvals`, "/web/writes")
	dave.MFADevice = "yubikey"
	denied, err := review(e.clientFor(dave), a3, false, "cron must not delete")
	must(t, err)
	if denied.State != "denied" || denied.Reviewer != "dave" {
		t.Fatalf("denied = %v", denied)
	}
	if _, err := review(bob, a3, true, ""); err == nil || !strings.Contains(err.Error(), "is already denied") {
		t.Fatalf("approving a denied approval: %v", err)
	}
	if ids := listIDs(t, bob, "pending"); !sameIDs(ids, a4, a2) {
		t.Fatalf("pending after the reviews: %v", ids)
	}

	var reviews []*audit.Event
	for _, ev := range e.auditEvents() {
		if ev.Type == audit.EventApprovalReviewed {
			reviews = append(reviews, ev)
		}
	}
	if len(reviews) != 2 {
		t.Fatalf("%d approval.reviewed events, want 2", len(reviews))
	}
	first, d := reviews[0], reviews[0].Details
	if first.Identity.GetUser() != "alice" || first.Identity.GetKind() != "human" || !first.Success ||
		d["approval_id"] != a1 || d["agent"] != "claude" || d["on_behalf_of"] != "alice" || d["database"] != "pg1" ||
		d["decision"] != "approved" || d["reason"] != "ticket 7" || first.GetResource().GetName() != "pg1" {
		t.Fatalf("approval.reviewed = %v", first)
	}
	if second := reviews[1]; second.Identity.GetUser() != "dave" || second.Identity.GetMfaDevice() != "yubikey" ||
		second.Details["decision"] != "denied" || second.Details["agent"] != "cron" {
		t.Fatalf("second approval.reviewed = %v", second)
	}
	if s := audit.Summary(first); s != "alice approved the write claude asked to run on database pg1 (approval "+a1+"): ticket 7" {
		t.Fatalf("summary %q", s)
	}
}

func TestWriteApprovalsDisabled(t *testing.T) {
	e := newEnv(t)
	c := e.clientFor(&certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{types.RoleAdmin}})
	_, err := c.Approvals.ListApprovals(context.Background(), connect.NewRequest(&sigilv1.ListApprovalsRequest{}))
	requireCode(t, err, connect.CodeUnimplemented, "write approvals are not enabled")
}
