package apiserver

import (
	"context"
	"crypto/ed25519"
	"log/slog"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/gen/sigil/v1/sigilv1connect"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/audit/store"
	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/identity/policy"
	"github.com/sigilhq/sigil/services/access"
	"github.com/sigilhq/sigil/services/approvals"
	"github.com/sigilhq/sigil/services/bots"
	"github.com/sigilhq/sigil/services/locks"
	"github.com/sigilhq/sigil/services/mfa"
	"github.com/sigilhq/sigil/services/requests"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/roles"
	"github.com/sigilhq/sigil/services/sso"
	"github.com/sigilhq/sigil/services/users"
)

const (
	// MaxRequestBytes bounds every API request body; bigger ones are
	// refused before any of it is parsed.
	MaxRequestBytes = 1 << 20
	// DefaultCertTTL is the login certificate lifetime unless a role or the
	// caller asks for less.
	DefaultCertTTL = 8 * time.Hour
)

// Config configures the API server.
type Config struct {
	Authority *ca.Authority
	Resources *resources.Store
	Users     *users.Service
	Locks     *locks.Service
	Emitter   audit.Emitter
	// AuditStore serves AuditService reads; without one, AuditService
	// calls fail with NotImplemented.
	AuditStore store.Store
	// AuditPublicKey verifies audit checkpoints.
	AuditPublicKey ed25519.PublicKey
	Limiter        *authn.RateLimiter
	// SSO runs OIDC and SAML logins and keeps connector secrets; without
	// it SSOService calls and creating connectors fail with
	// NotImplemented.
	SSO *sso.Service
	// Requests stores access requests; without it RequestService calls
	// fail with NotImplemented and certificates naming requests are
	// refused.
	Requests *requests.Service
	// Bots joins and renews bots and agents; without it JoinService calls
	// fail with NotImplemented.
	Bots *bots.Service
	// Access decides for identities; defaults to one over Resources,
	// Requests and Bots.
	Access *access.Resolver
	// Approvals stores agents' write approvals; without it
	// ApprovalService calls fail with NotImplemented.
	Approvals   *approvals.Service
	ClusterName string
	// PublicAddr is the host:port users reach the gateway on (signup links).
	PublicAddr string
	// RecordingsDir holds SSH session recordings (GetRecording); empty
	// when the gateway keeps none.
	RecordingsDir string
	// MFA keeps MFA devices and runs challenges; without it MFAService
	// calls fail with NotImplemented and no second factor can be asked.
	MFA *mfa.Service
	// SecondFactor is auth.second_factor: off, otp, webauthn or on.
	SecondFactor string
	// MySQLAddr is the MySQL listener address clients use (ClusterInfo).
	MySQLAddr  string
	Version    string
	DefaultTTL time.Duration
	Clock      func() time.Time
	Logger     *slog.Logger
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	switch {
	case c.Authority == nil:
		return trace.BadParameter("apiserver: missing Authority")
	case c.Resources == nil:
		return trace.BadParameter("apiserver: missing Resources")
	case c.Users == nil:
		return trace.BadParameter("apiserver: missing Users")
	case c.Locks == nil:
		return trace.BadParameter("apiserver: missing Locks")
	case c.Emitter == nil:
		return trace.BadParameter("apiserver: missing Emitter")
	case c.ClusterName == "":
		return trace.BadParameter("apiserver: missing ClusterName")
	case c.PublicAddr == "":
		return trace.BadParameter("apiserver: missing PublicAddr")
	}
	if c.DefaultTTL == 0 {
		c.DefaultTTL = DefaultCertTTL
	}
	if c.Access == nil {
		cfg := access.Config{Resources: c.Resources, Requests: c.Requests}
		if c.Bots != nil {
			cfg.Delegates = c.Bots
		}
		r, err := access.New(cfg)
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
	if err := checkSecondFactor(c.SecondFactor, c.MFA); err != nil {
		return trace.Wrap(err)
	}
	if c.SecondFactor == "" {
		c.SecondFactor = SecondFactorOff
	}
	if c.Limiter == nil {
		l, err := authn.NewRateLimiter(authn.RateLimiterConfig{Clock: c.Clock})
		if err != nil {
			return trace.Wrap(err)
		}
		c.Limiter = l
	}
	return nil
}

// Server implements the Connect services.
type Server struct {
	cfg Config
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return &Server{cfg: cfg}, nil
}

// Handler returns the HTTP handler serving every Connect service. It must
// sit behind a TLS listener that asks for (but does not require) a client
// certificate signed by the user CA.
func (s *Server) Handler() http.Handler {
	opts := []connect.HandlerOption{
		connect.WithInterceptors(errorInterceptor(s.cfg.Logger)),
		connect.WithReadMaxBytes(MaxRequestBytes),
	}
	mux := http.NewServeMux()
	mux.Handle(sigilv1connect.NewAuthServiceHandler(&authService{s}, opts...))
	mux.Handle(sigilv1connect.NewResourceServiceHandler(&resourceService{s}, opts...))
	mux.Handle(sigilv1connect.NewUserServiceHandler(&userService{s}, opts...))
	mux.Handle(sigilv1connect.NewTokenServiceHandler(&tokenService{s}, opts...))
	mux.Handle(sigilv1connect.NewLockServiceHandler(&lockService{s}, opts...))
	mux.Handle(sigilv1connect.NewAuditServiceHandler(&auditService{s}, opts...))
	mux.Handle(sigilv1connect.NewDatabaseServiceHandler(&databaseService{s}, opts...))
	mux.Handle(sigilv1connect.NewMFAServiceHandler(&mfaService{s}, opts...))
	mux.Handle(sigilv1connect.NewSSHServiceHandler(&sshService{s}, opts...))
	mux.Handle(sigilv1connect.NewSSOServiceHandler(&ssoService{s}, opts...))
	mux.Handle(sigilv1connect.NewRequestServiceHandler(&requestService{s}, opts...))
	mux.Handle(sigilv1connect.NewJoinServiceHandler(&joinService{s}, opts...))
	mux.Handle(sigilv1connect.NewApprovalServiceHandler(&approvalService{s}, opts...))
	return s.withIdentity(mux)
}

type identityKey struct{}

type callerInfo struct {
	id  *certid.Identity
	err error
	// web is set for web console users calling in-process (WithWebCaller);
	// binding names their console session (it binds MFA challenges).
	web     bool
	binding string
}

// WithWebCaller returns ctx carrying the identity of a web console user,
// for calling Handler in-process: the console authenticated the user by
// its cookie session, and binding names that session. Only Go code can
// put this in a request's context; requests from the network never carry
// it.
func WithWebCaller(ctx context.Context, id *certid.Identity, binding string) context.Context {
	return context.WithValue(ctx, identityKey{}, &callerInfo{id: id, web: true, binding: binding})
}

// withIdentity decodes the client certificate (if any) once per request
// and bounds the request body.
func (s *Server) withIdentity(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, MaxRequestBytes)
		if info, ok := r.Context().Value(identityKey{}).(*callerInfo); ok && info.web {
			next.ServeHTTP(w, r)
			return
		}
		info := &callerInfo{err: trace.AccessDenied("this call needs a client certificate: run \"sigil login\" first")}
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			id, err := certid.Verify(r.TLS.PeerCertificates[0], r.TLS.PeerCertificates[1:], s.cfg.Authority.CertPool(ca.UserCA), s.cfg.Clock())
			info = &callerInfo{id: id, err: err}
		}
		ctx := context.WithValue(r.Context(), identityKey{}, info)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// caller returns the authenticated identity of the request, refusing
