package postgres

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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

// ALPN protocols served: libpq 17 direct TLS and Sigil's local tunnel.
var ALPNProtocols = []string{"postgresql", "sigil-postgres"}

const (
	// DefaultHandshakeTimeout bounds the TLS handshake and startup
	// exchange with the client.
	DefaultHandshakeTimeout = 15 * time.Second
	// DefaultDialTimeout bounds connecting and authenticating upstream.
	DefaultDialTimeout = 15 * time.Second
)

// Config configures a Server.
type Config struct {
	// Sessions authenticates and authorizes clients.
	Sessions *session.Manager
	// GetCertificate returns the gateway's TLS server certificate.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Classifier defaults to a new sqlpolicy classifier.
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
		return trace.BadParameter("postgres: missing Sessions")
	}
	if c.GetCertificate == nil {
		return trace.BadParameter("postgres: missing GetCertificate")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Classifier == nil {
		cl, err := sqlpolicy.NewClassifier(sqlpolicy.Config{Logger: c.Logger})
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

// Server is the PostgreSQL engine.
type Server struct {
	cfg Config
	log *slog.Logger

	cancelMu sync.Mutex
	cancels  map[uint32]*cancelKey
}

// cancelKey maps a gateway-issued BackendKeyData to the upstream's.
type cancelKey struct {
	secret   uint32
	db       *types.Database
	dbUser   string
	upPID    uint32
	upSecret uint32
}

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return &Server{cfg: cfg, log: cfg.Logger.With("component", "postgres"), cancels: make(map[uint32]*cancelKey)}, nil
}

// Register routes PostgreSQL connections of m to s.
func (s *Server) Register(m *mux.Mux) {
	m.Handle(mux.ProtocolPostgresSSLRequest, s.HandleSSLRequest)
	m.Handle(mux.ProtocolPostgresPlain, s.HandlePlain)
	m.HandleALPN(ALPNProtocols, s.HandleTLS)
}

func (s *Server) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: s.cfg.GetCertificate,
		NextProtos:     ALPNProtocols,
		// The chain is verified by session.Start (certid.Verify against
		// the user CA), so that an expired or foreign certificate is
		// refused with a PostgreSQL error saying why instead of a bare
		// TLS alert. The handshake still proves possession of the key.
		// No CA list is sent: Go clients would then withhold a foreign
		// certificate and get a bare "certificate required" alert.
		ClientAuth: tls.RequireAnyClientCert,
	}
}

// HandleSSLRequest serves a connection that starts with SSLRequest or
// GSSENCRequest.
func (s *Server) HandleSSLRequest(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	for range 2 {
		p, err := readStartup(conn)
		if err != nil {
			s.log.DebugContext(ctx, "Bad PostgreSQL preamble.", "error", err)
			return
		}
		switch p.code {
		case gssencRequestCode:
			// No GSSAPI: the client goes on with SSLRequest.
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return
			}
		case sslRequestCode:
			if _, err := conn.Write([]byte{'S'}); err != nil {
				return
			}
			s.serveTLS(ctx, tls.Server(conn, s.tlsConfig()))
			return
		case cancelRequestCode:
			s.cancel(ctx, p.cancelPID, p.cancelSecret)
			return
		default:
			s.refusePlain(conn)
			return
		}
	}
}

// HandlePlain serves an unencrypted StartupMessage (refused) or
// CancelRequest.
func (s *Server) HandlePlain(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	p, err := readStartup(conn)
	if err != nil {
		return
	}
	if p.code == cancelRequestCode {
		s.cancel(ctx, p.cancelPID, p.cancelSecret)
		return
	}
	s.refusePlain(conn)
}

func (s *Server) refusePlain(conn net.Conn) {
	_, _ = conn.Write(errorResponse("FATAL", codeInvalidAuthorization,
		"SSL required: connect with sslmode=verify-full and a certificate from `sigil db login`"))
}

// HandleTLS serves a direct TLS connection (ALPN postgresql or
// sigil-postgres).
func (s *Server) HandleTLS(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	s.serveTLS(ctx, tls.Server(conn, s.tlsConfig()))
}

