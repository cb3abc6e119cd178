package audit

import (
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gravitational/trace"
)

// Event types, as listed in SPEC.md "Gateway behaviour".
const (
	EventUserLogin        = "user.login"
	EventCertIssued       = "cert.issued"
	EventMFAVerified      = "mfa.verified"
	EventDBSessionStart   = "db.session.start"
	EventDBQuery          = "db.query"
	EventDBSessionEnd     = "db.session.end"
	EventDBDenied         = "db.denied"
	EventSSHSessionStart  = "ssh.session.start"
	EventSSHExec          = "ssh.exec"
	EventSSHSessionEnd    = "ssh.session.end"
	EventKubeRequest      = "kube.request"
	EventAppRequest       = "app.request"
	EventRequestCreated   = "request.created"
	EventRequestReviewed  = "request.reviewed"
	EventApprovalCreated  = "approval.created"
	EventApprovalReviewed = "approval.reviewed"
	EventLockCreated      = "lock.created"
	EventJoin             = "join"
	EventResourceChanged  = "resource.changed"
)

// EventTypes returns every known event type.
func EventTypes() []string {
	return []string{
		EventUserLogin, EventCertIssued, EventMFAVerified,
		EventDBSessionStart, EventDBQuery, EventDBSessionEnd, EventDBDenied,
		EventSSHSessionStart, EventSSHExec, EventSSHSessionEnd,
		EventKubeRequest, EventAppRequest,
		EventRequestCreated, EventRequestReviewed,
		EventApprovalCreated, EventApprovalReviewed,
		EventLockCreated, EventJoin, EventResourceChanged,
	}
}

// IsKnownEventType reports whether t is one of the constants above.
func IsKnownEventType(t string) bool {
	return slices.Contains(EventTypes(), t)
}

// Query classifications for db.query events.
const (
	ClassificationRead  = "read"
	ClassificationWrite = "write"
	ClassificationAdmin = "admin"
)

// Bounds keep one event to a sane size however large the query; Bound
// applies them.
const (
	MaxStatementBytes = 16 * 1024
	MaxParameters     = 64
	MaxParameterBytes = 256
	MaxDetails        = 64
	MaxDetailBytes    = 4 * 1024
	// MaxEventBytes is the largest encoded event the file sink will write
	// or read back.
	MaxEventBytes = 256 * 1024
)

// truncatedSuffix marks a value shortened by Bound.
const truncatedSuffix = "…[truncated]"

// Event is one audit record. Field names are the wire/JSON contract shared
// by every sink and by the CLI, so they must not be renamed.
type Event struct {
	ID        string    `json:"id"`
	Time      time.Time `json:"time"`
	Type      string    `json:"type"`
	Identity  Identity  `json:"identity"`
	SessionID string    `json:"session_id,omitempty"`
	Resource  Resource  `json:"resource"`
	// ClientAddr is the remote address of the client as seen by Sigil.
	ClientAddr string `json:"client_addr,omitempty"`
	Success    bool   `json:"success"`
	// Error is the user-facing reason for a failure or refusal.
	Error string `json:"error,omitempty"`
	// Statement, Parameters and Classification are set for db.query.
	Statement      string   `json:"statement,omitempty"`
	Parameters     []string `json:"parameters,omitempty"`
	Classification string   `json:"classification,omitempty"`
	// Details carries event-specific extras. Never put secrets here.
	Details map[string]string `json:"details,omitempty"`
	// PrevHash and Hash are set only by the hash-chained store.
	PrevHash string `json:"prev_hash,omitempty"`
	Hash     string `json:"hash,omitempty"`
}

// Identity is who acted.
type Identity struct {
	User string `json:"user,omitempty"`
	// Kind is human, bot or agent.
	Kind  string   `json:"kind,omitempty"`
	Roles []string `json:"roles,omitempty"`
	// OnBehalfOf is the human an AI agent acts for.
	OnBehalfOf string   `json:"on_behalf_of,omitempty"`
	Requests   []string `json:"requests,omitempty"`
	MFADevice  string   `json:"mfa_device,omitempty"`
	CertSerial string   `json:"cert_serial,omitempty"`
}