// locked identities on every call.
func (s *Server) caller(ctx context.Context) (*certid.Identity, error) {
	info, _ := ctx.Value(identityKey{}).(*callerInfo)
	if info == nil {
		return nil, trace.AccessDenied("unauthenticated")
	}
	if info.err != nil {
		return nil, connect.NewError(connect.CodeUnauthenticated, info.err)
	}
	if err := s.cfg.Locks.Check(ctx, info.id.Name, string(info.id.Kind), info.id.Roles); err != nil {
		return nil, trace.Wrap(err)
	}
	// A lock on a person also stops the agents acting for them.
	if p := info.id.OnBehalfOf; p != "" {
		if err := s.cfg.Locks.Check(ctx, p, types.IdentityKindHuman, nil); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	return info.id, nil
}

// roles loads role resources by name (built-in ones included).
func (s *Server) roles(ctx context.Context, names []string) ([]*types.Role, error) {
	return roles.Get(ctx, s.cfg.Resources, names)
}

func (s *Server) checker(ctx context.Context, id *certid.Identity) (*policy.AccessChecker, error) {
	return s.checkerFor(ctx, id, "", "")
}

// checkerFor evaluates id's access for one resource (kind, name; empty
// for questions that name none), see access.Resolver.
func (s *Server) checkerFor(ctx context.Context, id *certid.Identity, kind, name string) (*policy.AccessChecker, error) {
	checker, _, err := s.cfg.Access.Checker(ctx, id, kind, name)
	return checker, trace.Wrap(err)
}

// authorize authenticates the caller and checks one admin verb on a kind.
func (s *Server) authorize(ctx context.Context, kind, verb string) (*certid.Identity, error) {
	id, err := s.caller(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	checker, err := s.checker(ctx, id)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if err := checker.CheckRule(kind, verb); err != nil {
		return nil, trace.Wrap(err)
	}
	return id, nil
}

// emit records an audit event; a failure to record is logged, and
// returned so that callers on the control plane can fail closed.
func (s *Server) emit(ctx context.Context, ev *audit.Event) error {
	if err := s.cfg.Emitter.Emit(ctx, ev); err != nil {
		s.cfg.Logger.ErrorContext(ctx, "failed to emit audit event", "type", ev.Type, "error", err)
		return trace.Wrap(err, "recording the audit event failed")
	}
	return nil
}

func peerAddr(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}
