package mysql

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/gateway/mux"
	"github.com/sigilhq/sigil/gateway/session"
	"github.com/sigilhq/sigil/gateway/sqlpolicy"
)

// ALPNProtocols are served on the main gateway port (the local tunnel).
var ALPNProtocols = []string{"sigil-mysql"}

const (
	// DefaultHandshakeTimeout bounds the TLS handshake and the MySQL
	// connection phase with the client.
	DefaultHandshakeTimeout = 15 * time.Second
	// DefaultDialTimeout bounds connecting and authenticating upstream.
	DefaultDialTimeout = 15 * time.Second
	// clientBufferSize is the client reader's buffer; COM_STMT_EXECUTE
	// parameters are decoded from at most a peek of this size.
	clientBufferSize = 128 << 10
)

// Config configures a Server.
type Config struct {
	// Sessions authenticates and authorizes clients.
	Sessions *session.Manager
	// GetCertificate returns the gateway's TLS server certificate.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Classifier defaults to a new MySQL-dialect sqlpolicy classifier.
	Classifier *sqlpolicy.Classifier
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// HandshakeTimeout defaults to DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// DialTimeout defaults to DefaultDialTimeout.
	DialTimeout time.Duration
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Sessions == nil {
		return trace.BadParameter("mysql: missing Sessions")
	}
	if c.GetCertificate == nil {
		return trace.BadParameter("mysql: missing GetCertificate")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Classifier == nil {
		cl, err := sqlpolicy.NewClassifier(sqlpolicy.Config{Dialect: sqlpolicy.DialectMySQL, Logger: c.Logger})
		if err != nil {
			return trace.Wrap(err)
		}
		c.Classifier = cl
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	return nil
}

// Server is the MySQL engine.
type Server struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closed    bool
	wg        sync.WaitGroup

	killMu   sync.Mutex
	byGW     map[uint32]*killEntry
	byThread map[threadKey]*killEntry
}

// killEntry is a live session KILL may target.
type killEntry struct {
	gwID      uint32
	user      string
	database  string
	threadID  uint32
	sessionID string
}

type threadKey struct {
	database string
	thread   uint32
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return &Server{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "mysql"),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]struct{}),
		byGW:      make(map[uint32]*killEntry),
		byThread:  make(map[threadKey]*killEntry),
	}, nil
}

// Register routes ALPN sigil-mysql connections of m to s.
func (s *Server) Register(m *mux.Mux) {
	m.HandleALPN(ALPNProtocols, s.HandleALPN)
}

// Serve accepts MySQL clients on ln until ln is closed or ctx is done.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return trace.Wrap(ln.Close())
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return trace.Wrap(err)
		}
		delay = 0
		if !s.track(conn) {
			conn.Close()
			return nil
		}
		go func() {
			defer s.untrack(conn)
			s.HandleConn(ctx, conn)
		}()
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Close stops the listeners Serve runs and closes live connections.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		_ = ln.Close()
	}
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: s.cfg.GetCertificate,
		NextProtos:     ALPNProtocols,
		// As for PostgreSQL: the chain is verified by session.Start so
		// that a refusal reaches the client as a MySQL error saying why.
		ClientAuth: tls.RequireAnyClientCert,
	}
}

// clientConn is a client in its connection phase.
type clientConn struct {
	conn   net.Conn
	r      *bufio.Reader
	connID uint32
	// seq is the sequence id of the gateway's next packet.
	seq byte
}

func (c *clientConn) writeErr(code uint16, state, msg string) {
	_, _ = c.conn.Write(errPacket(c.seq, code, state, msg))
}

