package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/gen/sigil/v1/sigilv1connect"
)

// fakeApprovals is an ApprovalService holding a few approvals; reviews
// change their state as the real one does for a pending approval.
type fakeApprovals struct {
	sigilv1connect.UnimplementedApprovalServiceHandler
	mu      sync.Mutex
	list    []*sigilv1.WriteApproval
	states  []string
	reviews []*sigilv1.ReviewApprovalRequest
}

func (f *fakeApprovals) find(id string) (*sigilv1.WriteApproval, error) {
	for _, w := range f.list {
		if w.Id == id {
			return w, nil
		}
	}
	return nil, connect.NewError(connect.CodeNotFound, errors.New(`write approval `+id+` not found; run "sigil approval ls" to see the approvals you may see`))
}

func (f *fakeApprovals) ListApprovals(_ context.Context, req *connect.Request[sigilv1.ListApprovalsRequest]) (*connect.Response[sigilv1.ListApprovalsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states = append(f.states, req.Msg.State)
	resp := &sigilv1.ListApprovalsResponse{}
	for _, w := range f.list {
		if st := req.Msg.State; st == "all" || st == "" || st == w.State {
			resp.Approvals = append(resp.Approvals, proto.Clone(w).(*sigilv1.WriteApproval))
		}
	}
	return connect.NewResponse(resp), nil
}

func (f *fakeApprovals) GetApproval(_ context.Context, req *connect.Request[sigilv1.GetApprovalRequest]) (*connect.Response[sigilv1.GetApprovalResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w, err := f.find(req.Msg.Id)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&sigilv1.GetApprovalResponse{Approval: proto.Clone(w).(*sigilv1.WriteApproval)}), nil
}

func (f *fakeApprovals) ReviewApproval(_ context.Context, req *connect.Request[sigilv1.ReviewApprovalRequest]) (*connect.Response[sigilv1.ReviewApprovalResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reviews = append(f.reviews, req.Msg)
	w, err := f.find(req.Msg.Id)
	if err != nil {
		return nil, err
	}
	if w.State != "pending" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("write approval "+w.Id+" is already "+w.State))
	}
	now := time.Now()
	w.State, w.Reviewer, w.Reason, w.ReviewTime = "denied", "alice", req.Msg.Reason, timestamppb.New(now)
	if req.Msg.Approve {
		w.State, w.Expires = "approved", timestamppb.New(now.Add(15*time.Minute))
	}
	return connect.NewResponse(&sigilv1.ReviewApprovalResponse{Approval: proto.Clone(w).(*sigilv1.WriteApproval)}), nil
}

const (
	pendingID = "6f1c2a9e-0000-4000-8000-000000000001"
	usedID    = "6f1c2a9e-0000-4000-8000-000000000002"
)

// approvalSetup logs alice in to a gateway serving fakeApprovals.
func approvalSetup(t *testing.T) *fakeApprovals {
	t.Helper()
	t.Setenv("SIGIL_HOME", t.TempDir())
	now := time.Now()
	f := &fakeApprovals{list: []*sigilv1.WriteApproval{
		{
			Id: pendingID, Agent: "claude", AgentKind: "agent", OnBehalfOf: "alice", Database: "pg1", DbUser: "app", DbName: "shop",
			Statement: "UPDATE orders\n  SET state = 'shipped', shipped_at = now()\n  WHERE id = 42 AND state = 'paid'", Class: "write", State: "pending",
			Created: timestamppb.New(now.Add(-5 * time.Minute)), Expires: timestamppb.New(now.Add(55 * time.Minute)),
		},
		{
			Id: usedID, Agent: "cron", AgentKind: "agent", Database: "pg2", Statement: "DELETE FROM carts", Class: "write", State: "used",
			Created: timestamppb.New(now.Add(-2 * time.Hour)), Expires: timestamppb.New(now.Add(-100 * time.Minute)),
			Reviewer: "bob", ReviewTime: timestamppb.New(now.Add(-115 * time.Minute)), UsedAt: timestamppb.New(now.Add(-110 * time.Minute)), UsedSession: "s9",
		},
	}}
	auth := &fakeAuth{tlsCA: newFakeCA(t, "tls-ca"), userCA: newFakeCA(t, "user-ca")}
	addr := startFakeGateway(t, auth, func(mux *http.ServeMux) { mux.Handle(sigilv1connect.NewApprovalServiceHandler(f)) })
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, auth.tlsCA.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := runWith(t, nil, "s3cret\n", "login", "--proxy", addr, "--user", "alice", "--password-stdin", "--ca-file", caFile); r.code != 0 {
		t.Fatalf("login: %+v", r)
	}
	return f
}

