package session

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/identity/policy"
	"github.com/sigilhq/sigil/services/access"
	"github.com/sigilhq/sigil/services/approvals"
	"github.com/sigilhq/sigil/services/locks"
	"github.com/sigilhq/sigil/services/requests"
	"github.com/sigilhq/sigil/services/resources"
)

const (
	// DefaultLockRecheck is the fallback interval at which a live session
	// re-checks locks even without a change notification, so that a lock
	// ends it within a second whatever happens to the watch.
	DefaultLockRecheck = 500 * time.Millisecond
	// DefaultUpstreamCertTTL is the lifetime of the certificates the
	// gateway presents to databases.
	DefaultUpstreamCertTTL = time.Hour
)

// Config configures a Manager.
type Config struct {
	// Authority verifies client certificates (user CA) and signs the
	// upstream database certificates (DB CA).
	Authority *ca.Authority
	// Resources holds databases and roles.
	Resources *resources.Store
	// Locks is checked at start and watched for the life of each session.
	Locks *locks.Service
	// Requests resolves the access requests certificates carry; without
	// it such certificates are refused.
	Requests *requests.Service
	// Approvals decides the writes of sessions whose role asks for a
	// human approval of each write (write_approval); without it those
	// writes are refused.
	Approvals approvals.WriteApprovals
	// Access decides for identities; defaults to one over Resources and
	// Requests (agents acting on behalf of a person are then refused).
	Access *access.Resolver
	// Emitter records the session events.
	Emitter audit.Emitter
	// Clock defaults to time.Now.
	Clock func() time.Time
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// LockRecheck defaults to DefaultLockRecheck.
	LockRecheck time.Duration
	// UpstreamCertTTL defaults to DefaultUpstreamCertTTL.
	UpstreamCertTTL time.Duration
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	switch {
	case c.Authority == nil:
		return trace.BadParameter("session: missing Authority")
	case c.Resources == nil:
		return trace.BadParameter("session: missing Resources")
	case c.Locks == nil:
		return trace.BadParameter("session: missing Locks")
	case c.Emitter == nil:
		return trace.BadParameter("session: missing Emitter")
	case c.LockRecheck < 0 || c.UpstreamCertTTL < 0:
		return trace.BadParameter("session: intervals must not be negative")
	}
	if c.Access == nil {
		r, err := access.New(access.Config{Resources: c.Resources, Requests: c.Requests})
		if err != nil {
			return trace.Wrap(err)
		}
		c.Access = r
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.LockRecheck == 0 {
		c.LockRecheck = DefaultLockRecheck
	}
	if c.UpstreamCertTTL == 0 {
		c.UpstreamCertTTL = DefaultUpstreamCertTTL
	}
	return nil
}

// Manager starts sessions.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	certs *certCache
}

// New returns a Manager.
func New(cfg Config) (*Manager, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return &Manager{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "session"),
		certs: newCertCache(cfg.Authority, cfg.UpstreamCertTTL, cfg.Clock),
	}, nil
}

// UserCAPool is the pool client certificates must chain to; engines hand
// it to their TLS handshake as ClientCAs.
func (m *Manager) UserCAPool() *x509.CertPool { return m.cfg.Authority.CertPool(ca.UserCA) }

// RouteRequest is what the client asked for in its protocol handshake (for
// PostgreSQL the StartupMessage's user and database). Empty fields take the
// certificate's route.
type RouteRequest struct {
	DBUser string
	DBName string
}

// WhoError refuses a client for who it is: identity, route, lock or
// policy. Engines map it to their protocol's authentication failure
// (PostgreSQL SQLSTATE 28000); Message is safe to show to the client.
type WhoError struct {
	Message string
	Err     error
}

func (e *WhoError) Error() string { return e.Message }
func (e *WhoError) Unwrap() error { return e.Err }

// IsWhoError reports whether err refuses the client for who it is.
func IsWhoError(err error) bool {
	var w *WhoError
	return errors.As(err, &w)
}

// Message returns the client-facing text of err: the WhoError message when
// there is one, otherwise the error text without trace's debug details.
func Message(err error) string {
	var w *WhoError
	if errors.As(err, &w) {
		return w.Message
	}
	return trace.UserMessage(err)
}

func who(err error, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if err != nil {
		msg = msg + ": " + trace.UserMessage(err)
	}
	return &WhoError{Message: msg, Err: err}
}