// HandleConn serves a client on the MySQL listener: handshake, SSLRequest,
// TLS, then the session.
func (s *Server) HandleConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	connID, scramble := s.newConnID(), newScramble()
	defer s.forgetKill(connID)
	hs := &serverHandshake{version: serverVersion, connID: connID, authData: scramble, caps: serverCaps,
		collation: defaultCollation, status: statusAutocommit, plugin: nativePasswordPlugin}
	if _, err := conn.Write(appendPacket(nil, 0, hs.encode())); err != nil {
		return
	}
	seq, p, err := readPacket(conn, nil, maxHandshakePacket)
	if err != nil {
		s.log.DebugContext(ctx, "Bad MySQL handshake response.", "error", err)
		return
	}
	plain := &clientConn{conn: conn, connID: connID, seq: seq + 1}
	req, err := parseHandshakeResponse(p)
	if err != nil {
		plain.writeErr(erHandshake, stateConnection, "sigil: "+trace.UserMessage(err))
		return
	}
	if len(p) != sslRequestLen || req.caps&capSSL == 0 {
		plain.writeErr(erAccessDenied, stateAccessDenied,
			"sigil: TLS is required: connect with --ssl-cert/--ssl-key (tls=custom) and a certificate from \"sigil db login\"")
		return
	}
	tc := tls.Server(conn, s.tlsConfig())
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err = tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.log.DebugContext(ctx, "TLS handshake failed.", "error", err)
		return
	}
	c := &clientConn{conn: tc, r: bufio.NewReaderSize(tc, clientBufferSize), connID: connID}
	seq, p, err = readPacket(c.r, nil, maxHandshakePacket)
	if err != nil {
		return
	}
	c.seq = seq + 1
	if len(p) == sslRequestLen {
		c.writeErr(erHandshake, stateConnection, "sigil: TLS requested twice")
		return
	}
	req, err = parseHandshakeResponse(p)
	if err != nil {
		c.writeErr(erHandshake, stateConnection, "sigil: "+trace.UserMessage(err))
		return
	}
	s.serveClient(ctx, c, tc.ConnectionState().PeerCertificates, req)
}

// HandleALPN serves a TLS connection from the main port (ALPN
// sigil-mysql): the MySQL exchange runs inside TLS from the server
// handshake on, without an SSLRequest.
func (s *Server) HandleALPN(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	tc := tls.Server(conn, s.tlsConfig())
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.log.DebugContext(ctx, "TLS handshake failed.", "error", err)
		return
	}
	connID, scramble := s.newConnID(), newScramble()
	defer s.forgetKill(connID)
	hs := &serverHandshake{version: serverVersion, connID: connID, authData: scramble, caps: serverCaps &^ capSSL,
		collation: defaultCollation, status: statusAutocommit, plugin: nativePasswordPlugin}
	if _, err := tc.Write(appendPacket(nil, 0, hs.encode())); err != nil {
		return
	}
	c := &clientConn{conn: tc, r: bufio.NewReaderSize(tc, clientBufferSize), connID: connID}
	seq, p, err := readPacket(c.r, nil, maxHandshakePacket)
	if err != nil {
		return
	}
	c.seq = seq + 1
	if len(p) == sslRequestLen {
		c.writeErr(erHandshake, stateConnection, "sigil: the tunnel is already encrypted; connect to it without TLS")
		return
	}
	req, err := parseHandshakeResponse(p)
	if err != nil {
		c.writeErr(erHandshake, stateConnection, "sigil: "+trace.UserMessage(err))
		return
	}
	s.serveClient(ctx, c, tc.ConnectionState().PeerCertificates, req)
}