// serveTLS runs a client connection from the TLS handshake to its end.
func (s *Server) serveTLS(ctx context.Context, conn *tls.Conn) {
	defer conn.Close()
	log := s.log.With("client_addr", conn.RemoteAddr().String())
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := conn.HandshakeContext(hctx)
	cancel()
	if err != nil {
		log.DebugContext(ctx, "TLS handshake failed.", "error", err)
		return
	}
	cr := bufio.NewReaderSize(conn, 32<<10)
	p, err := readStartup(cr)
	if err != nil {
		_, _ = conn.Write(errorResponse("FATAL", codeProtocolViolation, "sigil: "+trace.UserMessage(err)))
		return
	}
	switch p.code {
	case cancelRequestCode:
		s.cancel(ctx, p.cancelPID, p.cancelSecret)
		return
	case sslRequestCode, gssencRequestCode:
		_, _ = conn.Write(errorResponse("FATAL", codeProtocolViolation, "sigil: encryption requested twice"))
		return
	}
	if v, ok := p.params["replication"]; ok && v != "" && !strings.EqualFold(v, "false") && v != "0" && !strings.EqualFold(v, "off") {
		_, _ = conn.Write(errorResponse("FATAL", codeFeatureNotSupported, "sigil: replication connections are not supported through the gateway"))
		return
	}
	clientAddr := conn.RemoteAddr().String()
	sess, err := s.cfg.Sessions.Start(ctx, conn.ConnectionState().PeerCertificates, clientAddr, types.ProtocolPostgres,
		session.RouteRequest{DBUser: p.params["user"], DBName: p.params["database"]})
	if err != nil {
		code := codeInternal
		switch {
		case session.IsWhoError(err):
			code = codeInvalidAuthorization
		case trace.IsConnectionProblem(err):
			code = codeCannotConnectNow
		}
		log.InfoContext(ctx, "Refused PostgreSQL client.", "error", err)
		_, _ = conn.Write(errorResponse("FATAL", code, "sigil: "+session.Message(err)))
		return
	}
	_ = conn.SetDeadline(time.Time{})
	stats := s.serveSession(ctx, sess, conn, cr, p)
	ectx, ecancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer ecancel()
	if err := sess.End(ectx, stats); err != nil {
		log.WarnContext(ctx, "Recording the session end failed.", "session_id", sess.ID, "error", err)
	}
}

// upstream is an authenticated server connection.
type upstream struct {
	conn net.Conn
	r    *bufio.Reader
	// cancelPID is the gateway key issued to the client, 0 if none.
	cancelPID uint32
}

// serveSession connects upstream and relays until either side ends.
func (s *Server) serveSession(ctx context.Context, sess *session.Session, client net.Conn, cr *bufio.Reader, p *startupPacket) session.Stats {
	log := s.log.With("session_id", sess.ID, "user", sess.Identity.Name)
	cw := bufio.NewWriterSize(client, 8<<10)
	up, err := s.connect(ctx, sess, p, cw)
	if err != nil {
		var ce *clientError
		if errors.As(err, &ce) {
			_, _ = cw.Write(errorResponse("FATAL", ce.code, ce.msg))
		}
		_ = cw.Flush()
		log.InfoContext(ctx, "Upstream connection failed.", "error", err)
		return session.Stats{Err: err}
	}
	defer up.conn.Close()
	defer s.forgetCancelKey(up.cancelPID)
	if err := cw.Flush(); err != nil {
		return session.Stats{Err: err}
	}

	r := newRelay(relayConfig{
		policy:   sqlpolicy.Grant{Statements: sess.Decision.Statements, Role: sess.Decision.Role, WriteApproval: sess.Decision.WriteApproval},
		classify: s.cfg.Classifier.Classify,
		emit:     sess.Recorder(ctx, log),
		approve:  sess.ApproveWrite,
	}, cr, bufio.NewWriterSize(up.conn, 32<<10), client)

	clientDone := make(chan error, 1)
	serverDone := make(chan error, 1)
	go func() { clientDone <- r.clientLoop(ctx) }()
	go func() { serverDone <- r.serverLoop(up.r) }()

	var endErr error
	stopBoth := func() {
		_ = up.conn.Close()
		_ = client.Close()
	}
	select {
	case err := <-clientDone:
		var ce *clientError
		switch {
		case errors.As(err, &ce):
			endErr = err
			s.terminateWith(r, up.conn, client, serverDone, ce.code, ce.msg)
		case err != nil && !errors.Is(err, errTerminated):
			endErr = err
			stopBoth()
			<-serverDone
		default:
			stopBoth()
			<-serverDone
		}
	case err := <-serverDone:
		if err != nil {
			endErr = err
		}
		stopBoth()
		<-clientDone
	case <-sess.Done():
		endErr = sess.Err()
		s.terminate(r, up.conn, client, serverDone, "sigil: session terminated: "+session.Message(endErr))
		<-clientDone
	case <-ctx.Done():
		endErr = trace.ConnectionProblem(ctx.Err(), "gateway shutting down")
		s.terminate(r, up.conn, client, serverDone, "sigil: the gateway is shutting down")
		<-clientDone
	}
	return session.Stats{
		BytesIn:    r.bytesIn.Load(),
		BytesOut:   r.bytesOut.Load(),
		Statements: r.statements.Load(),
		Err:        endErr,
	}
}

