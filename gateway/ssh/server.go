package ssh

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gravitational/trace"
	gossh "golang.org/x/crypto/ssh"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/gateway/mux"
	"github.com/sigilhq/sigil/gateway/session"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/resources"
)

const (
	// DefaultHandshakeTimeout bounds the client's SSH handshake and
	// authentication.
	DefaultHandshakeTimeout = 30 * time.Second
	// DefaultDialTimeout bounds connecting and authenticating to a node.
	DefaultDialTimeout = 15 * time.Second
	// DefaultUpstreamCertTTL is the lifetime of the certificate the
	// gateway presents to a node: long enough to connect, no longer (the
	// session lives on once authenticated).
	DefaultUpstreamCertTTL = time.Minute
	// DefaultHostCertTTL is the lifetime of the gateway's own host
	// certificates; they are re-signed before they run out.
	DefaultHostCertTTL = 24 * time.Hour
	// maxJumpsPerConn bounds concurrent inner connections of one jump
	// connection.
	maxJumpsPerConn = 64
	serverVersion   = "SSH-2.0-Sigil"
)

// clientCiphers are the only ciphers offered to clients. Clients pick
// by their own preference, and OpenSSH prefers chacha20-poly1305 and then
// AES-CTR with a MAC, both several times the gateway's CPU per byte of
// AES-GCM (which Go runs with AES-NI and which needs no separate MAC):
// offering GCM only halves what re-encrypting a session costs. Every
// OpenSSH since 6.2, PuTTY since 0.76 and Go's x/crypto speak it.
var clientCiphers = []string{"aes128-gcm@openssh.com", "aes256-gcm@openssh.com"}

// Config configures a Server.
type Config struct {
	// Sessions authorizes logins and records sessions.
	Sessions *session.Manager
	// Authority holds the SSH user CA (client certificates, upstream
	// certificates) and the SSH host CA (gateway host certificates, node
	// host certificates).
	Authority *ca.Authority
	// Resources holds the nodes.
	Resources *resources.Store
	// ClusterName lets clients name nodes NODE.CLUSTER (ssh_config Host
	// patterns).
	ClusterName string
	// RecordingsDir receives the recordings of interactive sessions.
	RecordingsDir string
	// HostNames are the names and addresses clients reach the gateway by;
	// they are the principals of the gateway's host certificate.
	HostNames []string
	// GetCertificate returns the gateway's TLS server certificate; when
	// set, "sigil proxy ssh" connections (ALPN sigil-ssh) are served too.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Clock defaults to time.Now.
	Clock func() time.Time
	// HandshakeTimeout defaults to DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// DialTimeout defaults to DefaultDialTimeout.
	DialTimeout time.Duration
	// UpstreamCertTTL defaults to DefaultUpstreamCertTTL.
	UpstreamCertTTL time.Duration
	// HostCertTTL defaults to DefaultHostCertTTL.
	HostCertTTL time.Duration
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	switch {
	case c.Sessions == nil:
		return trace.BadParameter("ssh: missing Sessions")
	case c.Authority == nil:
		return trace.BadParameter("ssh: missing Authority")
	case c.Resources == nil:
		return trace.BadParameter("ssh: missing Resources")
	case c.RecordingsDir == "":
		return trace.BadParameter("ssh: missing RecordingsDir")
	case len(c.HostNames) == 0:
		return trace.BadParameter("ssh: missing HostNames")
	case c.HandshakeTimeout < 0 || c.DialTimeout < 0 || c.UpstreamCertTTL < 0 || c.HostCertTTL < 0:
		return trace.BadParameter("ssh: durations must not be negative")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.UpstreamCertTTL == 0 {
		c.UpstreamCertTTL = DefaultUpstreamCertTTL
	}
	if c.HostCertTTL == 0 {
		c.HostCertTTL = DefaultHostCertTTL
	}
	return nil
}

// Server is the SSH engine.
type Server struct {
	cfg      Config
	log      *slog.Logger
	hostKeys *hostKeys
	userCA   []byte
	hostCA   gossh.PublicKey
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	hk, err := newHostKeys(cfg.Authority, cfg.HostCertTTL, cfg.Clock)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	userCA := cfg.Authority.SSHPublicKey(ca.SSHUserCA)
	hostCA := cfg.Authority.SSHPublicKey(ca.SSHHostCA)
	if userCA == nil || hostCA == nil {
		return nil, trace.BadParameter("ssh: the SSH CAs are not loaded")
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "ssh"), hostKeys: hk, userCA: userCA.Marshal(), hostCA: hostCA}
	// Sign once now so that a CA problem shows at start, not per client.
	if _, err := hk.get(cfg.HostNames); err != nil {
		return nil, trace.Wrap(err)
	}
	return s, nil
}

