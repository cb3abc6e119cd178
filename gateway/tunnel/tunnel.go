package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/gravitational/trace"
)

// ALPN protocols the gateway routes tunnelled connections on.
const (
	ALPNPostgres = "sigil-postgres"
	ALPNMySQL    = "sigil-mysql"
)

// Protocols a tunnel carries (Config.Protocol).
const (
	ProtocolPostgres = "postgres"
	ProtocolMySQL    = "mysql"
)

// PostgreSQL protocol codes found in the first message of a connection.
const (
	codeCancelRequest = 80877102
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
	protocolMajor3    = 3
)

const (
	// maxStartupSize bounds the first message: a startup packet with a
	// few parameters is a few hundred bytes, PostgreSQL itself allows 10000.
	maxStartupSize = 10 << 10
	// maxNegotiations bounds SSLRequest/GSSENCRequest rounds before a
	// startup message (libpq tries GSS then SSL at most).
	maxNegotiations         = 4
	defaultHandshakeTimeout = 30 * time.Second
	defaultDialTimeout      = 15 * time.Second
)

// CertSource supplies the client certificate presented to the gateway.
type CertSource interface {
	// Current returns the certificate (with its private key) to use for
	// a new connection.
	Current() (*tls.Certificate, error)
	// Renew keeps the certificate fresh until ctx ends. Serve runs it in
	// the background.
	Renew(ctx context.Context)
}

// Config configures a Tunnel.
type Config struct {
	// ListenAddr is the local address; it must be a loopback address
	// because the local side carries no authentication at all. Default
	// 127.0.0.1:0 (a free port, see Tunnel.Addr).
	ListenAddr string
	// GatewayAddr is the gateway HOST:PORT.
	GatewayAddr string
	// Certs supplies the client certificate routed to the database.
	Certs CertSource
	// RootCAs verifies the gateway.
	RootCAs *x509.CertPool
	// ServerName is the name the gateway certificate must carry; default
	// the host of GatewayAddr.
	ServerName string
	// Protocol is ProtocolPostgres (default) or ProtocolMySQL.
	Protocol string
	// ALPN is offered to the gateway; default ALPNPostgres or ALPNMySQL
	// after Protocol.
	ALPN string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// HandshakeTimeout bounds reading the local client's first message.
	HandshakeTimeout time.Duration
	// DialTimeout bounds connecting to the gateway (TCP + TLS).
	DialTimeout time.Duration
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.ListenAddr == "" {
		c.ListenAddr = "127.0.0.1:0"
	}
	host, _, err := net.SplitHostPort(c.ListenAddr)
	if err != nil {
		return trace.BadParameter("listen address %q is not HOST:PORT", c.ListenAddr)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return trace.BadParameter("listen address %q is not a loopback address: the tunnel accepts unauthenticated connections, so it only listens on 127.0.0.1 or ::1", c.ListenAddr)
	}
	if c.GatewayAddr == "" {
		return trace.BadParameter("missing gateway address")
	}
	gwHost, _, err := net.SplitHostPort(c.GatewayAddr)
	if err != nil {
		return trace.BadParameter("gateway address %q is not HOST:PORT", c.GatewayAddr)
	}
	if c.Certs == nil {
		return trace.BadParameter("missing certificate source")
	}
	if c.RootCAs == nil {
		return trace.BadParameter("missing gateway CA pool")
	}
	if c.ServerName == "" {
		c.ServerName = gwHost
	}
	switch c.Protocol {
	case "", ProtocolPostgres:
		c.Protocol = ProtocolPostgres
		if c.ALPN == "" {
			c.ALPN = ALPNPostgres
		}
	case ProtocolMySQL:
		if c.ALPN == "" {
			c.ALPN = ALPNMySQL
		}
	default:
		return trace.BadParameter("unsupported tunnel protocol %q (want %q or %q)", c.Protocol, ProtocolPostgres, ProtocolMySQL)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = defaultHandshakeTimeout
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = defaultDialTimeout
	}
	return nil
}

// Tunnel is a local database listener forwarding to the gateway.
type Tunnel struct {
	cfg Config
	ln  net.Listener
	tls *tls.Config

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// New validates cfg and binds the local listener, so Addr is known before
// Serve runs.
func New(cfg Config) (*Tunnel, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	t := &Tunnel{cfg: cfg, ln: ln, conns: map[net.Conn]struct{}{}}
	t.tls = &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    cfg.RootCAs,
		ServerName: cfg.ServerName,
		NextProtos: []string{cfg.ALPN},
		// Asking the source on every handshake is what lets a renewed
		// certificate reach new connections without touching old ones.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return cfg.Certs.Current()
		},
	}
	return t, nil
}

// Addr is the local listening address.
func (t *Tunnel) Addr() net.Addr { return t.ln.Addr() }

// Serve accepts local connections until ctx ends, then closes the listener
// and every open connection and returns once all are done.
func (t *Tunnel) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	renewDone := make(chan struct{})
	go func() {
		defer close(renewDone)
		t.cfg.Certs.Renew(ctx)
	}()
	go func() {
		<-ctx.Done()
		t.Close()
	}()
	var err error
	for {
		var conn net.Conn
		conn, err = t.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			break
		}
		if !t.track(conn) {
			conn.Close()
			break
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer t.untrack(conn)
			t.handle(ctx, conn)
		}()
	}
	cancel()
	t.Close()
	t.wg.Wait()
	<-renewDone
	if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return trace.Wrap(err)
}

