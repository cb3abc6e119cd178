package mux

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/gravitational/trace"
)

// Protocol names what the first bytes of a connection revealed.
type Protocol string

const (
	// ProtocolTLS is a TLS ClientHello; such connections are routed by ALPN
	// (HandleALPN) or to the default TLS handler.
	ProtocolTLS Protocol = "tls"
	// ProtocolPostgresSSLRequest is a PostgreSQL SSLRequest or GSSENCRequest:
	// the handler reads the 8-byte request and answers 'S'/'N' itself.
	ProtocolPostgresSSLRequest Protocol = "postgres-sslrequest"
	// ProtocolPostgresPlain is an unencrypted PostgreSQL StartupMessage or
	// CancelRequest; register it to refuse such clients with a native error
	// instead of a dropped connection.
	ProtocolPostgresPlain Protocol = "postgres-plain"
	// ProtocolSSH is an SSH version banner ("SSH-").
	ProtocolSSH Protocol = "ssh"
)

const (
	// DefaultSniffTimeout bounds how long a client may take to send its preamble.
	DefaultSniffTimeout = 10 * time.Second
	// DefaultCloseGrace is how long Close lets handlers react to cancellation
	// before their connections are closed under them.
	DefaultCloseGrace = 5 * time.Second

	minAcceptBackoff = 5 * time.Millisecond
	maxAcceptBackoff = time.Second
)

// Handler serves one routed connection. conn replays the sniffed bytes; the
// handler owns it and must close it. ctx is cancelled when the mux shuts down.
type Handler func(ctx context.Context, conn net.Conn)