// Resource is what was acted on.
type Resource struct {
	Kind   string `json:"kind,omitempty"`
	Name   string `json:"name,omitempty"`
	DBUser string `json:"db_user,omitempty"`
	DBName string `json:"db_name,omitempty"`
	Login  string `json:"login,omitempty"`
}

// SetDefaults validates ev and fills ID and Time when empty. Emitters call it
// so that the caller's Event carries the same ID every sink records.
func (ev *Event) SetDefaults(now time.Time) error {
	if ev == nil {
		return trace.BadParameter("audit event is nil")
	}
	if ev.Type == "" {
		return trace.BadParameter("audit event type is required")
	}
	if ev.ID == "" {
		ev.ID = uuid.NewString()
	}
	if ev.Time.IsZero() {
		ev.Time = now.UTC()
	}
	return nil
}

// Clone returns a deep copy of ev.
func (ev *Event) Clone() *Event {
	out := *ev
	out.Identity.Roles = slices.Clone(ev.Identity.Roles)
	out.Identity.Requests = slices.Clone(ev.Identity.Requests)
	out.Parameters = slices.Clone(ev.Parameters)
	out.Details = maps.Clone(ev.Details)
	return &out
}

// Bound truncates the unbounded fields of ev in place (statement,
// parameters, details) so one event cannot grow the log without limit.
func (ev *Event) Bound() {
	ev.Statement = truncate(ev.Statement, MaxStatementBytes)
	if len(ev.Parameters) > MaxParameters {
		ev.Parameters = append(ev.Parameters[:MaxParameters:MaxParameters], truncatedSuffix)
	}
	for i, p := range ev.Parameters {
		ev.Parameters[i] = truncate(p, MaxParameterBytes)
	}
	if len(ev.Details) > MaxDetails {
		// Keep a deterministic subset so repeated events look alike.
		keys := slices.Sorted(maps.Keys(ev.Details))
		for _, k := range keys[MaxDetails:] {
			delete(ev.Details, k)
		}
	}
	for k, v := range ev.Details {
		ev.Details[k] = truncate(v, MaxDetailBytes)
	}
}

func truncate(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	cut := limit
	// Do not split a UTF-8 sequence.
	for cut > 0 && !isRuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + truncatedSuffix
}

func isRuneStart(b byte) bool { return b&0xC0 != 0x80 }

// redactedValue replaces secret-looking Details values.
const redactedValue = "[REDACTED]"

// secretKeyWords are matched as substrings of the lower-cased key, so
// "db_password", "AccessToken" and "x-api-key" are all caught.
var secretKeyWords = []string{
	"password", "passwd", "passphrase", "secret", "token", "private_key",
	"privatekey", "api_key", "apikey", "authorization", "cookie", "credential",
}

// secretKeySegments are too short to match as substrings ("otp" is inside
// "footprint"), so they must be a whole segment of the key.
var secretKeySegments = []string{"otp", "totp", "pin", "pwd"}

// IsSecretKey reports whether a Details key looks like it names a secret.
func IsSecretKey(key string) bool {
	k := strings.ReplaceAll(strings.ToLower(key), "-", "_")
	for _, w := range secretKeyWords {
		if strings.Contains(k, w) {
			return true
		}
	}
	segments := strings.FieldsFunc(k, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9')
	})
	for _, seg := range segments {
		if slices.Contains(secretKeySegments, seg) {
			return true
		}
	}
	return false
}

// Redact replaces in place the value of every Details key that IsSecretKey.
func (ev *Event) Redact() {
	for k := range ev.Details {
		if IsSecretKey(k) {
			ev.Details[k] = redactedValue
		}
	}
}
