package ssh

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"strings"
	"time"

	"github.com/gravitational/trace"
	gossh "golang.org/x/crypto/ssh"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/gateway/session"
	"github.com/sigilhq/sigil/identity/certid"
)

// hostKeyAlgorithms asks nodes for their host certificate first; plain
// keys come last only so that a node without a certificate is refused
// with a message saying so rather than "no common algorithm".
var hostKeyAlgorithms = []string{
	gossh.CertAlgoED25519v01, gossh.CertAlgoECDSA256v01, gossh.CertAlgoECDSA384v01, gossh.CertAlgoECDSA521v01,
	gossh.CertAlgoRSASHA512v01, gossh.CertAlgoRSASHA256v01,
	gossh.KeyAlgoED25519, gossh.KeyAlgoECDSA256, gossh.KeyAlgoECDSA384, gossh.KeyAlgoECDSA521,
	gossh.KeyAlgoRSASHA512, gossh.KeyAlgoRSASHA256,
}

// upstream is an authenticated connection to a node.
type upstream struct {
	conn  gossh.Conn
	chans <-chan gossh.NewChannel
	reqs  <-chan *gossh.Request
}

// dialNode connects to the session's node as its login, with a fresh
// certificate signed by the SSH user CA that is valid only long enough to
// connect, and verifies the node's host certificate.
func (s *Server) dialNode(ctx context.Context, sess *session.Session) (*upstream, error) {
	node := sess.Node
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	// A copy: signing records the serial and expiry in the identity.
	routed := *sess.Identity
	routed.Route = certid.Route{ResourceKind: types.KindNode, ResourceName: node.Metadata.Name, Login: sess.Login}
	cert, err := s.cfg.Authority.SignSSHUserCert(&routed, signer.PublicKey(), s.cfg.UpstreamCertTTL)
	if err != nil {
		return nil, trace.Wrap(err, "signing the certificate for node %q", node.Metadata.Name)
	}
	certSigner, err := gossh.NewCertSigner(cert, signer)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", node.Spec.Addr)
	if err != nil {
		return nil, trace.ConnectionProblem(err, "cannot reach node %q at %s: %v", node.Metadata.Name, node.Spec.Addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	var hostKeyErr error
	conf := &gossh.ClientConfig{
		User: sess.Login,
		Auth: []gossh.AuthMethod{gossh.PublicKeys(certSigner)},
		HostKeyCallback: func(_ string, _ net.Addr, key gossh.PublicKey) error {
			hostKeyErr = s.checkNodeHostKey(node, key)
			return hostKeyErr
		},
		HostKeyAlgorithms: hostKeyAlgorithms,
		ClientVersion:     serverVersion,
	}
	c, chans, reqs, err := gossh.NewClientConn(nc, node.Spec.Addr, conf)
	if err != nil {
		nc.Close()
		switch {
		case hostKeyErr != nil:
			return nil, trace.Wrap(hostKeyErr)
		case strings.Contains(err.Error(), "unable to authenticate"):
			return nil, trace.AccessDenied("node %q refused Sigil's certificate for login %q: check that the login exists there and that its sshd_config has TrustedUserCAKeys with \"sigilctl auth export --type ssh-user-ca\"", node.Metadata.Name, sess.Login)
		case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
			return nil, trace.ConnectionProblem(err, "node %q at %s did not complete the SSH handshake within %s", node.Metadata.Name, node.Spec.Addr, s.cfg.DialTimeout)
		}
		return nil, trace.ConnectionProblem(err, "SSH handshake with node %q at %s failed: %v", node.Metadata.Name, node.Spec.Addr, err)
	}
	_ = nc.SetDeadline(time.Time{})
	return &upstream{conn: c, chans: chans, reqs: reqs}, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// checkNodeHostKey accepts only a host certificate signed by the SSH host
// CA, valid now, for the node's name or the host of its address.
func (s *Server) checkNodeHostKey(node *types.Node, key gossh.PublicKey) error {
	name := node.Metadata.Name
	cert, ok := key.(*gossh.Certificate)
	if !ok {
		return trace.AccessDenied("node %q presented a plain host key, not a host certificate from Sigil's SSH host CA; set HostKey and HostCertificate in its sshd_config with the files of \"sigilctl auth sign --format openssh --host %s\"", name, name)
	}
	if cert.CertType != gossh.HostCert {
		return trace.AccessDenied("node %q presented a user certificate as its host key", name)
	}
	if !bytes.Equal(cert.SignatureKey.Marshal(), s.hostCA.Marshal()) {
		return trace.AccessDenied("node %q presented a host certificate signed by another CA (%s), not Sigil's SSH host CA (%s); re-issue it with \"sigilctl auth sign --format openssh --host %s\"",
			name, gossh.FingerprintSHA256(cert.SignatureKey), gossh.FingerprintSHA256(s.hostCA), name)
	}
	checker := &gossh.CertChecker{Clock: s.cfg.Clock}
	candidates := []string{name}
	if host, _, err := net.SplitHostPort(node.Spec.Addr); err == nil && host != name {
		candidates = append(candidates, host)
	}
	var lastErr error
	for _, p := range candidates {
		if lastErr = checker.CheckCert(p, cert); lastErr == nil {
			return nil
		}
	}
	return trace.AccessDenied("node %q host certificate refused (%v); it must be valid and name %s among its principals",
		name, lastErr, strings.Join(quoteAll(candidates), " or "))
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = "\"" + s + "\""
	}
	return out
}
