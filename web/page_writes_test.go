package web

import (
	"context"
	"errors"
	"html"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/gen/sigil/v1/sigilv1connect"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/mfa"
)

type callerKey struct{}

// writesAPI is the API the agent writes page calls: approvals, and the
// MFA devices the page looks up for reviewers who need a check. It
// records who reviewed what, as the console's Caller passed them on.
type writesAPI struct {
	sigilv1connect.UnimplementedApprovalServiceHandler
	sigilv1connect.UnimplementedMFAServiceHandler
	disabled bool

	mu        sync.Mutex
	approvals []*sigilv1.WriteApproval
	reviews   []*sigilv1.ReviewApprovalRequest
	reviewers []*certid.Identity
}

func (a *writesAPI) ListApprovals(context.Context, *connect.Request[sigilv1.ListApprovalsRequest]) (*connect.Response[sigilv1.ListApprovalsResponse], error) {
	if a.disabled {
		return nil, connect.NewError(connect.CodeUnimplemented, errors.New("write approvals are not enabled on this server"))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return connect.NewResponse(&sigilv1.ListApprovalsResponse{Approvals: a.approvals}), nil
}

func (a *writesAPI) ReviewApproval(ctx context.Context, req *connect.Request[sigilv1.ReviewApprovalRequest]) (*connect.Response[sigilv1.ReviewApprovalResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id, _ := ctx.Value(callerKey{}).(*certid.Identity)
	a.reviews = append(a.reviews, req.Msg)
	a.reviewers = append(a.reviewers, id)
	for _, w := range a.approvals {
		if w.Id != req.Msg.Id {
			continue
		}
		if w.State != "pending" {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("write approval "+w.Id+" is already "+w.State))
		}
		w.State, w.Reviewer, w.Reason = "denied", id.Name, req.Msg.Reason
		if req.Msg.Approve {
			w.State, w.Expires = "approved", timestamppb.New(time.Date(2026, 11, 23, 17, 45, 0, 0, time.UTC))
		}
		return connect.NewResponse(&sigilv1.ReviewApprovalResponse{Approval: w}), nil
	}
	return nil, connect.NewError(connect.CodeNotFound, errors.New("write approval not found"))
}

func (a *writesAPI) ListMFADevices(context.Context, *connect.Request[sigilv1.ListMFADevicesRequest]) (*connect.Response[sigilv1.ListMFADevicesResponse], error) {
	return connect.NewResponse(&sigilv1.ListMFADevicesResponse{Devices: []*sigilv1.MFADevice{{Name: "phone", Type: mfa.TypeTOTP}}}), nil
}

// mfaReviewer is alice with a role that requires an MFA check per review;
// the code 123456 from her phone passes it.
type mfaReviewer struct{ fakeAuth }

func (mfaReviewer) SessionMFARole(context.Context, *certid.Identity) (string, error) {
	return "prod-approver", nil
}

func (mfaReviewer) ReviewMFA(_ context.Context, user, id, _, otp string, _ []byte, _ string) (*mfa.Used, error) {
	if user != "alice" || id == "" || otp != "123456" {
		return nil, trace.AccessDenied("the code is not valid")
	}
	return &mfa.Used{Name: "phone"}, nil
}

const writeID = "0b7f6d9c-1111-4000-8000-000000000001"

func newWritesConsole(t *testing.T, auth ConsoleAuth) (*browser, *writesAPI) {
	t.Helper()
	api := &writesAPI{approvals: []*sigilv1.WriteApproval{
		{
			Id: writeID, Agent: "claude", AgentKind: "agent", OnBehalfOf: "alice", Database: "pg1", DbUser: "app", DbName: "shop",
			Statement: "UPDATE orders SET state = 'shipped' WHERE id = 42", Class: "write", State: "pending",
			Created: timestamppb.Now(), Expires: timestamppb.New(time.Now().Add(time.Hour)),
		},
		{
			Id: "0b7f6d9c-1111-4000-8000-000000000002", Agent: "cron", AgentKind: "agent", Database: "pg2",
			Statement: "DROP TABLE carts", Class: "admin", State: "denied", Reviewer: "bob", Reason: "never on prod",
			Created: timestamppb.Now(), Expires: timestamppb.Now(),
		},
	}}
	mux := http.NewServeMux()
	mux.Handle(sigilv1connect.NewApprovalServiceHandler(api))
	mux.Handle(sigilv1connect.NewMFAServiceHandler(api))
	h, _ := newTestHandler(t, func(c *ConsoleConfig) {
		c.API, c.Auth = mux, auth
		c.Caller = func(ctx context.Context, id *certid.Identity, _ string) context.Context {
			return context.WithValue(ctx, callerKey{}, id)
		}
	})
	b := &browser{t: t, h: h, cookies: map[string]*http.Cookie{}}
	b.do(http.MethodGet, "/web/login", nil, nil)
	creds := url.Values{"user": {"alice"}, "password": {"pw"}, "csrf": {b.cookies[preCookie].Value}}
	if w := b.do(http.MethodPost, "/web/login", creds, nil); w.Code != http.StatusSeeOther {
		t.Fatalf("sign-in: %d\n%s", w.Code, w.Body.String())
	}
	return b, api
}

func TestWritesPageListsAndApproves(t *testing.T) {
	b, api := newWritesConsole(t, fakeAuth{})
	w := b.do(http.MethodGet, "/web/writes", nil, nil)
	body := html.UnescapeString(w.Body.String())
	for _, want := range []string{
		`<a href="/web/writes" aria-current="page">Agent writes</a>`,
		"UPDATE orders SET state = 'shipped' WHERE id = 42", ">claude<", ">alice<", "pg1", "app @ shop",
		`action="/web/writes/` + writeID + `/review"`, `value="approve"`, `value="deny"`,
		// The recent decision, with its reviewer and reason.
		"DROP TABLE carts", `<span class="badge bad">denied</span>`, "bob", "never on prod",
	} {
		if !strings.Contains(body, want) {
			t.Fatalf("the page lacks %q (%d):\n%s", want, w.Code, body)
		}
	}
	if strings.Contains(body, `name="otp"`) {
		t.Fatal("the page asks for an MFA code though no role requires one")
	}
	token := csrfRe(w.Body.String())

	review := url.Values{"decision": {"approve"}, "reason": {" ticket 42 "}}
	if w := b.do(http.MethodPost, "/web/writes/"+writeID+"/review", review, nil); w.Code != http.StatusForbidden || len(api.reviews) != 0 {
		t.Fatalf("a review without the CSRF token: %d, %d reviews", w.Code, len(api.reviews))
	}
	review.Set("csrf", token)
	w = b.do(http.MethodPost, "/web/writes/"+writeID+"/review", review, nil)
	if loc := w.Header().Get("Location"); w.Code != http.StatusSeeOther || !strings.HasPrefix(loc, "/web/writes?done=") ||
		!strings.Contains(loc, url.QueryEscape("Approved: claude may run the statement once on pg1 until 17:45 UTC.")) {
		t.Fatalf("approve: %d %s\n%s", w.Code, loc, w.Body.String())
	}
	if len(api.reviews) != 1 || !api.reviews[0].Approve || api.reviews[0].Id != writeID || api.reviews[0].Reason != "ticket 42" ||
		api.reviewers[0].Name != "alice" || api.reviewers[0].MFADevice != "" {
		t.Fatalf("reviews sent: %v by %v", api.reviews, api.reviewers)
	}
	w = b.do(http.MethodGet, "/web/writes?done=Approved.", nil, nil)
	if body := w.Body.String(); !strings.Contains(body, "No agent write waits for a review.") || !strings.Contains(body, `<span class="badge ok">approved</span>`) {
		t.Fatalf("after the approval:\n%s", body)
	}

	// A second review shows the API's refusal on the page.
	review.Set("decision", "deny")
	w = b.do(http.MethodPost, "/web/writes/"+writeID+"/review", review, nil)
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "is already approved") {
		t.Fatalf("second review: %d\n%s", w.Code, w.Body.String())
	}
}