// Close stops the listener and closes every open connection.
func (t *Tunnel) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	err := t.ln.Close()
	for c := range t.conns {
		c.Close()
	}
	return trace.Wrap(err)
}

func (t *Tunnel) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *Tunnel) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	c.Close()
}

func (t *Tunnel) handle(ctx context.Context, local net.Conn) {
	log := t.cfg.Logger.With("client", local.RemoteAddr().String())
	if t.cfg.Protocol == ProtocolMySQL {
		t.handleMySQL(ctx, local, log)
		return
	}
	t.handlePostgres(ctx, local, log)
}

func (t *Tunnel) handlePostgres(ctx context.Context, local net.Conn, log *slog.Logger) {
	local.SetReadDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	var msg []byte
	for i := 0; ; i++ {
		var code uint32
		var err error
		msg, code, err = readStartup(local)
		if err != nil {
			log.DebugContext(ctx, "Dropping local connection: bad first message.", "error", err)
			return
		}
		if code == codeSSLRequest || code == codeGSSENCRequest {
			// The local side is plain by design: the leg that leaves
			// this host is the TLS one to the gateway.
			if i >= maxNegotiations {
				log.DebugContext(ctx, "Dropping local connection: too many encryption requests.")
				return
			}
			if _, err := local.Write([]byte{'N'}); err != nil {
				return
			}
			continue
		}
		if code == codeCancelRequest {
			t.forwardCancel(ctx, msg, log)
			return
		}
		if code>>16 != protocolMajor3 {
			writeError(local, "08P01", "sigil tunnel: unsupported protocol version or request code")
			return
		}
		break
	}
	local.SetReadDeadline(time.Time{})

	remote, err := t.dial(ctx)
	if err != nil {
		log.WarnContext(ctx, "Cannot connect to the gateway.", "gateway", t.cfg.GatewayAddr, "error", err)
		writeError(local, "08001", "sigil tunnel: cannot connect to the gateway "+t.cfg.GatewayAddr+": "+trace.UserMessage(err))
		return
	}
	if !t.track(remote) {
		remote.Close()
		return
	}
	defer t.untrack(remote)
	if _, err := remote.Write(msg); err != nil {
		log.WarnContext(ctx, "Cannot send the startup message to the gateway.", "error", err)
		writeError(local, "08006", "sigil tunnel: the gateway closed the connection")
		return
	}
	log.DebugContext(ctx, "Tunnel connection open.")
	pipe(local, remote)
	log.DebugContext(ctx, "Tunnel connection closed.")
}

// pipe copies both ways and closes both ends as soon as one side is done:
// neither PostgreSQL nor MySQL has a use for a half-closed connection.
func pipe(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	a.Close()
	b.Close()
	<-done
}

func (t *Tunnel) dial(ctx context.Context) (*tls.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: t.cfg.DialTimeout}, Config: t.tls}
	dctx, cancel := context.WithTimeout(ctx, t.cfg.DialTimeout)
	defer cancel()
	c, err := d.DialContext(dctx, "tcp", t.cfg.GatewayAddr)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	tc := c.(*tls.Conn)
	if got := tc.ConnectionState().NegotiatedProtocol; got != t.cfg.ALPN {
		tc.Close()
		return nil, trace.ConnectionProblem(nil, "the gateway does not speak %q (negotiated %q); is it a Sigil gateway with %s support?", t.cfg.ALPN, got, t.cfg.Protocol)
	}
	return tc, nil
}

// forwardCancel carries a CancelRequest to the gateway, which knows which
// backend the key belongs to. PostgreSQL sends no answer to it.
func (t *Tunnel) forwardCancel(ctx context.Context, msg []byte, log *slog.Logger) {
	remote, err := t.dial(ctx)
	if err != nil {
		log.WarnContext(ctx, "Cannot forward a cancel request.", "error", err)
		return
	}
	defer remote.Close()
	remote.SetDeadline(time.Now().Add(t.cfg.DialTimeout))
	if _, err := remote.Write(msg); err != nil {
		log.WarnContext(ctx, "Cannot forward a cancel request.", "error", err)
		return
	}
	// Wait for the gateway to close so the request is not cut short.
	io.Copy(io.Discard, io.LimitReader(remote, 1024))
}

// readStartup reads one length-prefixed untyped message (the only kind a
// client sends first) and returns it whole with its request code.
func readStartup(r io.Reader) ([]byte, uint32, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, 0, trace.Wrap(err)
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if n < 8 || n > maxStartupSize {
		return nil, 0, trace.BadParameter("first message length %d out of range [8, %d]", n, maxStartupSize)
	}
	msg := make([]byte, n)
	copy(msg, hdr[:])
	if _, err := io.ReadFull(r, msg[8:]); err != nil {
		return nil, 0, trace.Wrap(err)
	}
	return msg, binary.BigEndian.Uint32(hdr[4:]), nil
}

// writeError sends a FATAL ErrorResponse so the application shows why the
// tunnel could not help, instead of an opaque EOF.
func writeError(w net.Conn, sqlstate, msg string) {
	var body []byte
	for _, f := range []struct {
		t byte
		v string
	}{{'S', "FATAL"}, {'V', "FATAL"}, {'C', sqlstate}, {'M', msg}} {
		body = append(body, f.t)
		body = append(body, f.v...)
		body = append(body, 0)
	}
	body = append(body, 0)
	out := make([]byte, 5, 5+len(body))
	out[0] = 'E'
	binary.BigEndian.PutUint32(out[1:], uint32(4+len(body)))
	out = append(out, body...)
	w.SetWriteDeadline(time.Now().Add(5 * time.Second))
	w.Write(out)
}
