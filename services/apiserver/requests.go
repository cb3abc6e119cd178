package apiserver

import (
	"context"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/identity/policy"
	"github.com/sigilhq/sigil/services/requests"
)

// requestService implements RequestService over services/requests: the
// service applies the rules, this adds authentication, visibility and
// audit events (which the audit exporters turn into notifications).
type requestService struct{ s *Server }

func (h *requestService) svc() (*requests.Service, error) {
	if h.s.cfg.Requests == nil {
		return nil, trace.NotImplemented("access requests are not enabled on this server")
	}
	return h.s.cfg.Requests, nil
}

// begin is what every call but Assume starts with: the service, the
// authenticated caller and the checker of their standing roles.
func (h *requestService) begin(ctx context.Context) (*requests.Service, *certid.Identity, *policy.AccessChecker, error) {
	svc, err := h.svc()
	if err != nil {
		return nil, nil, nil, trace.Wrap(err)
	}
	id, err := h.s.caller(ctx)
	if err != nil {
		return nil, nil, nil, trace.Wrap(err)
	}
	checker, err := h.requesterChecker(ctx, id)
	if err != nil {
		return nil, nil, nil, trace.Wrap(err)
	}
	return svc, id, checker, nil
}

// requesterChecker evaluates the caller's own roles, without the roles of
// access requests they already hold: what one may request or review
// follows from standing roles only.
func (h *requestService) requesterChecker(ctx context.Context, id *certid.Identity) (*policy.AccessChecker, error) {
	base := *id
	if len(id.AccessRequests) > 0 {
		svc, err := h.svc()
		if err != nil {
			return nil, trace.Wrap(err)
		}
		var held []string
		for _, reqID := range id.AccessRequests {
			r, err := svc.Get(ctx, reqID)
			if err != nil {
				return nil, trace.Wrap(err)
			}
			held = append(held, r.Roles...)
		}
		base.Roles = slices.DeleteFunc(slices.Clone(id.Roles), func(r string) bool { return slices.Contains(held, r) })
		base.AccessRequests = nil
	}
	return h.s.checker(ctx, &base)
}

func (h *requestService) CreateAccessRequest(ctx context.Context, req *connect.Request[sigilv1.CreateAccessRequestRequest]) (*connect.Response[sigilv1.CreateAccessRequestResponse], error) {
	svc, id, checker, err := h.begin(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	m := req.Msg
	r, err := svc.Create(ctx, requests.CreateParams{
		Requester:   id,
		Checker:     checker,
		Roles:       m.Roles,
		Reason:      m.Reason,
		MaxDuration: time.Duration(m.MaxDurationSeconds) * time.Second,
		Resources:   m.Resources,
	})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if err := h.s.emit(ctx, &audit.Event{
		Type:       audit.EventRequestCreated,
		Identity:   audit.IdentityOf(id),
		ClientAddr: req.Peer().Addr,
		Success:    true,
		Details:    requestDetails(r),
	}); err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.CreateAccessRequestResponse{Request: requestProto(r, svc.Now())}), nil
}

// visible reports whether id may see r: their own, or one they may review.
func visible(r *requests.Request, id *certid.Identity, checker *policy.AccessChecker) bool {
	if r.User == id.Name {
		return true
	}
	for _, role := range r.Roles {
		if checker.CheckReviewRole(role) != nil {
			return false
		}
	}
	return true
}