// terminate ends a live session with a FATAL 57P01 the client can show.
func (s *Server) terminate(r *relay, up, client net.Conn, serverDone <-chan error, msg string) {
	s.terminateWith(r, up, client, serverDone, codeAdminShutdown, msg)
}

// terminateWith stops the server side first, so that the FATAL error is
// not interleaved with a server message, then tells the client and closes.
func (s *Server) terminateWith(r *relay, up, client net.Conn, serverDone <-chan error, code, msg string) {
	_ = up.Close()
	_ = client.SetWriteDeadline(time.Now().Add(time.Second))
	<-serverDone
	r.writeFatal(code, msg)
	_ = client.Close()
}

// connect dials the database, authenticates with the DB certificate and
// relays the server's startup responses to the client (buffered in cw),
// replacing BackendKeyData with a gateway key.
func (s *Server) connect(ctx context.Context, sess *session.Session, p *startupPacket, cw *bufio.Writer) (*upstream, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	conn, err := s.dialTLS(ctx, sess.Database, sess.DBUser)
	if err != nil {
		return nil, &clientError{code: codeConnectionFailure, msg: "sigil: cannot reach database " + fmt.Sprintf("%q: %v", sess.Database.Metadata.Name, trace.UserMessage(err))}
	}
	ok := false
	defer func() {
		if !ok {
			conn.Close()
		}
	}()
	if dl, has := ctx.Deadline(); has {
		_ = conn.SetDeadline(dl)
	}
	order, params := upstreamParams(sess, p)
	if _, err := conn.Write(encodeStartup(order, params)); err != nil {
		return nil, trace.Wrap(err)
	}
	r := bufio.NewReaderSize(conn, serverChunk)
	up := &upstream{conn: conn, r: r}
	defer func() {
		if !ok {
			s.forgetCancelKey(up.cancelPID)
		}
	}()
	var buf []byte
	for {
		var typ byte
		typ, buf, err = readFrame(r, buf, maxAuthFrameLen)
		if err != nil {
			return nil, &clientError{code: codeConnectionFailure, msg: "sigil: database closed the connection during startup: " + trace.UserMessage(err)}
		}
		switch typ {
		case 'R':
			if len(buf) < 4 || binary.BigEndian.Uint32(buf) != 0 {
				method := uint32(0)
				if len(buf) >= 4 {
					method = binary.BigEndian.Uint32(buf)
				}
				return nil, &clientError{code: codeInvalidAuthorization, msg: fmt.Sprintf(
					"sigil: database %q asked for authentication method %d instead of accepting Sigil's certificate; configure it with \"hostssl ... cert\" trusting Sigil's DB CA (sigilctl auth sign)",
					sess.Database.Metadata.Name, method)}
			}
			_, _ = cw.Write(appendFrame(nil, typ, buf))
		case 'K':
			if len(buf) < 8 {
				return nil, trace.BadParameter("malformed BackendKeyData")
			}
			s.forgetCancelKey(up.cancelPID)
			pid, secret := s.registerCancelKey(sess, binary.BigEndian.Uint32(buf[0:4]), binary.BigEndian.Uint32(buf[4:8]))
			var kb [8]byte
			binary.BigEndian.PutUint32(kb[0:4], pid)
			binary.BigEndian.PutUint32(kb[4:8], secret)
			_, _ = cw.Write(appendFrame(nil, 'K', kb[:]))
			up.cancelPID = pid
		case 'E':
			// The server refused (unknown role, no such database...): pass
			// its own error on, it says what is wrong.
			_, _ = cw.Write(appendFrame(nil, typ, buf))
			return nil, trace.AccessDenied("database refused the connection")
		case 'v':
			// NegotiateProtocolVersion: we asked for 3.0 without options.
		case 'Z':
			_, _ = cw.Write(appendFrame(nil, typ, buf))
			_ = conn.SetDeadline(time.Time{})
			ok = true
			return up, nil
		default:
			// ParameterStatus, NoticeResponse.
			_, _ = cw.Write(appendFrame(nil, typ, buf))
		}
	}
}

