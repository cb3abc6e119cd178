package approvals

import (
	"context"
	"time"

	"github.com/sigilhq/sigil/identity/certid"
)

// This file is the contract between the gateway (which asks for and
// consumes approvals) and this service. Keep it stable.

// Approval states. Expired is derived, never stored.
const (
	StatePending  = "pending"
	StateApproved = "approved"
	StateDenied   = "denied"
	StateUsed     = "used"
	StateExpired  = "expired"
)

const (
	// UseWindow is how long an approved write stays usable (once).
	UseWindow = 15 * time.Minute
	// PendingTTL is how long a pending approval waits for a reviewer.
	PendingTTL = time.Hour
	// MaxStatementLen bounds the statement text stored for reviewers.
	MaxStatementLen = 8 << 10
)

// UseRequest is a write an agent tried to run where a role says
// write_approval: true.
type UseRequest struct {
	// Identity is the agent (its Name, Kind, OnBehalfOf, Roles...).
	Identity *certid.Identity
	// Database is the Sigil database resource name.
	Database string
	// DBUser and DBName are the session's route.
	DBUser, DBName string
	// Statement is what reviewers see (bounded to MaxStatementLen; for the
	// extended protocol it includes the bound parameters).
	Statement string
	// Fingerprint identifies the exact statement (normalised text plus
	// parameters), see sqlpolicy.Fingerprint. An approval is bound to
	// (agent name, database, fingerprint).
	Fingerprint string
	// SessionID and ClientAddr go to the audit events.
	SessionID, ClientAddr string
	// Class is the statement classification (write or admin).
	Class string
}

// UseResult says whether the write may run.
type UseResult struct {
	// ID is the approval: the one consumed when Approved, else the pending
	// one (created now or an existing pending one for the same key) that
	// the refusal names.
	ID string
	// Approved is true when an approved, unused, unexpired approval was
	// found and consumed: the statement runs this once.
	Approved bool
	// Reviewer named who approved when Approved.
	Reviewer string
}

// WriteApprovals is what the gateway needs; *Service implements it.
type WriteApprovals interface {
	Use(ctx context.Context, req UseRequest) (UseResult, error)
}