// Stats is what a protocol engine counted over a session.
type Stats struct {
	// BytesIn is what the client sent, BytesOut what it received.
	BytesIn    int64
	BytesOut   int64
	Statements int64
	// Err is why the session ended, nil for a normal close.
	Err error
	// Details are added to the session end event (e.g. the recordings of
	// an SSH session).
	Details map[string]string
}

// Session is one authenticated, authorized client connection to a
// resource.
type Session struct {
	// ID is a fresh UUID that every event of the session carries.
	ID         string
	Identity   *certid.Identity
	Database   *types.Database
	DBUser     string
	DBName     string
	Decision   *policy.DatabaseDecision
	ClientAddr string
	Protocol   string
	Started    time.Time
	// Node, Login and SSH are set for SSH sessions (see StartSSH).
	Node  *types.Node
	Login string
	SSH   *SSHDecision

	// endType is the type of the end event: db.session.end by default.
	endType string
	// until ends the session when the earliest access request it relies
	// on expires; zero when it relies on none.
	until time.Time

	m     *Manager
	done  chan struct{}
	errMu sync.Mutex
	err   error
	stop  context.CancelFunc
	ended atomic.Bool
	// auditID and auditRes are shared by every event of the session: they
	// are built once and never modified (audit emitters only read
	// sub-messages), which saves two allocations per query.
	auditID  *audit.Identity
	auditRes *audit.Resource

	// approvalsNoted are the approvals already announced with
	// approval.created (see ApproveWrite).
	approvalMu     sync.Mutex
	approvalsNoted map[string]struct{}
}

// Start authenticates and authorizes a client from its verified TLS peer
// certificates, records the durable db.session.start and starts watching
// locks. A refusal for who the client is comes back as *WhoError.
func (m *Manager) Start(ctx context.Context, peerCerts []*x509.Certificate, clientAddr, proto string, req RouteRequest) (*Session, error) {
	if len(peerCerts) == 0 {
		return nil, who(nil, "no client certificate: run \"sigil db login NAME\" and connect with its certificate")
	}
	id, err := certid.Verify(peerCerts[0], peerCerts[1:], m.UserCAPool(), m.cfg.Clock())
	if err != nil {
		return nil, who(err, "certificate refused")
	}
	s, err := m.authorize(ctx, id, clientAddr, proto, req)
	if err != nil {
		if IsWhoError(err) {
			m.emitDenied(ctx, id, clientAddr, proto, err)
		}
		return nil, err
	}
	start := &audit.Event{
		Type:    audit.EventDBSessionStart,
		Success: true,
		Details: map[string]string{
			"protocol":   proto,
			"statements": s.Decision.Statements,
			"role":       s.Decision.Role,
		},
	}
	if err := s.Emit(ctx, start); err != nil {
		m.log.ErrorContext(ctx, "Refusing session: audit log unavailable.", "user", id.Name, "error", err)
		return nil, trace.ConnectionProblem(err, "the audit log is unavailable, so no session can start; try again later or ask an admin to check sigild")
	}
	watchCtx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	go s.watchLocks(watchCtx)
	return s, nil
}

// emitDenied records a refused connection; the refusal stands whether or
// not the event could be stored.
func (m *Manager) emitDenied(ctx context.Context, id *certid.Identity, clientAddr, proto string, refusal error) {
	ev := &audit.Event{
		Type:       audit.EventDBDenied,
		Identity:   audit.IdentityOf(id),
		Resource:   &audit.Resource{Kind: types.KindDatabase, Name: id.Route.ResourceName, DbUser: id.Route.DBUser, DbName: id.Route.DBName},
		ClientAddr: clientAddr,
		Error:      Message(refusal),
		Details:    map[string]string{"protocol": proto},
	}
	if err := m.cfg.Emitter.Emit(ctx, ev); err != nil {
		m.log.WarnContext(ctx, "Recording a refused connection failed.", "user", id.Name, "error", err)
	}
}