// serveClient starts the session, connects upstream, completes the
// client's authentication and relays until the end.
func (s *Server) serveClient(ctx context.Context, c *clientConn, peerCerts []*x509.Certificate, req *handshakeResponse) {
	log := s.log.With("client_addr", c.conn.RemoteAddr().String())
	req.caps &= serverCaps | capSSL
	sess, err := s.cfg.Sessions.Start(ctx, peerCerts, c.conn.RemoteAddr().String(), types.ProtocolMySQL,
		session.RouteRequest{DBUser: req.user, DBName: req.db})
	if err != nil {
		code, state := uint16(erAccessDenied), stateAccessDenied
		if !session.IsWhoError(err) {
			code, state = erServerShutdown, stateConnection
		}
		log.InfoContext(ctx, "Refused MySQL client.", "error", err)
		c.writeErr(code, state, "sigil: "+session.Message(err))
		return
	}
	stats := s.serveSession(ctx, sess, c, req)
	ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := sess.End(ectx, stats); err != nil {
		log.WarnContext(ctx, "Recording the session end failed.", "session_id", sess.ID, "error", err)
	}
}

func (s *Server) serveSession(ctx context.Context, sess *session.Session, c *clientConn, req *handshakeResponse) session.Stats {
	log := s.log.With("session_id", sess.ID, "user", sess.Identity.Name)
	up, err := s.connect(ctx, sess, req)
	if err != nil {
		var ce *clientError
		if errors.As(err, &ce) {
			c.writeErr(ce.code, ce.state, ce.msg)
		} else {
			c.writeErr(erServerShutdown, stateConnection, "sigil: "+trace.UserMessage(err))
		}
		log.InfoContext(ctx, "Upstream connection failed.", "error", err)
		return session.Stats{Err: err}
	}
	defer up.conn.Close()
	s.registerKill(&killEntry{gwID: c.connID, user: sess.Identity.Name, database: sess.Database.Metadata.Name, threadID: up.threadID, sessionID: sess.ID})
	if _, err := c.conn.Write(okPacket(c.seq, statusAutocommit)); err != nil {
		return session.Stats{Err: err}
	}
	_ = c.conn.SetDeadline(time.Time{})

	r := newRelay(relayConfig{
		policy:   sqlpolicy.Grant{Statements: sess.Decision.Statements, Role: sess.Decision.Role, WriteApproval: sess.Decision.WriteApproval},
		classify: s.cfg.Classifier.Classify,
		identity: identitySQL(sess),
		// Events are handed over (audit.OwningEmitter): the relay builds
		// each one fresh and never touches it after emit.
		emit:        sess.Recorder(ctx, log),
		checkDBName: sess.CheckDBName,
		findKill: func(id uint64) *killEntry {
			return s.killTarget(sess.Identity.Name, sess.Database.Metadata.Name, id)
		},
		done:    sess.Done(),
		doneErr: sess.Err,
		approve: sess.ApproveWrite,
		// The upstream connection has the client's format capabilities.
		deprecateEOF: req.caps&capDeprecateEOF != 0,
	}, c.r, up.conn, c.conn)
	return r.run(ctx, up.r)
}

// clientError is a refusal with the MySQL error the client gets.
type clientError struct {
	code  uint16
	state string
	msg   string
}

func (e *clientError) Error() string { return e.msg }

// upstream is an authenticated database connection.
type upstream struct {
	conn     net.Conn
	r        *bufio.Reader
	threadID uint32
}

