package apiserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"golang.org/x/crypto/ssh"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/identity/certid"
)

type authService struct{ s *Server }

func (a *authService) ClusterInfo(ctx context.Context, _ *connect.Request[sigilv1.ClusterInfoRequest]) (*connect.Response[sigilv1.ClusterInfoResponse], error) {
	return connect.NewResponse(&sigilv1.ClusterInfoResponse{
		ClusterName:  a.s.cfg.ClusterName,
		TlsCaPem:     a.s.cfg.Authority.CertPEM(ca.TLSCA),
		Version:      a.s.cfg.Version,
		MysqlAddr:    a.s.cfg.MySQLAddr,
		SecondFactor: a.s.cfg.SecondFactor,
	}), nil
}

func (a *authService) Signup(ctx context.Context, req *connect.Request[sigilv1.SignupRequest]) (*connect.Response[sigilv1.SignupResponse], error) {
	// Per address only: signup tokens are 256-bit secrets, and a shared
	// bucket would cap signups cluster-wide (and collide with a user named
	// "signup").
	if err := a.s.cfg.Limiter.Allow("", peerAddr(req.Peer().Addr)); err != nil {
		return nil, trace.Wrap(err)
	}
	if totp, key := a.s.SecondFactorAllows(); totp || key {
		// The signup must register a device, which a browser does best.
		return nil, trace.BadParameter("this gateway asks for a second factor at login, so the signup also registers an MFA device: open %s in a browser", a.s.WebURL("/web/signup/"+req.Msg.Token))
	}
	name, err := a.s.cfg.Users.Signup(ctx, req.Msg.Token, []byte(req.Msg.Password), req.Peer().Addr)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.SignupResponse{User: name}), nil
}

func (a *authService) Login(ctx context.Context, req *connect.Request[sigilv1.LoginRequest]) (*connect.Response[sigilv1.LoginResponse], error) {
	s := a.s
	m := req.Msg
	addr := peerAddr(req.Peer().Addr)
	// The name is attacker controlled: one that cannot be a user must not
	// become a rate limiter key (memory) nor an unbounded audit field.
	limitUser, auditUser := m.User, m.User
	if types.ValidateName("user", m.User) != nil {
		limitUser = ""
		if len(auditUser) > types.MaxNameLen {
			auditUser = strings.ToValidUTF8(auditUser[:types.MaxNameLen], "") + "..."
		}
	}
	fail := func(err error) error {
		_ = s.emit(ctx, &audit.Event{
			Type:       audit.EventUserLogin,
			Identity:   &audit.Identity{User: auditUser, Kind: string(certid.KindHuman)},
			ClientAddr: req.Peer().Addr,
			Success:    false,
			Error:      trace.UserMessage(err),
		})
		return err
	}
	if m.MfaChallengeId != "" {
		// CreateLoginChallenge counted this password already, and an
		// approved challenge is no way to guess one.
		limitUser = ""
	}
	if err := s.cfg.Limiter.Allow(limitUser, addr); err != nil {
		return nil, fail(trace.Wrap(err))
	}
	pub, sshPub, err := parseLoginKeys(m.TlsPublicKey, m.SshPublicKey)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	user, err := s.cfg.Users.Authenticate(ctx, m.User, []byte(m.Password), m.Otp)
	if err != nil {
		return nil, fail(trace.Wrap(err))
	}
	loginDetails := map[string]string{"method": "local"}
	if used, err := s.checkLoginSecondFactor(ctx, user.Metadata.Name, m.Otp, m.MfaChallengeId, m.TlsPublicKey); err != nil {
		return nil, fail(trace.Wrap(err))
	} else if used != nil {
		loginDetails["mfa_device"] = used.Name
	}
	resp, err := s.issueLogin(ctx, loginGrant{
		id: &certid.Identity{
			Name:     user.Metadata.Name,
			Kind:     certid.KindHuman,
			Roles:    user.Spec.Roles,
			Traits:   user.Spec.Traits,
			ClientIP: addr,
		},
		tlsPub:     pub,
		sshPub:     sshPub,
		ttlSeconds: m.TtlSeconds,
		clientAddr: req.Peer().Addr,
		details:    loginDetails,
	})
	if err != nil {
		return nil, fail(err)
	}
	return connect.NewResponse(resp), nil
}

// parseLoginKeys parses the keys a login asks to have signed; the SSH key
// is optional.
func parseLoginKeys(tlsDER, sshLine []byte) (any, ssh.PublicKey, error) {
	pub, err := parseTLSPublicKey(tlsDER)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	var sshPub ssh.PublicKey
	if len(sshLine) > 0 {
		if len(sshLine) > 8192 {
			return nil, nil, trace.BadParameter("ssh_public_key: too large")
		}
		if sshPub, _, _, _, err = ssh.ParseAuthorizedKey(sshLine); err != nil {
			return nil, nil, trace.BadParameter("ssh_public_key: not an authorized_keys line: %v", err)
		}
	}
	return pub, sshPub, nil
}

// loginGrant is an authenticated login: who, and what to sign.
type loginGrant struct {
	id *certid.Identity
	// tlsPub is nil for a web login: it is checked and recorded, and
	// nothing is signed.
	tlsPub     any
	sshPub     ssh.PublicKey
	ttlSeconds int64
	clientAddr string
	// details go into the user.login event (method, connector).
	details map[string]string
	// event is the type of the login event; user.login when empty.
	event string
}