func (h *requestService) GetAccessRequest(ctx context.Context, req *connect.Request[sigilv1.GetAccessRequestRequest]) (*connect.Response[sigilv1.GetAccessRequestResponse], error) {
	svc, id, checker, err := h.begin(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	r, err := svc.Get(ctx, req.Msg.Id)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if !visible(r, id, checker) {
		// Same answer as a missing id: do not confirm that it exists.
		return nil, trace.NotFound("access request %s not found", req.Msg.Id)
	}
	return connect.NewResponse(&sigilv1.GetAccessRequestResponse{Request: requestProto(r, svc.Now())}), nil
}

func (h *requestService) ListAccessRequests(ctx context.Context, req *connect.Request[sigilv1.ListAccessRequestsRequest]) (*connect.Response[sigilv1.ListAccessRequestsResponse], error) {
	svc, err := h.svc()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	id, err := h.s.caller(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	switch req.Msg.State {
	case "", requests.StatePending, requests.StateApproved, requests.StateDenied, requests.StateExpired:
	default:
		return nil, trace.BadParameter("--state: %q is not one of pending, approved, denied, expired", req.Msg.State)
	}
	checker, err := h.requesterChecker(ctx, id)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	all, err := svc.List(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	now := svc.Now()
	resp := &sigilv1.ListAccessRequestsResponse{}
	for _, r := range all {
		if !visible(r, id, checker) || req.Msg.State != "" && r.StateAt(now) != req.Msg.State {
			continue
		}
		resp.Requests = append(resp.Requests, requestProto(r, now))
	}
	return connect.NewResponse(resp), nil
}

func (h *requestService) ReviewAccessRequest(ctx context.Context, req *connect.Request[sigilv1.ReviewAccessRequestRequest]) (*connect.Response[sigilv1.ReviewAccessRequestResponse], error) {
	svc, id, checker, err := h.begin(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	m := req.Msg
	r, err := svc.Review(ctx, requests.ReviewParams{
		Reviewer: id,
		Checker:  checker,
		ID:       m.Id,
		Approve:  m.Approve,
		Reason:   m.Reason,
		// The certificate's MFA claim is set only by our MFA ceremony and
		// signed by the user CA.
		MFAVerified: id.MFADevice != "",
	})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	details := requestDetails(r)
	details["decision"] = "denied"
	if m.Approve {
		details["decision"] = "approved"
	}
	details["requester"] = r.User
	details["reason"] = m.Reason
	if err := h.s.emit(ctx, &audit.Event{
		Type:       audit.EventRequestReviewed,
		Identity:   audit.IdentityOf(id),
		ClientAddr: req.Peer().Addr,
		Success:    true,
		Details:    details,
	}); err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.ReviewAccessRequestResponse{Request: requestProto(r, svc.Now())}), nil
}

func (h *requestService) AssumeAccessRequest(ctx context.Context, req *connect.Request[sigilv1.AssumeAccessRequestRequest]) (*connect.Response[sigilv1.AssumeAccessRequestResponse], error) {
	svc, err := h.svc()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	id, err := h.s.caller(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if !id.Route.IsZero() {
		return nil, trace.AccessDenied("a routed certificate cannot issue other certificates; use your login certificate")
	}
	r, err := svc.Get(ctx, req.Msg.Id)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if r.User != id.Name {
		return nil, trace.NotFound("access request %s not found", req.Msg.Id)
	}
	now := svc.Now()
	switch st := r.StateAt(now); st {
	case requests.StateApproved:
	case requests.StatePending:
		return nil, trace.AccessDenied("access request %s is still pending (%d of %d approvals); wait with \"sigil request show %s\"", r.ID, len(r.Approvers()), r.Approvals, r.ID)
	default:
		return nil, trace.AccessDenied("access request %s is %s", r.ID, st)
	}
	pub, sshPub, err := parseLoginKeys(req.Msg.TlsPublicKey, req.Msg.SshPublicKey)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	elevated := *id
	elevated.Route = certid.Route{}
	elevated.MFADevice = ""
	elevated.Roles = slices.Clone(id.Roles)
	for _, role := range r.Roles {
		if !slices.Contains(elevated.Roles, role) {
			elevated.Roles = append(elevated.Roles, role)
		}
	}
	if !slices.Contains(id.AccessRequests, r.ID) {
		elevated.AccessRequests = append(slices.Clone(id.AccessRequests), r.ID)
	}
	// The elevated certificate ends with the request, and never outlives
	// the login it came from (the roles' max_session_ttl clamps further).
	until := r.Expires
	if id.Expires.Before(until) {
		until = id.Expires
	}
	ttl := until.Sub(now)
	if ttl < time.Second {
		return nil, trace.AccessDenied("access request %s or your login expires in under a second; run \"sigil login\" again", r.ID)
	}
	resp, err := h.s.issueLogin(ctx, loginGrant{
		id:         &elevated,
		tlsPub:     pub,
		sshPub:     sshPub,
		ttlSeconds: int64(ttl / time.Second),
		clientAddr: req.Peer().Addr,
		details:    map[string]string{"method": "access_request", "request_id": r.ID, "approvers": strings.Join(r.Approvers(), ",")},
	})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.AssumeAccessRequestResponse{Login: resp}), nil
}

// requestDetails are the audit details of a request event; the webhook
// "slack" format builds its message from them (audit.Summary).
func requestDetails(r *requests.Request) map[string]string {
	d := map[string]string{
		"request_id": r.ID,
		"roles":      strings.Join(r.Roles, ","),
		"state":      r.State,
		"expires":    r.Expires.UTC().Format(time.RFC3339),
		"approvals":  strings.Join(r.Approvers(), ","),
	}
	if r.Reason != "" {
		d["reason"] = r.Reason
	}
	if len(r.Resources) > 0 {
		d["resources"] = strings.Join(r.Resources, ",")
	}
	return d
}

func requestProto(r *requests.Request, now time.Time) *sigilv1.AccessRequest {
	out := &sigilv1.AccessRequest{
		Id:              r.ID,
		User:            r.User,
		Kind:            r.Kind,
		Roles:           r.Roles,
		Resources:       r.Resources,
		Reason:          r.Reason,
		State:           r.StateAt(now),
		Created:         timestamppb.New(r.Created),
		Expires:         timestamppb.New(r.Expires),
		ApprovalsNeeded: int32(r.Approvals),
	}
	for _, rv := range r.Reviews {
		out.Reviews = append(out.Reviews, &sigilv1.AccessReview{Reviewer: rv.Reviewer, Approve: rv.Approve, Reason: rv.Reason, Time: timestamppb.New(rv.Time)})
	}
	return out
}
