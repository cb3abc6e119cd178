package session

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/services/approvals"
)

const (
	// maxNotedApprovals bounds the approval ids a session remembers
	// having announced with approval.created.
	maxNotedApprovals = 1024
	// approvalTimeout bounds one question to the approvals service: the
	// client waits for the answer.
	approvalTimeout = 15 * time.Second
)

// ApprovalError refuses a write that needs a human approval it does not
// have. Engines map it to their protocol's refusal for what the client
// ran (PostgreSQL 42501, MySQL 1142); Message is safe to show.
type ApprovalError struct {
	// ID is the pending approval the refusal names; empty when none could
	// be asked for.
	ID      string
	Message string
	Err     error
}

func (e *ApprovalError) Error() string { return e.Message }
func (e *ApprovalError) Unwrap() error { return e.Err }

// Approver asks for a human approval of a write: Session.ApproveWrite,
// or what a protocol engine uses in its place in tests.
type Approver func(ctx context.Context, statement, fingerprint, class string) (approvalID, reviewer string, err error)

// NoApprovals is an Approver for a gateway without write approvals: it
// refuses every write of role.
func NoApprovals(role string) Approver {
	return func(context.Context, string, string, string) (string, string, error) {
		return "", "", &ApprovalError{Message: fmt.Sprintf("sigil: write refused: role %q requires a human approval for each write, and write approvals are not available on this gateway; ask an admin", role)}
	}
}

// ApprovalID returns the approval a refusal names, "" if none.
func ApprovalID(err error) string {
	var a *ApprovalError
	if errors.As(err, &a) {
		return a.ID
	}
	return ""
}

// ApproveWrite asks the approvals service whether the write identified by
// fingerprint may run now. Approved, it returns the approval it consumed
// (the write runs this once) and who approved it. Otherwise the error is
// an *ApprovalError naming the pending approval a reviewer must approve
// before the same statement is run again; a gateway without approvals,
// or a failing service, refuses too (fail closed). statement is what
// reviewers see: the text, with the bound parameters for prepared
// statements.
func (s *Session) ApproveWrite(ctx context.Context, statement, fingerprint, class string) (approvalID, reviewer string, err error) {
	svc := s.m.cfg.Approvals
	if svc == nil {
		return NoApprovals(s.Decision.Role)(ctx, statement, fingerprint, class)
	}
	uctx, cancel := context.WithTimeout(ctx, approvalTimeout)
	defer cancel()
	res, err := svc.Use(uctx, approvals.UseRequest{
		Identity:    s.Identity,
		Database:    s.Database.Metadata.Name,
		DBUser:      s.DBUser,
		DBName:      s.DBName,
		Statement:   clipStatement(statement, approvals.MaxStatementLen),
		Fingerprint: fingerprint,
		SessionID:   s.ID,
		ClientAddr:  s.ClientAddr,
		Class:       class,
	})
	switch {
	case err != nil:
		s.m.log.WarnContext(ctx, "Asking for a write approval failed.", "session_id", s.ID, "user", s.Identity.Name, "error", err)
		return "", "", &ApprovalError{Message: "sigil: write needs a human approval and none could be asked for: " + trace.UserMessage(err), Err: err}
	case res.Approved:
		return res.ID, res.Reviewer, nil
	case res.ID == "":
		return "", "", &ApprovalError{Message: "sigil: write needs a human approval and the approval service named none; try again or ask an admin to check sigild"}
	}
	s.noteApproval(ctx, res.ID, statement, fingerprint, class)
	return "", "", &ApprovalError{ID: res.ID, Message: fmt.Sprintf(
		`sigil: write needs a human approval: approval %s is pending; ask a reviewer to run "sigil approval review %s --approve" (or approve it in the console), then run the same statement again`,
		res.ID, res.ID)}
}

// noteApproval records approval.created the first time this session's
// refusals name an approval. The service does not say whether it created
// the approval just now or found one pending for the same statement, so
// an approval asked for again from another session is announced there
// too; the event is still one per session, not one per retry.
func (s *Session) noteApproval(ctx context.Context, id, statement, fingerprint, class string) {
	s.approvalMu.Lock()
	if _, seen := s.approvalsNoted[id]; seen {
		s.approvalMu.Unlock()
		return
	}
	if s.approvalsNoted == nil || len(s.approvalsNoted) >= maxNotedApprovals {
		s.approvalsNoted = make(map[string]struct{})
	}
	s.approvalsNoted[id] = struct{}{}
	s.approvalMu.Unlock()
	ev := &audit.Event{
		Type:           audit.EventApprovalCreated,
		Success:        true,
		Statement:      statement,
		Classification: class,
		Details:        map[string]string{"approval_id": id, "fingerprint": fingerprint, "state": approvals.StatePending},
	}
	if err := s.Emit(ctx, ev); err != nil {
		s.m.log.WarnContext(ctx, "Recording a write approval request failed.", "session_id", s.ID, "approval_id", id, "error", err)
	}
}

// clipStatement bounds s to n bytes on a rune boundary.
func clipStatement(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const suffix = "…[truncated]"
	cut := n - len(suffix)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + suffix
}