// issueLogin is where every login (password or SSO) ends: it checks locks
// and roles, signs the keys with a TTL clamped by the roles, and records
// the login. Failures are the caller's to record, since only it knows
// what was attempted.
func (s *Server) issueLogin(ctx context.Context, g loginGrant) (*sigilv1.LoginResponse, error) {
	id := g.id
	if err := s.cfg.Locks.Check(ctx, id.Name, string(id.Kind), id.Roles); err != nil {
		return nil, trace.Wrap(err)
	}
	checker, err := s.checker(ctx, id)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	ttl := checker.MaxSessionTTL(s.cfg.DefaultTTL)
	if g.ttlSeconds < 0 {
		return nil, trace.BadParameter("ttl must be positive")
	}
	if req := time.Duration(g.ttlSeconds) * time.Second; req > 0 && req < ttl {
		ttl = req
	}
	resp := &sigilv1.LoginResponse{
		TlsCaPem:  s.cfg.Authority.CertPEM(ca.TLSCA),
		UserCaPem: s.cfg.Authority.CertPEM(ca.UserCA),
		SshCaKeys: [][]byte{ssh.MarshalAuthorizedKey(s.cfg.Authority.SSHPublicKey(ca.SSHHostCA))},
	}
	if g.tlsPub != nil {
		if resp.TlsCertPem, err = s.cfg.Authority.SignUserCert(id, g.tlsPub, ttl); err != nil {
			return nil, trace.Wrap(err)
		}
		resp.Expires = timestamppb.New(id.Expires)
	}
	if g.sshPub != nil {
		cert, err := s.cfg.Authority.SignSSHUserCert(id, g.sshPub, ttl)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		resp.SshCert = ssh.MarshalAuthorizedKey(cert)
	}
	resp.Identity = id.ToProto()
	// Login succeeded only if the audit log says so: fail closed.
	event := g.event
	if event == "" {
		event = audit.EventUserLogin
	}
	if err := s.emit(ctx, &audit.Event{
		Type:       event,
		Identity:   audit.IdentityOf(id),
		ClientAddr: g.clientAddr,
		Success:    true,
		Details:    g.details,
	}); err != nil {
		return nil, err
	}
	if g.tlsPub == nil {
		return resp, nil
	}
	if err := s.emit(ctx, &audit.Event{
		Type:       audit.EventCertIssued,
		Identity:   audit.IdentityOf(id),
		ClientAddr: g.clientAddr,
		Success:    true,
		Details:    map[string]string{"expires": id.Expires.UTC().Format(time.RFC3339), "ttl": ttl.String()},
	}); err != nil {
		return nil, err
	}
	return resp, nil
}

func (a *authService) WhoAmI(ctx context.Context, _ *connect.Request[sigilv1.WhoAmIRequest]) (*connect.Response[sigilv1.WhoAmIResponse], error) {
	id, err := a.s.caller(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return connect.NewResponse(&sigilv1.WhoAmIResponse{
		Identity:   id.ToProto(),
		Expires:    timestamppb.New(id.Expires),
		CertSerial: id.Serial,
	}), nil
}

// parseTLSPublicKey accepts the key kinds our certs use: ECDSA P-256 and Ed25519.
func parseTLSPublicKey(der []byte) (any, error) {
	if len(der) == 0 {
		return nil, trace.BadParameter("tls_public_key: missing (PKIX DER public key)")
	}
	if len(der) > 4096 {
		return nil, trace.BadParameter("tls_public_key: too large")
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, trace.BadParameter("tls_public_key: %v", err)
	}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, trace.BadParameter("tls_public_key: ECDSA keys must use P-256")
		}
	case ed25519.PublicKey:
	default:
		return nil, trace.BadParameter("tls_public_key: %T keys are not accepted; use ECDSA P-256", pub)
	}
	return pub, nil
}

// caTypes maps the CLI's CA names to the authority's.
var caTypes = map[string]ca.Type{
	"tls-ca":      ca.TLSCA,
	"user-ca":     ca.UserCA,
	"db-ca":       ca.DBCA,
	"ssh-user-ca": ca.SSHUserCA,
	"ssh-host-ca": ca.SSHHostCA,
}

func (a *authService) ExportCA(ctx context.Context, req *connect.Request[sigilv1.ExportCARequest]) (*connect.Response[sigilv1.ExportCAResponse], error) {
	t, ok := caTypes[req.Msg.Type]
	if !ok {
		return nil, trace.BadParameter("--type: %q is not one of tls-ca, user-ca, db-ca, ssh-user-ca, ssh-host-ca", req.Msg.Type)
	}
	auth := a.s.cfg.Authority
	resp := &sigilv1.ExportCAResponse{}
	if t.IsSSH() {
		pub := auth.SSHPublicKey(t)
		line := ssh.MarshalAuthorizedKey(pub)
		if t == ca.SSHHostCA {
			// known_hosts form, so it can be appended as is.
			line = append([]byte("@cert-authority * "), line...)
		}
		resp.Data = line
		resp.Fingerprint = ssh.FingerprintSHA256(pub)
	} else {
		resp.Data = auth.CertPEM(t)
		resp.Fingerprint = client.Fingerprint(auth.Certificate(t).Raw)
	}
	return connect.NewResponse(resp), nil
}