// authorize checks the route, locks and policy for a verified identity.
func (m *Manager) authorize(ctx context.Context, id *certid.Identity, clientAddr, proto string, req RouteRequest) (*Session, error) {
	route := id.Route
	if route.ResourceKind != types.KindDatabase || route.ResourceName == "" {
		return nil, who(nil, "this certificate is not for a database; run \"sigil db login NAME\"")
	}
	if req.DBUser != "" && req.DBUser != route.DBUser {
		return nil, who(nil, "this certificate is for db user %q, not %q; run \"sigil db login %s --db-user %s\"", route.DBUser, req.DBUser, route.ResourceName, req.DBUser)
	}
	if req.DBName != "" && route.DBName != "" && req.DBName != route.DBName {
		return nil, who(nil, "this certificate is for database name %q, not %q; run \"sigil db login %s --db-name %s\"", route.DBName, req.DBName, route.ResourceName, req.DBName)
	}
	dbName := route.DBName
	if dbName == "" {
		dbName = req.DBName
	}
	if route.DBUser == "" {
		return nil, who(nil, "this certificate names no db user; run \"sigil db login %s --db-user USER\"", route.ResourceName)
	}
	db, err := resources.Get[*types.Database](ctx, m.cfg.Resources, types.KindDatabase, route.ResourceName)
	if trace.IsNotFound(err) {
		return nil, who(nil, "database %q is not registered with Sigil", route.ResourceName)
	}
	if err != nil {
		return nil, trace.Wrap(err, "loading database %q", route.ResourceName)
	}
	if proto != "" && db.Spec.Protocol != "" && db.Spec.Protocol != proto {
		return nil, who(nil, "database %q speaks %s, not %s; connect with a %s client", route.ResourceName, db.Spec.Protocol, proto, db.Spec.Protocol)
	}
	if err := m.checkLocks(ctx, id); err != nil {
		return nil, err
	}
	checker, until, err := m.checker(ctx, id, types.KindDatabase, db.Metadata.Name)
	if err != nil {
		return nil, err
	}
	dec, err := checker.CheckDatabase(db, route.DBUser, dbName)
	if err != nil {
		if trace.IsAccessDenied(err) {
			return nil, &WhoError{Message: trace.UserMessage(err), Err: err}
		}
		return nil, trace.Wrap(err)
	}
	// Fail closed: a role that asks for per-session MFA gets no session
	// from a certificate that does not carry a verified MFA check. Only
	// our user CA signs the identity (checked before), so the field cannot
	// be forged by a client.
	if role := checker.SessionMFARole(); role != "" && id.MFADevice == "" {
		return nil, who(nil, "role %q requires a per-session MFA check (require_session_mfa) and this certificate carries none; run \"sigil db connect %s\" to pass one", role, route.ResourceName)
	}
	s := &Session{
		ID:         uuid.NewString(),
		Identity:   id,
		Database:   db,
		DBUser:     route.DBUser,
		DBName:     dbName,
		Decision:   dec,
		ClientAddr: clientAddr,
		Protocol:   proto,
		Started:    m.cfg.Clock(),
		m:          m,
		done:       make(chan struct{}),
		auditID:    audit.IdentityOf(id),
		auditRes:   &audit.Resource{Kind: types.KindDatabase, Name: db.Metadata.Name, DbUser: route.DBUser, DbName: dbName},
		until:      until,
	}
	return s, nil
}

// checker evaluates id's access to one resource (see access.Resolver);
// until is when the earliest access request in use expires (zero when
// none is). A problem with the identity is a refusal for who it is.
func (m *Manager) checker(ctx context.Context, id *certid.Identity, kind, name string) (*policy.AccessChecker, time.Time, error) {
	checker, until, err := m.cfg.Access.Checker(ctx, id, kind, name)
	switch {
	case trace.IsNotFound(err) || trace.IsAccessDenied(err) || trace.IsBadParameter(err):
		return nil, until, &WhoError{Message: trace.UserMessage(err), Err: err}
	case err != nil:
		return nil, until, trace.Wrap(err)
	}
	return checker, until, nil
}

// checkLocks refuses an identity under a lock; an agent is also refused
// when the human it acts for is locked.
func (m *Manager) checkLocks(ctx context.Context, id *certid.Identity) error {
	err := m.cfg.Locks.Check(ctx, id.Name, string(id.Kind), id.Roles)
	if err == nil && id.OnBehalfOf != "" {
		err = m.cfg.Locks.Check(ctx, id.OnBehalfOf, types.IdentityKindHuman, nil)
	}
	switch {
	case err == nil:
		return nil
	case trace.IsAccessDenied(err):
		return &WhoError{Message: trace.UserMessage(err), Err: err}
	default:
		return trace.Wrap(err, "checking locks")
	}
}

// Emit records ev stamped with the session id, identity, resource and
// client address. Durable types (see audit.IsDurable) wait for the fsync.
func (s *Session) Emit(ctx context.Context, ev *audit.Event) error {
	s.stamp(ev)
	return trace.Wrap(s.m.cfg.Emitter.Emit(ctx, ev))
}