// Register routes SSH connections of m (sniffed "SSH-" banner, and TLS
// with ALPN sigil-ssh when GetCertificate is set) to s.
func (s *Server) Register(m *mux.Mux) {
	m.Handle(mux.ProtocolSSH, s.HandleConn)
	if s.cfg.GetCertificate != nil {
		m.HandleALPN([]string{ALPNProtocol}, s.HandleTLS)
	}
}

// HandleConn serves one client connection.
func (s *Server) HandleConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	s.serve(ctx, conn, conn.RemoteAddr().String(), nil)
}

// jumpTarget is the node an inner connection (a jump's direct-tcpip
// channel) is for.
type jumpTarget struct {
	node *types.Node
	// host is the name the client dialed, a host certificate principal.
	host string
	// owner, when set, is the identity that opened the carrying
	// connection (TLS); the SSH certificate must be the same person's.
	owner string
}

// connState is what authentication learnt about one client connection.
type connState struct {
	s          *Server
	ctx        context.Context
	clientAddr string
	jump       *jumpTarget

	id *certid.Identity
	// sess is set once the login was authorized (LOGIN@NODE or an inner
	// connection); nil for a jump connection.
	sess *session.Session
}

// idKey holds the identity in Permissions.ExtraData between the two
// authentication callbacks.
type idKey struct{}

// serve runs one SSH connection, outer (from the mux) or inner (jump).
func (s *Server) serve(ctx context.Context, conn net.Conn, clientAddr string, jump *jumpTarget) {
	log := s.log.With("client_addr", clientAddr)
	st := &connState{s: s, ctx: ctx, clientAddr: clientAddr, jump: jump}
	names := s.cfg.HostNames
	if jump != nil {
		names = s.nodeNames(jump.node, jump.host)
	}
	hostSigner, err := s.hostKeys.get(names)
	if err != nil {
		log.ErrorContext(ctx, "No SSH host certificate.", "error", err)
		return
	}
	cfg := &gossh.ServerConfig{
		PublicKeyCallback:         st.checkKey,
		VerifiedPublicKeyCallback: st.verified,
		ServerVersion:             serverVersion,
		Config:                    gossh.Config{Ciphers: clientCiphers},
		AuthLogCallback: func(md gossh.ConnMetadata, method string, err error) {
			if err != nil && method != "none" {
				log.DebugContext(ctx, "SSH authentication attempt failed.", "user", md.User(), "method", method, "error", err)
			}
		},
	}
	cfg.AddHostKey(hostSigner)

	_ = conn.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	// Inner connections ride a channel, which has no deadlines.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	timer := time.AfterFunc(s.cfg.HandshakeTimeout, func() {
		if jump != nil {
			conn.Close()
		}
	})
	sconn, chans, reqs, err := gossh.NewServerConn(conn, cfg)
	timer.Stop()
	stop()
	if err != nil {
		log.DebugContext(ctx, "SSH handshake failed.", "error", err)
		if st.sess != nil {
			st.end(session.Stats{Err: trace.ConnectionProblem(err, "SSH handshake failed")}, nil)
		}
		return
	}
	_ = conn.SetDeadline(time.Time{})
	defer sconn.Close()
	if st.sess == nil {
		s.serveJump(ctx, st, sconn, chans, reqs)
		return
	}
	s.serveSession(ctx, st, sconn, chans, reqs)
}

func (st *connState) end(stats session.Stats, recordings []string) {
	if len(recordings) > 0 {
		stats.Details = map[string]string{"recordings": strings.Join(recordings, ",")}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(st.ctx), 10*time.Second)
	defer cancel()
	if err := st.sess.End(ctx, stats); err != nil {
		st.s.log.WarnContext(ctx, "Recording the session end failed.", "session_id", st.sess.ID, "error", err)
	}
}

// banner refuses authentication with a message OpenSSH shows the user.
func banner(format string, args ...any) error {
	msg := "sigil: " + fmt.Sprintf(format, args...)
	return &gossh.BannerError{Err: errors.New(msg), Message: msg + "\r\n"}
}

