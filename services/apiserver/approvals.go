package apiserver

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/approvals"
)

// approvalService implements ApprovalService over services/approvals: the
// service applies the review rules, this adds authentication, who sees
// what, the reviewer's MFA and the audit event.
type approvalService struct{ s *Server }

// approvalCaller is the authenticated caller and what their roles let
// them do with other people's approvals.
type approvalCaller struct {
	id *certid.Identity
	// reviewAll: "update" on "approvals" (people only).
	reviewAll bool
	// seeAll: reviewAll, or "list" on "approvals" (not agents).
	seeAll bool
	// mfaRole names a role of the caller that requires session MFA.
	mfaRole string
}

func (h *approvalService) begin(ctx context.Context) (*approvals.Service, *approvalCaller, error) {
	svc := h.s.cfg.Approvals
	if svc == nil {
		return nil, nil, trace.NotImplemented("write approvals are not enabled on this server")
	}
	id, err := h.s.caller(ctx)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	checker, err := h.s.checker(ctx, id)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	c := &approvalCaller{id: id, mfaRole: checker.SessionMFARole()}
	c.reviewAll = id.Kind == certid.KindHuman && checker.CheckRule(types.RuleResourceApprovals, types.VerbUpdate) == nil
	c.seeAll = id.Kind != certid.KindAgent && (c.reviewAll || checker.CheckRule(types.RuleResourceApprovals, types.VerbList) == nil)
	return svc, c, nil
}

// sees reports whether c may see a: a person the approvals of agents
// acting for them, an agent (or bot) its own, and those allowed all.
func (c *approvalCaller) sees(a *approvals.Approval) bool {
	switch {
	case c.seeAll:
		return true
	case c.id.Kind == certid.KindHuman && a.OnBehalfOf == c.id.Name:
		return true
	}
	return a.Agent == c.id.Name && a.AgentKind == string(c.id.Kind)
}

// get returns an approval c may see; others look missing, so that ids
// of other people's approvals are not confirmed.
func (h *approvalService) get(ctx context.Context, svc *approvals.Service, c *approvalCaller, id string) (*approvals.Approval, error) {
	a, err := svc.Get(ctx, id)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if !c.sees(a) {
		return nil, approvals.NotFound(id)
	}
	return a, nil
}

func (h *approvalService) ListApprovals(ctx context.Context, req *connect.Request[sigilv1.ListApprovalsRequest]) (*connect.Response[sigilv1.ListApprovalsResponse], error) {
	svc, c, err := h.begin(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	m := req.Msg
	all, err := svc.List(ctx, approvals.Filter{State: m.State, Agent: m.Agent, OnBehalfOf: m.OnBehalfOf})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	now := svc.Now()
	resp := &sigilv1.ListApprovalsResponse{}
	for _, a := range all {
		if c.sees(a) {
			resp.Approvals = append(resp.Approvals, approvalProto(a, now))
		}
	}
	return connect.NewResponse(resp), nil
}

func (h *approvalService) GetApproval(ctx context.Context, req *connect.Request[sigilv1.GetApprovalRequest]) (*connect.Response[sigilv1.GetApprovalResponse], error) {
	svc, c, err := h.begin(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	a, err := h.get(ctx, svc, c, req.Msg.Id)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.GetApprovalResponse{Approval: approvalProto(a, svc.Now())}), nil
}

func (h *approvalService) ReviewApproval(ctx context.Context, req *connect.Request[sigilv1.ReviewApprovalRequest]) (*connect.Response[sigilv1.ReviewApprovalResponse], error) {
	svc, c, err := h.begin(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	m := req.Msg
	if _, err := h.get(ctx, svc, c, m.Id); err != nil {
		return nil, trace.Wrap(err)
	}
	// As for access requests: the certificate's MFA claim is set only by
	// our MFA ceremony (the console's review check sets it the same way).
	// Non-people are refused by Review itself, with the better reason.
	if c.mfaRole != "" && c.id.MFADevice == "" && c.id.Kind == certid.KindHuman {
		return nil, trace.AccessDenied("role %q requires an MFA check to review write approvals (require_session_mfa); review in the web console (%s) with your MFA device", c.mfaRole, h.s.WebURL("/web/writes"))
	}
	a, err := svc.Review(ctx, c.id, m.Id, m.Approve, m.Reason, c.reviewAll)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	decision := "denied"
	if m.Approve {
		decision = "approved"
	}
	details := map[string]string{
		"approval_id":  a.ID,
		"agent":        a.Agent,
		"agent_kind":   a.AgentKind,
		"on_behalf_of": a.OnBehalfOf,
		"database":     a.Database,
		"decision":     decision,
		"reason":       m.Reason,
		"class":        a.Class,
		"fingerprint":  a.Fingerprint,
	}
	if m.Approve {
		details["expires"] = a.Expires.UTC().Format(time.RFC3339)
	}
	if err := h.s.emit(ctx, &audit.Event{
		Type:       audit.EventApprovalReviewed,
		Identity:   audit.IdentityOf(c.id),
		Resource:   &audit.Resource{Kind: types.KindDatabase, Name: a.Database, DbUser: a.DBUser, DbName: a.DBName},
		ClientAddr: req.Peer().Addr,
		Success:    true,
		Details:    details,
	}); err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.ReviewApprovalResponse{Approval: approvalProto(a, svc.Now())}), nil
}

func approvalProto(a *approvals.Approval, now time.Time) *sigilv1.WriteApproval {
	ts := func(t time.Time) *timestamppb.Timestamp {
		if t.IsZero() {
			return nil
		}
		return timestamppb.New(t)
	}
	return &sigilv1.WriteApproval{
		Id:          a.ID,
		Agent:       a.Agent,
		AgentKind:   a.AgentKind,
		OnBehalfOf:  a.OnBehalfOf,
		Roles:       a.Roles,
		Database:    a.Database,
		DbUser:      a.DBUser,
		DbName:      a.DBName,
		Statement:   a.Statement,
		Fingerprint: a.Fingerprint,
		Class:       a.Class,
		SessionId:   a.SessionID,
		ClientAddr:  a.ClientAddr,
		State:       a.StateAt(now),
		Created:     ts(a.Created),
		Expires:     ts(a.Expires),
		Reviewer:    a.Reviewer,
		Reason:      a.Reason,
		ReviewTime:  ts(a.ReviewTime),
		UsedAt:      ts(a.UsedAt),
		UsedSession: a.UsedSession,
	}
}
