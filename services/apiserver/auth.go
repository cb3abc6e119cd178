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
		ClusterName: a.s.cfg.ClusterName,
		TlsCaPem:    a.s.cfg.Authority.CertPEM(ca.TLSCA),
		Version:     a.s.cfg.Version,
		MysqlAddr:   a.s.cfg.MySQLAddr,
	}), nil
}

func (a *authService) Signup(ctx context.Context, req *connect.Request[sigilv1.SignupRequest]) (*connect.Response[sigilv1.SignupResponse], error) {
	// Per address only: signup tokens are 256-bit secrets, and a shared
	// bucket would cap signups cluster-wide (and collide with a user named
	// "signup").
	if err := a.s.cfg.Limiter.Allow("", peerAddr(req.Peer().Addr)); err != nil {
		return nil, trace.Wrap(err)
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
	if err := s.cfg.Limiter.Allow(limitUser, addr); err != nil {
		return nil, fail(trace.Wrap(err))
	}
	pub, err := parseTLSPublicKey(m.TlsPublicKey)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	var sshPub ssh.PublicKey
	if len(m.SshPublicKey) > 0 {
		if sshPub, _, _, _, err = ssh.ParseAuthorizedKey(m.SshPublicKey); err != nil {
			return nil, trace.BadParameter("ssh_public_key: not an authorized_keys line: %v", err)
		}
	}
	user, err := s.cfg.Users.Authenticate(ctx, m.User, []byte(m.Password), m.Otp)
	if err != nil {
		return nil, fail(trace.Wrap(err))
	}
	if err := s.cfg.Locks.Check(ctx, user.Metadata.Name, string(certid.KindHuman), user.Spec.Roles); err != nil {
		return nil, fail(trace.Wrap(err))
	}
	id := &certid.Identity{
		Name:     user.Metadata.Name,
		Kind:     certid.KindHuman,
		Roles:    user.Spec.Roles,
		Traits:   user.Spec.Traits,
		ClientIP: addr,
	}
	checker, err := s.checker(ctx, id)
	if err != nil {
		return nil, fail(trace.Wrap(err))
	}
	ttl := checker.MaxSessionTTL(s.cfg.DefaultTTL)
	if m.TtlSeconds < 0 {
		return nil, trace.BadParameter("ttl must be positive")
	}
	if req := time.Duration(m.TtlSeconds) * time.Second; req > 0 && req < ttl {
		ttl = req
	}
	certPEM, err := s.cfg.Authority.SignUserCert(id, pub, ttl)
	if err != nil {
		return nil, fail(trace.Wrap(err))
	}
	resp := &sigilv1.LoginResponse{
		TlsCertPem: certPEM,
		TlsCaPem:   s.cfg.Authority.CertPEM(ca.TLSCA),
		UserCaPem:  s.cfg.Authority.CertPEM(ca.UserCA),
		SshCaKeys:  [][]byte{ssh.MarshalAuthorizedKey(s.cfg.Authority.SSHPublicKey(ca.SSHHostCA))},
		Identity:   id.ToProto(),
		Expires:    timestamppb.New(id.Expires),
	}
	if sshPub != nil {
		cert, err := s.cfg.Authority.SignSSHUserCert(id, sshPub, ttl)
		if err != nil {
			return nil, fail(trace.Wrap(err))
		}
		resp.SshCert = ssh.MarshalAuthorizedKey(cert)
	}
	// Login succeeded only if the audit log says so: fail closed.
	if err := s.emit(ctx, &audit.Event{
		Type:       audit.EventUserLogin,
		Identity:   auditIdentity(id),
		ClientAddr: req.Peer().Addr,
		Success:    true,
		Details:    map[string]string{"method": "local"},
	}); err != nil {
		return nil, err
	}
	if err := s.emit(ctx, &audit.Event{
		Type:       audit.EventCertIssued,
		Identity:   auditIdentity(id),
		ClientAddr: req.Peer().Addr,
		Success:    true,
		Details:    map[string]string{"expires": id.Expires.UTC().Format(time.RFC3339), "ttl": ttl.String()},
	}); err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
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