// checkKey accepts Sigil SSH user certificates: signed by the SSH user
// CA, valid now, carrying an identity. It runs before the client proved
// it holds the key, so it only inspects the certificate. Plain keys and
// certificates of other CAs are refused silently: clients try every key
// they have.
func (st *connState) checkKey(md gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
	s := st.s
	cert, ok := key.(*gossh.Certificate)
	if !ok {
		return nil, errors.New("not a certificate")
	}
	if cert.CertType != gossh.UserCert || !bytes.Equal(cert.SignatureKey.Marshal(), s.userCA) {
		return nil, errors.New("certificate not signed by the SSH user CA")
	}
	now := s.cfg.Clock()
	if before := cert.ValidBefore; before != gossh.CertTimeInfinity && now.Unix() >= int64(before) {
		return nil, banner("your Sigil SSH certificate expired at %s; run \"sigil login\" again",
			time.Unix(int64(before), 0).UTC().Format(time.RFC3339))
	}
	checker := &gossh.CertChecker{Clock: s.cfg.Clock}
	principal := ""
	if len(cert.ValidPrincipals) > 0 {
		// The login is authorized by policy below, not by the principals
		// minted at login time; any principal passes this check, which
		// then verifies the signature, validity and critical options.
		principal = cert.ValidPrincipals[0]
	}
	if err := checker.CheckCert(principal, cert); err != nil {
		return nil, banner("certificate refused: %v", err)
	}
	id, err := certid.FromSSHCert(cert)
	if err != nil {
		return nil, banner("certificate refused: %s", trace.UserMessage(err))
	}
	return &gossh.Permissions{ExtraData: map[any]any{idKey{}: id}}, nil
}

// verified runs once the client proved it holds the certificate's key:
// it authorizes the login (LOGIN@NODE, or the inner connection of a
// jump) or, for a jump connection, checks locks.
func (st *connState) verified(md gossh.ConnMetadata, _ gossh.PublicKey, perms *gossh.Permissions, _ string) (*gossh.Permissions, error) {
	s := st.s
	id, _ := perms.ExtraData[idKey{}].(*certid.Identity)
	if id == nil {
		return nil, errors.New("no identity")
	}
	st.id = id
	user := md.User()
	var req session.SSHRequest
	switch login, target, named := strings.Cut(user, "@"); {
	case st.jump != nil:
		if st.jump.owner != "" && st.jump.owner != id.Name {
			return nil, banner("this connection was opened as %q but the SSH certificate is %q's; use one login", st.jump.owner, id.Name)
		}
		req = session.SSHRequest{Node: st.jump.node, Target: st.jump.host, Login: user}
	case named:
		node, err := s.resolveNode(st.ctx, target, 0)
		if err != nil {
			return nil, banner("cannot look up node %q: %s", target, trace.UserMessage(err))
		}
		req = session.SSHRequest{Node: node, Target: target, Login: login}
	default:
		// A jump connection (ssh -J, sigil proxy ssh): each direct-tcpip
		// channel carries an inner connection that is authorized on its own.
		if err := s.cfg.Sessions.CheckLocks(st.ctx, id); err != nil {
			return nil, banner("%s", session.Message(err))
		}
		return perms, nil
	}
	if st.sess != nil {
		return nil, errors.New("already authenticated")
	}
	req.ID = uuid.NewString()
	req.ClientAddr = st.clientAddr
	req.Details = map[string]string{"recording": req.ID}
	sess, err := s.cfg.Sessions.StartSSH(st.ctx, id, req)
	if err != nil {
		s.log.InfoContext(st.ctx, "Refused SSH login.", "user", id.Name, "login", req.Login, "target", req.Target, "error", err)
		return nil, banner("%s", session.Message(err))
	}
	st.sess = sess
	return perms, nil
}

// nodeNames are the principals of the host certificate the inner server
// presents for node: whatever name the client may have dialed it by.
func (s *Server) nodeNames(node *types.Node, dialed string) []string {
	names := []string{node.Metadata.Name}
	if s.cfg.ClusterName != "" {
		names = append(names, node.Metadata.Name+"."+s.cfg.ClusterName)
	}
	if host, _, err := net.SplitHostPort(node.Spec.Addr); err == nil {
		names = append(names, host)
	}
	return append(names, dialed)
}

// resolveNode finds the node a client named: by name, NAME.CLUSTER, or
// its address (host alone when port is 0). A nil node and nil error mean
// no node matches.
func (s *Server) resolveNode(ctx context.Context, host string, port int) (*types.Node, error) {
	if host == "" {
		return nil, nil
	}
	nodes, err := resources.List[*types.Node](ctx, s.cfg.Resources, types.KindNode)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	name := host
	if s.cfg.ClusterName != "" {
		name = strings.TrimSuffix(host, "."+s.cfg.ClusterName)
	}
	for _, n := range nodes {
		if n.Metadata.Name == host || n.Metadata.Name == name {
			return n, nil
		}
	}
	var byHost []*types.Node
	for _, n := range nodes {
		h, p, err := net.SplitHostPort(n.Spec.Addr)
		if err != nil || !strings.EqualFold(h, host) {
			continue
		}
		if port != 0 && p == fmt.Sprint(port) {
			return n, nil
		}
		byHost = append(byHost, n)
	}
	if port == 0 && len(byHost) == 1 {
		return byHost[0], nil
	}
	return nil, nil
}

// recordingID names the nth (from 1) recording of a session.
func recordingID(sessionID string, n int) string {
	if n <= 1 {
		return sessionID
	}
	return fmt.Sprintf("%s-%d", sessionID, n)
}
