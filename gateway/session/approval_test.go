package session

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/services/approvals"
)

// fakeApprovals stands in for the approvals service: an approval per
// fingerprint, pending until the test approves it, single use.
type fakeApprovals struct {
	mu       sync.Mutex
	reqs     []approvals.UseRequest
	state    map[string]string // fingerprint → pending | approved | used
	fail     error
	reviewer string
}

func (f *fakeApprovals) Use(ctx context.Context, req approvals.UseRequest) (approvals.UseResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req)
	if f.fail != nil {
		return approvals.UseResult{}, f.fail
	}
	id := "appr-" + req.Fingerprint[:8]
	switch f.state[req.Fingerprint] {
	case approvals.StateApproved:
		f.state[req.Fingerprint] = approvals.StateUsed
		return approvals.UseResult{ID: id, Approved: true, Reviewer: f.reviewer}, nil
	default:
		f.state[req.Fingerprint] = approvals.StatePending
		return approvals.UseResult{ID: id}, nil
	}
}

func (f *fakeApprovals) approve(fp string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state[fp] = approvals.StateApproved
}

func TestApproveWrite(t *testing.T) {
	e, _ := newEnv(t)
	ctx := context.Background()
	fake := &fakeApprovals{state: map[string]string{}, reviewer: "bob"}
	m, err := New(Config{Authority: e.auth, Resources: e.store, Locks: e.locks, Emitter: e.emitter, Approvals: fake,
		Clock: e.clock, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.Start(ctx, e.cert(t, pgRoute), "10.0.0.1:5555", "postgres", RouteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.End(ctx, Stats{})

	const fp = "0123456789abcdef"
	for range 2 {
		id, reviewer, err := s.ApproveWrite(ctx, "DELETE FROM t", fp, "write")
		var ae *ApprovalError
		if !errors.As(err, &ae) || id != "" || reviewer != "" {
			t.Fatalf("ApproveWrite = %q, %q, %v; want an approval refusal", id, reviewer, err)
		}
		want := `sigil: write needs a human approval: approval appr-01234567 is pending; ask a reviewer to run "sigil approval review appr-01234567 --approve" (or approve it in the console), then run the same statement again`
		if ae.ID != "appr-01234567" || ApprovalID(err) != ae.ID || err.Error() != want {
			t.Fatalf("refusal = %q (id %q), want %q", err.Error(), ae.ID, want)
		}
	}
	req := fake.reqs[0]
	if req.Identity.Name != "alice" || req.Database != "pg1" || req.DBUser != "reader" || req.DBName != "app" ||
		req.Statement != "DELETE FROM t" || req.Fingerprint != fp || req.SessionID != s.ID || req.ClientAddr != "10.0.0.1:5555" || req.Class != "write" {
		t.Fatalf("use request = %+v", req)
	}
	created := e.emitter.ofType(audit.EventApprovalCreated)
	if len(created) != 1 || created[0].Details["approval_id"] != "appr-01234567" || created[0].SessionId != s.ID ||
		created[0].Statement != "DELETE FROM t" || created[0].Identity.User != "alice" {
		t.Fatalf("approval.created events = %v, want one for the refused write", created)
	}

	fake.approve(fp)
	id, reviewer, err := s.ApproveWrite(ctx, "DELETE FROM t", fp, "write")
	if err != nil || id != "appr-01234567" || reviewer != "bob" {
		t.Fatalf("approved ApproveWrite = %q, %q, %v", id, reviewer, err)
	}
	if _, _, err := s.ApproveWrite(ctx, "DELETE FROM t", fp, "write"); ApprovalID(err) != "appr-01234567" {
		t.Fatalf("second use of a single-use approval: %v", err)
	}

	long := strings.Repeat("é", 5000)
	_, _, _ = s.ApproveWrite(ctx, long, "fedcba9876543210", "write")
	if got := fake.reqs[len(fake.reqs)-1].Statement; len(got) > approvals.MaxStatementLen || !strings.HasSuffix(got, "…[truncated]") {
		t.Fatalf("statement of %d bytes sent to reviewers, want at most %d", len(got), approvals.MaxStatementLen)
	}

	fake.fail = trace.LimitExceeded("agent alice already has 100 write approvals waiting for review")
	_, _, err = s.ApproveWrite(ctx, "DELETE FROM u", "1111111111111111", "write")
	if ApprovalID(err) != "" || !strings.Contains(err.Error(), "none could be asked for: agent alice already has 100") {
		t.Fatalf("service failure = %v, want a refusal with the service's reason", err)
	}
}

func TestApproveWriteWithoutService(t *testing.T) {
	e, m := newEnv(t)
	ctx := context.Background()
	s, err := m.Start(ctx, e.cert(t, pgRoute), "10.0.0.1:5555", "postgres", RouteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.End(ctx, Stats{})
	_, _, err = s.ApproveWrite(ctx, "DELETE FROM t", "0123456789abcdef", "write")
	var ae *ApprovalError
	if !errors.As(err, &ae) || ae.ID != "" || !strings.Contains(err.Error(), `role "dev" requires a human approval for each write, and write approvals are not available on this gateway`) {
		t.Fatalf("ApproveWrite without a service = %v", err)
	}
}