// Config configures a Mux.
type Config struct {
	// Listener is the shared listener; the mux closes it on shutdown.
	Listener net.Listener
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// SniffTimeout bounds the wait for the first bytes; defaults to
	// DefaultSniffTimeout.
	SniffTimeout time.Duration
	// MaxConns caps connections being sniffed or held by a running handler;
	// at the cap the mux stops accepting until one ends. 0 means no cap.
	MaxConns int
	// CloseGrace defaults to DefaultCloseGrace.
	CloseGrace time.Duration
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Listener == nil {
		return trace.BadParameter("missing Listener")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.SniffTimeout < 0 {
		return trace.BadParameter("SniffTimeout must not be negative, got %v", c.SniffTimeout)
	}
	if c.SniffTimeout == 0 {
		c.SniffTimeout = DefaultSniffTimeout
	}
	if c.MaxConns < 0 {
		return trace.BadParameter("MaxConns must not be negative, got %d", c.MaxConns)
	}
	if c.CloseGrace < 0 {
		return trace.BadParameter("CloseGrace must not be negative, got %v", c.CloseGrace)
	}
	if c.CloseGrace == 0 {
		c.CloseGrace = DefaultCloseGrace
	}
	return nil
}

// Mux accepts connections on one listener and routes each to the handler
// registered for the protocol its first bytes reveal.
type Mux struct {
	cfg Config
	log *slog.Logger
	// sem holds one token per live connection when MaxConns is set.
	sem chan struct{}

	handlersMu sync.RWMutex
	alpn       map[string]Handler
	defaultTLS Handler
	handlers   map[Protocol]Handler

	// closeCtx is cancelled by Close.
	closeCtx    context.Context
	cancelClose context.CancelFunc
	lnCloseOnce sync.Once
	lnCloseErr  error

	stateMu sync.Mutex
	serving bool
	closed  bool
	served  chan struct{}

	wg      sync.WaitGroup
	connsMu sync.Mutex
	conns   map[net.Conn]struct{}
	forced  bool
}

// New returns a Mux; register handlers, then call Serve.
func New(cfg Config) (*Mux, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	closeCtx, cancel := context.WithCancel(context.Background())
	m := &Mux{
		cfg:         cfg,
		log:         cfg.Logger.With("component", "mux"),
		alpn:        make(map[string]Handler),
		handlers:    make(map[Protocol]Handler),
		closeCtx:    closeCtx,
		cancelClose: cancel,
		served:      make(chan struct{}),
		conns:       make(map[net.Conn]struct{}),
	}
	if cfg.MaxConns > 0 {
		m.sem = make(chan struct{}, cfg.MaxConns)
	}
	return m, nil
}

// HandleALPN routes TLS connections whose ClientHello offers one of protos.
// The client's preference order decides between several registered matches.
// Like http.ServeMux, it panics on a nil handler or an ALPN value registered
// twice: both are wiring bugs that must not reach production silently.
func (m *Mux) HandleALPN(protos []string, h Handler) {
	if h == nil {
		panic("mux: nil handler for ALPN")
	}
	m.handlersMu.Lock()
	defer m.handlersMu.Unlock()
	for _, p := range protos {
		if _, ok := m.alpn[p]; ok {
			panic(fmt.Sprintf("mux: ALPN %q registered twice", p))
		}
	}
	for _, p := range protos {
		m.alpn[p] = h
	}
}

// HandleDefaultTLS routes TLS connections offering no ALPN or none registered.
func (m *Mux) HandleDefaultTLS(h Handler) {
	m.Handle(ProtocolTLS, h)
}

// Handle routes a non-TLS protocol; Handle(ProtocolTLS, h) is HandleDefaultTLS.
// It panics on a nil handler or a protocol registered twice.
func (m *Mux) Handle(p Protocol, h Handler) {
	if h == nil {
		panic(fmt.Sprintf("mux: nil handler for %q", p))
	}
	m.handlersMu.Lock()
	defer m.handlersMu.Unlock()
	if p == ProtocolTLS {
		if m.defaultTLS != nil {
			panic("mux: default TLS handler registered twice")
		}
		m.defaultTLS = h
		return
	}
	if _, ok := m.handlers[p]; ok {
		panic(fmt.Sprintf("mux: protocol %q registered twice", p))
	}
	m.handlers[p] = h
}

// Addr returns the listener's address.
func (m *Mux) Addr() net.Addr { return m.cfg.Listener.Addr() }

// Serve accepts connections until ctx is done, Close is called or the listener
// is closed, then waits for running handlers (cancelling their context first)
// and returns nil. Other accept failures are returned after the same cleanup.
func (m *Mux) Serve(ctx context.Context) error {
	m.stateMu.Lock()
	switch {
	case m.closed:
		m.stateMu.Unlock()
		return nil
	case m.serving:
		m.stateMu.Unlock()
		return trace.AlreadyExists("mux is already serving")
	}
	m.serving = true
	m.stateMu.Unlock()
	defer close(m.served)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopOnClose := context.AfterFunc(m.closeCtx, cancel)
	defer stopOnClose()
	// Closing the listener is what unblocks Accept.
	stopListener := context.AfterFunc(ctx, func() { m.closeListener() })
	defer stopListener()

	err := m.acceptLoop(ctx)
	cancel()
	m.closeListener()
	m.drain()
	return trace.Wrap(err)
}

// Close stops accepting, cancels handlers and waits for Serve to return.
func (m *Mux) Close() error {
	m.stateMu.Lock()
	m.closed = true
	serving := m.serving
	m.stateMu.Unlock()

	m.cancelClose()
	err := m.closeListener()
	if serving {
		<-m.served
	}
	return trace.Wrap(err)
}

func (m *Mux) closeListener() error {
	m.lnCloseOnce.Do(func() {
		err := m.cfg.Listener.Close()
		if err != nil && !errors.Is(err, net.ErrClosed) {
			m.lnCloseErr = err
		}
	})
	return m.lnCloseErr
}

func (m *Mux) acceptLoop(ctx context.Context) error {
	var backoff time.Duration
	for {
		if m.sem != nil {
			select {
			case m.sem <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
		}
		conn, err := m.cfg.Listener.Accept()
		if err != nil {
			m.release()
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			if !isTemporary(err) {
				return trace.Wrap(err, "accepting connection")
			}
			backoff = min(max(2*backoff, minAcceptBackoff), maxAcceptBackoff)
			m.log.WarnContext(ctx, "Temporary accept error, backing off.", "error", err, "backoff", backoff)
			timer := time.NewTimer(backoff)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return nil
			}
			continue
		}
		backoff = 0
		m.wg.Add(1)
		go m.serveConn(ctx, conn)
	}
}

func isTemporary(err error) bool {
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

func (m *Mux) release() {
	if m.sem != nil {
		<-m.sem
	}
}

func (m *Mux) serveConn(ctx context.Context, conn net.Conn) {
	defer m.wg.Done()
	defer m.release()
	if !m.track(conn) {
		return
	}
	defer m.untrack(conn)

	log := m.log.With("remote_addr", conn.RemoteAddr().String())
	sc, err := m.sniffConn(ctx, conn)
	if err != nil {
		log.DebugContext(ctx, "Dropping connection with unusable preamble.", "error", err)
		conn.Close()
		return
	}
	h, route := m.route(sc)
	if h == nil {
		log.DebugContext(ctx, "Dropping connection for unhandled protocol.", "protocol", sc.proto, "route", route)
		conn.Close()
		return
	}
	log.DebugContext(ctx, "Routing connection.", "protocol", sc.proto, "route", route)
	defer func() {
		// One protocol's bug must not take down the listener every protocol shares.
		if r := recover(); r != nil {
			log.ErrorContext(ctx, "Connection handler panicked.", "route", route, "panic", r, "stack", string(debug.Stack()))
			conn.Close()
		}
	}()
	h(ctx, sc)
}

// sniffConn reads the preamble under SniffTimeout; cancelling ctx aborts it.
func (m *Mux) sniffConn(ctx context.Context, conn net.Conn) (*sniffedConn, error) {
	if err := conn.SetReadDeadline(time.Now().Add(m.cfg.SniffTimeout)); err != nil {
		return nil, trace.Wrap(err, "setting sniff deadline")
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	res, err := sniff(conn)
	if !stop() {
		return nil, trace.ConnectionProblem(ctx.Err(), "mux shutting down")
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, trace.ConnectionProblem(err, "no protocol preamble within %v", m.cfg.SniffTimeout)
		}
		return nil, trace.Wrap(err)
	}
	if err := conn.SetReadDeadline(time.Time{}); err != nil {
		return nil, trace.Wrap(err, "clearing sniff deadline")
	}
	return newSniffedConn(conn, res), nil
}

// route picks the handler for a sniffed connection; the string names the
// route for logs.
func (m *Mux) route(sc *sniffedConn) (Handler, string) {
	m.handlersMu.RLock()
	defer m.handlersMu.RUnlock()
	if sc.proto != ProtocolTLS {
		return m.handlers[sc.proto], string(sc.proto)
	}
	for _, p := range sc.hello.ALPN {
		if h, ok := m.alpn[p]; ok {
			return h, "alpn:" + p
		}
	}
	return m.defaultTLS, "tls-default"
}

// track records a live connection so a stuck handler can be forced off at
// shutdown; it refuses (and closes) connections once that has happened.
func (m *Mux) track(conn net.Conn) bool {
	m.connsMu.Lock()
	defer m.connsMu.Unlock()
	if m.forced {
		conn.Close()
		return false
	}
	m.conns[conn] = struct{}{}
	return true
}

func (m *Mux) untrack(conn net.Conn) {
	m.connsMu.Lock()
	defer m.connsMu.Unlock()
	delete(m.conns, conn)
}

// drain waits for handlers after their context was cancelled; handlers that
// ignore it past CloseGrace get their connections closed under them.
func (m *Mux) drain() {
	done := make(chan struct{})
	go func() {
		m.wg.Wait()
		close(done)
	}()
	timer := time.NewTimer(m.cfg.CloseGrace)
	defer timer.Stop()
	select {
	case <-done:
		return
	case <-timer.C:
	}
	m.connsMu.Lock()
	m.forced = true
	n := len(m.conns)
	for conn := range m.conns {
		conn.Close()
	}
	m.connsMu.Unlock()
	m.log.WarnContext(context.Background(), "Closed connections of handlers that ignored shutdown.", "count", n, "grace", m.cfg.CloseGrace)
	<-done
}

// activeConns reports live connections; tests use it to prove nothing leaks.
func (m *Mux) activeConns() int {
	m.connsMu.Lock()
	defer m.connsMu.Unlock()
	return len(m.conns)
}