func TestWritesPageReviewerMFA(t *testing.T) {
	b, api := newWritesConsole(t, mfaReviewer{})
	w := b.do(http.MethodGet, "/web/writes", nil, nil)
	body := w.Body.String()
	if !strings.Contains(body, "Your role requires an MFA check for each review: type a code from your authenticator app") ||
		!strings.Contains(body, `<input name="otp"`) || strings.Contains(body, "data-proof-key") {
		t.Fatalf("the page does not ask for the MFA code:\n%s", body)
	}
	review := url.Values{"csrf": {csrfRe(body)}, "decision": {"deny"}, "otp": {"000000"}}
	w = b.do(http.MethodPost, "/web/writes/"+writeID+"/review", review, nil)
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "the code is not valid") || len(api.reviews) != 0 {
		t.Fatalf("a wrong code: %d, %d reviews\n%s", w.Code, len(api.reviews), w.Body.String())
	}
	review.Set("otp", "123456")
	if w := b.do(http.MethodPost, "/web/writes/"+writeID+"/review", review, nil); w.Code != http.StatusSeeOther {
		t.Fatalf("deny with the code: %d\n%s", w.Code, w.Body.String())
	}
	if len(api.reviewers) != 1 || api.reviewers[0].MFADevice != "phone" || api.reviews[0].Approve {
		t.Fatalf("the review did not carry the MFA check: %v %v", api.reviews, api.reviewers)
	}
}

func TestWritesPageUnavailable(t *testing.T) {
	b, api := newWritesConsole(t, fakeAuth{})
	api.disabled = true
	w := b.do(http.MethodGet, "/web/writes", nil, nil)
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "Agent write approvals are not available on this gateway: write approvals are not enabled") {
		t.Fatalf("%d\n%s", w.Code, w.Body.String())
	}
}
