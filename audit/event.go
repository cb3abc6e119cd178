package audit

import (
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gravitational/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

// Event is one audit record. It is the protobuf message so that the store,
// the API, the CLI and the SIEM sinks share one definition and one
// canonical encoding.
type Event = sigilv1.AuditEvent

// Identity is who acted.
type Identity = sigilv1.AuditIdentity

// Resource is what was acted on.
type Resource = sigilv1.AuditResource

// Checkpoint is the signed record of the last event retention pruned.
type Checkpoint = sigilv1.AuditCheckpoint

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

// IsDurable reports whether Emit of an event of type t must wait for the
// event to be fsynced. Only the high-volume per-request types (db.query,
// kube.request, app.request) are queued for the next group commit instead:
// each belongs to a session whose start event was durable, and making every
// query wait for a disk sync would put the audit log on the data path.
// ssh.exec stays durable: a command run on a host is rare next to queries
// and is exactly what an investigation needs.
func IsDurable(t string) bool {
	switch t {
	case EventDBQuery, EventKubeRequest, EventAppRequest:
		return false
	}
	return true
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
	// MaxEventBytes is the largest encoded event a store accepts or a
	// reader parses.
	MaxEventBytes = 256 * 1024
)

// truncatedSuffix marks a value shortened by Bound.
const truncatedSuffix = "…[truncated]"

// SetDefaults validates ev and fills ID and Time when empty. Emitters call it
// so that the caller's Event carries the same ID every sink records.
func SetDefaults(ev *Event, now time.Time) error {
	if ev == nil {
		return trace.BadParameter("audit event is nil")
	}
	if ev.Type == "" {
		return trace.BadParameter("audit event type is required")
	}
	if ev.Id == "" {
		ev.Id = uuid.NewString()
	}
	if ev.Time == nil || (ev.Time.Seconds == 0 && ev.Time.Nanos == 0) {
		ev.Time = timestamppb.New(now.UTC())
	}
	return nil
}

// Clone returns a deep copy of ev.
func Clone(ev *Event) *Event {
	return proto.Clone(ev).(*Event)
}

// Bound truncates the unbounded fields of ev in place (statement,
// parameters, details) so one event cannot grow the log without limit.
func Bound(ev *Event) {
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
func Redact(ev *Event) {
	for k := range ev.Details {
		if IsSecretKey(k) {
			ev.Details[k] = redactedValue
		}
	}
}