// upstreamParams builds the StartupMessage sent to the database: the
// client's own parameters, except those the gateway decides, plus the
// identity.
func upstreamParams(sess *session.Session, p *startupPacket) ([]string, map[string]string) {
	params := map[string]string{
		"user":             sess.DBUser,
		"application_name": "sigil:" + sess.Identity.Name,
	}
	order := []string{"user"}
	if sess.DBName != "" {
		params["database"] = sess.DBName
		order = append(order, "database")
	}
	order = append(order, "application_name")
	opts := "-c " + escapeOption("sigil.identity="+sess.Identity.Name+"/"+string(sess.Identity.Kind)+"/"+sess.ID)
	for _, k := range p.order {
		switch {
		case k == "user", k == "database", k == "application_name", k == "replication", strings.HasPrefix(k, "_pq_."):
			continue
		case strings.HasPrefix(strings.ToLower(k), "sigil."):
			// The server applies startup parameters after options, so a
			// client-sent sigil.identity would override the gateway's.
			continue
		case k == "options":
			// The client's options first: the identity set last wins.
			opts = p.params[k] + " " + opts
			continue
		}
		params[k] = p.params[k]
		order = append(order, k)
	}
	params["options"] = opts
	order = append(order, "options")
	return order, params
}

// dialTLS connects to the database: SSLRequest, then TLS with the DB
// certificate for dbUser.
func (s *Server) dialTLS(ctx context.Context, db *types.Database, dbUser string) (net.Conn, error) {
	tlsCfg, err := s.cfg.Sessions.UpstreamTLS(db, dbUser)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", db.Spec.URI)
	if err != nil {
		return nil, trace.ConnectionProblem(err, "connecting to %s", db.Spec.URI)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(sslRequest()); err != nil {
		conn.Close()
		return nil, trace.Wrap(err)
	}
	var resp [1]byte
	if _, err := io.ReadFull(conn, resp[:]); err != nil {
		conn.Close()
		return nil, trace.ConnectionProblem(err, "reading the SSLRequest answer from %s", db.Spec.URI)
	}
	if resp[0] != 'S' {
		conn.Close()
		return nil, trace.ConnectionProblem(nil, "database at %s does not accept TLS; enable ssl with a certificate from \"sigilctl auth sign\"", db.Spec.URI)
	}
	tc := tls.Client(conn, tlsCfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, trace.ConnectionProblem(err, "TLS with database at %s", db.Spec.URI)
	}
	return tc, nil
}

func randomUint32() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint32(b[:])
}

// registerCancelKey issues a gateway key for the session's upstream key.
func (s *Server) registerCancelKey(sess *session.Session, upPID, upSecret uint32) (uint32, uint32) {
	s.cancelMu.Lock()
	defer s.cancelMu.Unlock()
	var pid uint32
	for {
		pid = randomUint32() & 0x7fffffff
		if _, taken := s.cancels[pid]; pid != 0 && !taken {
			break
		}
	}
	secret := randomUint32()
	s.cancels[pid] = &cancelKey{secret: secret, db: sess.Database, dbUser: sess.DBUser, upPID: upPID, upSecret: upSecret}
	return pid, secret
}

func (s *Server) forgetCancelKey(pid uint32) {
	if pid == 0 {
		return
	}
	s.cancelMu.Lock()
	delete(s.cancels, pid)
	s.cancelMu.Unlock()
}

// cancel forwards a CancelRequest carrying a live gateway key to the
// database; unknown keys are ignored silently, as PostgreSQL does.
func (s *Server) cancel(ctx context.Context, pid, secret uint32) {
	s.cancelMu.Lock()
	k := s.cancels[pid]
	s.cancelMu.Unlock()
	var a, b [4]byte
	if k != nil {
		binary.BigEndian.PutUint32(a[:], k.secret)
	}
	binary.BigEndian.PutUint32(b[:], secret)
	if k == nil || subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	conn, err := s.dialTLS(ctx, k.db, k.dbUser)
	if err != nil {
		s.log.WarnContext(ctx, "Forwarding a cancel request failed.", "database", k.db.Metadata.Name, "error", err)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write(encodeCancel(k.upPID, k.upSecret)); err != nil {
		s.log.WarnContext(ctx, "Forwarding a cancel request failed.", "database", k.db.Metadata.Name, "error", err)
		return
	}
	// The server closes the connection once it has handled the request.
	_, _ = io.Copy(io.Discard, conn)
}