// connect dials the database, upgrades to TLS with the DB certificate for
// the session's db user, authenticates without a password and sets
// @sigil_identity.
func (s *Server) connect(ctx context.Context, sess *session.Session, req *handshakeResponse) (*upstream, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	name := sess.Database.Metadata.Name
	unreachable := func(err error) error {
		return &clientError{code: erServerShutdown, state: stateConnection,
			msg: fmt.Sprintf("sigil: cannot reach database %q: %s", name, trace.UserMessage(err))}
	}
	tlsCfg, err := s.cfg.Sessions.UpstreamTLS(sess.Database, sess.DBUser)
	if err != nil {
		return nil, unreachable(err)
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", sess.Database.Spec.URI)
	if err != nil {
		return nil, unreachable(err)
	}
	ok := false
	defer func() {
		if !ok {
			raw.Close()
		}
	}()
	if dl, has := ctx.Deadline(); has {
		_ = raw.SetDeadline(dl)
	}
	_, p, err := readPacket(raw, nil, maxHandshakePacket)
	if err != nil {
		return nil, unreachable(err)
	}
	if len(p) > 0 && p[0] == 0xff {
		return nil, unreachable(parseErrPacket(p))
	}
	hs, err := parseServerHandshake(p)
	if err != nil {
		return nil, unreachable(err)
	}
	if hs.caps&capSSL == 0 {
		return nil, unreachable(trace.BadParameter("the database does not accept TLS; configure it with a certificate from \"sigilctl auth sign --format mysql\""))
	}
	want := req.caps & serverCaps
	if missing := want & formatCaps &^ hs.caps; missing != 0 {
		return nil, &clientError{code: erHandshake, state: stateConnection,
			msg: fmt.Sprintf("sigil: database %q lacks protocol capabilities the client asked for (0x%x)", name, missing)}
	}
	caps := (want | capProtocol41 | capSecureConn | capPluginAuth | capPluginAuthLenenc | capConnectAttrs | capSSL) &^
		(capLocalFiles | capCompress | capSessionTrack | capConnectWithDB)
	if sess.DBName != "" {
		caps |= capConnectWithDB
	}
	caps &= hs.caps
	collation := req.collation
	if collation == 0 {
		collation = hs.collation
	}
	maxPacket := req.maxPacket
	if maxPacket == 0 {
		maxPacket = 1 << 24
	}
	if _, err := raw.Write(appendPacket(nil, 1, sslRequest(caps, maxPacket, collation))); err != nil {
		return nil, unreachable(err)
	}
	conn := tls.Client(raw, tlsCfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, unreachable(trace.Wrap(err, "TLS with the database"))
	}
	plugin := hs.plugin
	if plugin == "" {
		plugin = nativePasswordPlugin
	}
	resp := &handshakeResponse{
		caps: caps, maxPacket: maxPacket, collation: collation, user: sess.DBUser, db: sess.DBName, plugin: plugin,
	}
	resp.attrs, resp.attrsOrder = upstreamAttrs(sess, req)
	if _, err := conn.Write(appendPacket(nil, 2, resp.encode())); err != nil {
		return nil, unreachable(err)
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	if err := s.authenticate(conn, r, sess); err != nil {
		return nil, err
	}
	// The identity variable; the relay refuses client statements that
	// would change it.
	if _, err := conn.Write(appendPacket(nil, 0, append([]byte{comQuery}, identitySQL(sess)...))); err != nil {
		return nil, unreachable(err)
	}
	_, p, err = readPacket(r, nil, maxHandshakePacket)
	if err != nil {
		return nil, unreachable(err)
	}
	if len(p) == 0 || p[0] != 0x00 {
		return nil, unreachable(trace.BadParameter("setting @sigil_identity failed: %v", parseErrPacket(p)))
	}
	_ = conn.SetDeadline(time.Time{})
	ok = true
	return &upstream{conn: conn, r: r, threadID: hs.connID}, nil
}

// authenticate completes the upstream login: the DB certificate is the
// credential, so every password the server asks for is empty.
func (s *Server) authenticate(conn net.Conn, r *bufio.Reader, sess *session.Session) error {
	name := sess.Database.Metadata.Name
	for range 8 {
		seq, p, err := readPacket(r, nil, maxHandshakePacket)
		if err != nil {
			return &clientError{code: erServerShutdown, state: stateConnection,
				msg: fmt.Sprintf("sigil: database %q closed the connection during login: %s", name, trace.UserMessage(err))}
		}
		if len(p) == 0 {
			return trace.BadParameter("empty packet during login")
		}
		var reply []byte
		switch p[0] {
		case 0x00:
			return nil
		case 0xff:
			e := parseErrPacket(p)
			return &clientError{code: erAccessDenied, state: stateAccessDenied, msg: fmt.Sprintf(
				"sigil: database %q refused db user %q: %s (the account must be \"REQUIRE SUBJECT '/CN=%s'\" trusting Sigil's DB CA)",
				name, sess.DBUser, e.msg, sess.DBUser)}
		case 0xfe:
			// Auth switch: answer with the empty password's response.
			reply = []byte{}
		case 0x01:
			switch {
			case len(p) >= 2 && p[1] == 3: // caching_sha2 fast auth succeeded
				continue
			case len(p) >= 2 && p[1] == 4: // full auth: cleartext over TLS
				reply = []byte{0}
			default:
				continue
			}
		default:
			return trace.BadParameter("unexpected packet 0x%02x during login", p[0])
		}
		if _, err := conn.Write(appendPacket(nil, seq+1, reply)); err != nil {
			return trace.Wrap(err)
		}
	}
	return trace.LimitExceeded("database %q kept asking for authentication", name)
}

// upstreamAttrs are the client's connection attributes with the
// identity added; the client cannot set any sigil attribute itself.
func upstreamAttrs(sess *session.Session, req *handshakeResponse) (map[string]string, []string) {
	attrs := map[string]string{}
	var order []string
	for _, k := range req.attrsOrder {
		lk := strings.ToLower(k)
		if strings.HasPrefix(lk, "sigil") || lk == "program_name" {
			continue
		}
		attrs[k] = req.attrs[k]
		order = append(order, k)
	}
	add := func(k, v string) {
		attrs[k] = v
		order = append(order, k)
	}
	if prog := req.attrs["program_name"]; prog != "" {
		add("sigil_client_program", prog)
	}
	add("program_name", "sigil")
	add("sigil_user", sess.Identity.Name)
	add("sigil_kind", string(sess.Identity.Kind))
	add("sigil_session", sess.ID)
	return attrs, order
}

// identitySQL sets the variable SELECT @sigil_identity reads.
func identitySQL(sess *session.Session) string {
	return "SET @sigil_identity = " + quoteLiteral(sess.Identity.Name+"/"+string(sess.Identity.Kind)+"/"+sess.ID)
}

func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// newScramble returns 20 random bytes without NUL (the handshake
// terminates the scramble with one).
func newScramble() []byte {
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = b[i]%126 + 1
	}
	return b
}

// newConnID issues a gateway connection id in [2^30, 2^31), unused.
func (s *Server) newConnID() uint32 {
	s.killMu.Lock()
	defer s.killMu.Unlock()
	for {
		var b [4]byte
		_, _ = rand.Read(b[:])
		id := binary.LittleEndian.Uint32(b[:])&(1<<30-1) | 1<<30
		if _, taken := s.byGW[id]; !taken {
			// Reserved until registerKill fills it or forgetKill drops it.
			s.byGW[id] = nil
			return id
		}
	}
}

func (s *Server) registerKill(e *killEntry) {
	s.killMu.Lock()
	defer s.killMu.Unlock()
	s.byGW[e.gwID] = e
	s.byThread[threadKey{e.database, e.threadID}] = e
}

func (s *Server) forgetKill(gwID uint32) {
	s.killMu.Lock()
	defer s.killMu.Unlock()
	if e := s.byGW[gwID]; e != nil {
		if s.byThread[threadKey{e.database, e.threadID}] == e {
			delete(s.byThread, threadKey{e.database, e.threadID})
		}
	}
	delete(s.byGW, gwID)
}

// killTarget finds the session a KILL id names, if it belongs to user on
// database: a gateway connection id first, else an upstream thread id.
func (s *Server) killTarget(user, database string, id uint64) *killEntry {
	if id > 0xffffffff {
		return nil
	}
	s.killMu.Lock()
	defer s.killMu.Unlock()
	e := s.byGW[uint32(id)]
	if e == nil {
		e = s.byThread[threadKey{database, uint32(id)}]
	}
	if e == nil || e.user != user || e.database != database {
		return nil
	}
	return e
}
