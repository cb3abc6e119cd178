// Package sessiontest holds stand-ins for the protocol engines' tests.
package sessiontest

import (
	"context"
	"sync"
	"testing"

	"github.com/sigilhq/sigil/gateway/session"
)

// ApproveRequest is one write an engine asked to have approved.
type ApproveRequest struct{ Statement, Fingerprint, Class string }

// Approver stands in for session.Session.ApproveWrite: one approval per
// fingerprint, pending until the test approves it, then used once.
type Approver struct {
	mu       sync.Mutex
	reqs     []ApproveRequest
	approved map[string]bool
}

// NewApprover returns an Approver with nothing approved.
func NewApprover() *Approver { return &Approver{approved: map[string]bool{}} }

// ID is the approval id the Approver gives a fingerprint.
func ID(fingerprint string) string { return "appr-" + fingerprint[:12] }

// Approve is the session.Approver.
func (f *Approver) Approve(_ context.Context, statement, fingerprint, class string) (string, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, ApproveRequest{statement, fingerprint, class})
	id := ID(fingerprint)
	if f.approved[fingerprint] {
		delete(f.approved, fingerprint)
		return id, "bob", nil
	}
	return "", "", &session.ApprovalError{ID: id, Message: "sigil: write needs a human approval: approval " + id + " is pending"}
}

// ApproveLast approves the statement last asked about and returns its id.
func (f *Approver) ApproveLast(t testing.TB) string {
	t.Helper()
	fp := f.Last(t).Fingerprint
	f.mu.Lock()
	defer f.mu.Unlock()
	f.approved[fp] = true
	return ID(fp)
}

// Last is the write last asked about.
func (f *Approver) Last(t testing.TB) ApproveRequest {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		t.Fatal("no approval was asked for")
	}
	return f.reqs[len(f.reqs)-1]
}

// Count is how many approvals were asked for.
func (f *Approver) Count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}