func TestApprovalLsAndShow(t *testing.T) {
	f := approvalSetup(t)
	r := runWith(t, nil, "", "approval", "ls")
	if r.code != 0 {
		t.Fatalf("ls: %+v", r)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "ID AGENT ON BEHALF OF DATABASE STATE STATEMENT AGE" {
		t.Fatalf("table:\n%s", r.stdout)
	}
	row := strings.Join(strings.Fields(lines[2]), " ")
	if want := pendingID + " claude alice pg1 pending UPDATE orders SET state = 'shipped', shipped_at… 5m"; row != want {
		t.Fatalf("pending row\n got %q\nwant %q", row, want)
	}
	if row := strings.Join(strings.Fields(lines[3]), " "); row != usedID+" cron - pg2 used DELETE FROM carts 2h0m" {
		t.Fatalf("used row %q", row)
	}

	r = runWith(t, nil, "", "approval", "ls", "--state", "pending", "--format", "json")
	var got []approvalView
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || len(got) != 1 || got[0].ID != pendingID ||
		got[0].OnBehalfOf != "alice" || !strings.Contains(got[0].Statement, "\n  WHERE id = 42") || got[0].ReviewTime != nil {
		t.Fatalf("json: %+v %+v", r, got)
	}
	if f.states[0] != "all" || f.states[1] != "pending" {
		t.Fatalf("states asked for: %v", f.states)
	}

	r = runWith(t, nil, "", "approval", "show", usedID)
	if r.code != 0 || !strings.Contains(r.stdout, "Agent:     cron (agent)\n") || !strings.Contains(r.stdout, "Reviewer:  bob at ") ||
		!strings.Contains(r.stdout, "in session s9") || !strings.HasSuffix(r.stdout, "Statement (write):\nDELETE FROM carts\n") {
		t.Fatalf("show:\n%+v", r)
	}
	r = runWith(t, nil, "", "approval", "show", "6f1c2a9e-0000-4000-8000-0000000000ff")
	if r.code != 1 || !strings.Contains(r.stderr, `not found; run "sigil approval ls"`) {
		t.Fatalf("show unknown: %+v", r)
	}
	r = runWith(t, nil, "", "approval", "ls", "--format", "xml")
	if r.code != 1 || !strings.Contains(r.stderr, `--format: "xml" is not one of text, json, yaml`) {
		t.Fatalf("xml: %+v", r)
	}
}

func TestApprovalReview(t *testing.T) {
	f := approvalSetup(t)
	r := runWith(t, nil, "", "approval", "review", pendingID)
	if r.code != 1 || !strings.Contains(r.stderr, "pass exactly one of --approve and --deny") {
		t.Fatalf("no decision: %+v", r)
	}
	r = runWith(t, nil, "", "approval", "review", pendingID, "--approve", "--reason", "ticket 42")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "Approved: claude may run the statement once on database pg1 until ") ||
		!strings.HasSuffix(r.stdout, "(approval "+pendingID+").\n") {
		t.Fatalf("approve: %+v", r)
	}
	if len(f.reviews) != 1 || !f.reviews[0].Approve || f.reviews[0].Reason != "ticket 42" || f.reviews[0].Id != pendingID {
		t.Fatalf("reviews sent: %v", f.reviews)
	}
	r = runWith(t, nil, "", "approval", "review", pendingID, "--deny")
	if r.code != 1 || !strings.Contains(r.stderr, "is already approved") {
		t.Fatalf("second review: %+v", r)
	}
	r = runWith(t, nil, "", "approval", "review", "6f1c2a9e-0000-4000-8000-0000000000ff", "--deny")
	if r.code != 1 || !strings.Contains(r.stderr, `run "sigil approval ls"`) {
		t.Fatalf("unknown id: %+v", r)
	}
}