// EmitOwned is Emit for an event the caller hands over (see
// audit.OwningEmitter): with a store emitter it skips the deep copy, the
// per-query cost engines pay for db.query. ev's Identity and Resource
// become the session's shared, read-only instances.
func (s *Session) EmitOwned(ctx context.Context, ev *audit.Event) error {
	s.stamp(ev)
	return trace.Wrap(audit.EmitOwned(ctx, s.m.cfg.Emitter, ev))
}

// Recorder returns what a relay calls per statement event: EmitOwned,
// not bound to the connection's context (the events of a connection that
// is ending are still recorded), with failures logged rather than
// returned, since the session already started durably and a relay has no
// one to return them to (a failed store refuses new sessions instead).
func (s *Session) Recorder(ctx context.Context, log *slog.Logger) func(*audit.Event) {
	ctx = context.WithoutCancel(ctx)
	return func(ev *audit.Event) {
		typ := ev.Type // ev is handed over: read before
		if err := s.EmitOwned(ctx, ev); err != nil {
			log.ErrorContext(ctx, "Recording an audit event failed.", "type", typ, "error", err)
		}
	}
}

func (s *Session) stamp(ev *audit.Event) {
	ev.SessionId = s.ID
	ev.Identity = s.auditID
	ev.Resource = s.auditRes
	ev.ClientAddr = s.ClientAddr
}

// Done is closed when the session must end because a lock now matches
// its identity; Err says which.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err is why Done was closed, nil before.
func (s *Session) Err() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.err
}

func (s *Session) terminate(err error) {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	if s.err != nil {
		return
	}
	s.err = err
	close(s.done)
}

func (s *Session) watchLocks(ctx context.Context) {
	changes := s.m.cfg.Locks.Changes(ctx)
	tick := time.NewTicker(s.m.cfg.LockRecheck)
	defer tick.Stop()
	var expired <-chan time.Time
	if !s.until.IsZero() {
		t := time.NewTimer(s.until.Sub(s.m.cfg.Clock()))
		defer t.Stop()
		expired = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-changes:
			if !ok {
				changes = nil
			}
		case <-tick.C:
		case <-expired:
		}
		if !s.until.IsZero() && !s.m.cfg.Clock().Before(s.until) {
			s.terminate(who(nil, "the access request this session relies on expired at %s; the roles it granted are gone", s.until.UTC().Format(time.RFC3339)))
			return
		}
		err := s.m.checkLocks(ctx, s.Identity)
		switch {
		case err == nil:
		case IsWhoError(err):
			s.terminate(err)
			return
		case ctx.Err() == nil:
			s.m.log.WarnContext(ctx, "Re-checking locks failed; will retry.", "session_id", s.ID, "error", err)
		}
	}
}

// End stops the lock watch and records db.session.end; it is safe to call
// more than once (only the first records).
func (s *Session) End(ctx context.Context, st Stats) error {
	if !s.ended.CompareAndSwap(false, true) {
		return nil
	}
	if s.stop != nil {
		s.stop()
	}
	typ := audit.EventDBSessionEnd
	if s.endType != "" {
		typ = s.endType
	}
	ev := &audit.Event{
		Type:    typ,
		Success: st.Err == nil,
		Details: map[string]string{
			"duration":   s.m.cfg.Clock().Sub(s.Started).Round(time.Millisecond).String(),
			"bytes_in":   fmt.Sprint(st.BytesIn),
			"bytes_out":  fmt.Sprint(st.BytesOut),
			"statements": fmt.Sprint(st.Statements),
		},
	}
	for k, v := range st.Details {
		ev.Details[k] = v
	}
	if st.Err != nil {
		ev.Error = Message(st.Err)
	}
	return trace.Wrap(s.Emit(ctx, ev))
}

// CheckDBName re-checks the policy for a database name a client switches
// to within a live session (MySQL COM_INIT_DB and USE), where the
// database name is not fixed by the connection. A refusal is a
// *WhoError.
func (s *Session) CheckDBName(ctx context.Context, name string) error {
	route := s.Identity.Route
	if route.DBName != "" && name != route.DBName {
		return who(nil, "this certificate is for database name %q, not %q; run \"sigil db login %s --db-name %s\"", route.DBName, name, route.ResourceName, name)
	}
	checker, _, err := s.m.checker(ctx, s.Identity, types.KindDatabase, s.Database.Metadata.Name)
	if err != nil {
		return err
	}
	if _, err := checker.CheckDatabase(s.Database, s.DBUser, name); err != nil {
		if trace.IsAccessDenied(err) {
			return &WhoError{Message: trace.UserMessage(err), Err: err}
		}
		return trace.Wrap(err)
	}
	return nil
}
