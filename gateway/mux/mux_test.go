package mux

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const testWait = 10 * time.Second

// call records one handler invocation.
type call struct {
	route string
	hello *ClientHello
	proto Protocol
	data  []byte
}

type harness struct {
	t       *testing.T
	m       *Mux
	addr    string
	calls   chan call
	serveCh chan error
	cert    tls.Certificate
	pool    *x509.CertPool
}

func testLogger() *slog.Logger {
	return slog.New(slog.DiscardHandler)
}

func startMux(t *testing.T, cfg Config, register func(*harness)) *harness {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listener = ln
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, m: m, addr: ln.Addr().String(), calls: make(chan call, 16), serveCh: make(chan error, 1)}
	h.cert, h.pool = selfSigned(t)
	register(h)
	go func() { h.serveCh <- m.Serve(context.Background()) }()
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case err := <-h.serveCh:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(testWait):
			t.Errorf("Serve did not return after Close")
		}
		if n := m.activeConns(); n != 0 {
			t.Errorf("%d connections still tracked after Close", n)
		}
	})
	return h
}

// tlsHandler records the call, then completes a real handshake with its own
// tls.Config and writes its route name to the client.
func (h *harness) tlsHandler(route string, protos ...string) Handler {
	cert := h.cert
	return func(ctx context.Context, conn net.Conn) {
		defer conn.Close()
		hello, _ := ClientHelloFromConn(conn)
		proto, _ := ProtocolFromConn(conn)
		h.calls <- call{route: route, hello: hello, proto: proto}
		srv := tls.Server(conn, &tls.Config{
			Certificates: []tls.Certificate{cert},
			NextProtos:   protos,
		})
		if err := srv.HandshakeContext(ctx); err != nil {
			return
		}
		fmt.Fprintf(srv, "%s\n", route)
	}
}

// rawHandler records the first n bytes the handler reads, then answers "ok".
func (h *harness) rawHandler(route string, n int) Handler {
	return func(ctx context.Context, conn net.Conn) {
		defer conn.Close()
		buf := make([]byte, n)
		_, err := io.ReadFull(conn, buf)
		if err != nil {
			buf = nil
		}
		proto, _ := ProtocolFromConn(conn)
		h.calls <- call{route: route, proto: proto, data: buf}
		conn.Write([]byte("ok"))
	}
}

func (h *harness) nextCall() call {
	h.t.Helper()
	select {
	case c := <-h.calls:
		return c
	case <-time.After(testWait):
		h.t.Fatal("no handler call")
		return call{}
	}
}

func (h *harness) noCall() {
	h.t.Helper()
	select {
	case c := <-h.calls:
		h.t.Fatalf("unexpected handler call %+v", c)
	default:
	}
}

func (h *harness) dial() *net.TCPConn {
	h.t.Helper()
	conn, err := net.DialTimeout("tcp", h.addr, testWait)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return conn.(*net.TCPConn)
}

func registerAll(h *harness) {
	h.m.HandleALPN([]string{"h2"}, h.tlsHandler("h2", "h2"))
	h.m.HandleALPN([]string{"sigil-postgres", "postgresql"}, h.tlsHandler("postgres-tls", "sigil-postgres", "postgresql"))
	h.m.HandleDefaultTLS(h.tlsHandler("default"))
	h.m.Handle(ProtocolPostgresSSLRequest, h.rawHandler("sslrequest", 8))
	h.m.Handle(ProtocolSSH, h.rawHandler("ssh", len("SSH-2.0-x\r\n")))
}

func TestTLSRoutingByALPN(t *testing.T) {
	h := startMux(t, Config{}, registerAll)
	tests := []struct {
		alpn      []string
		wantRoute string
		wantProto string
	}{
		{alpn: nil, wantRoute: "default", wantProto: ""},
		{alpn: []string{"h2", "http/1.1"}, wantRoute: "h2", wantProto: "h2"},
		{alpn: []string{"sigil-postgres"}, wantRoute: "postgres-tls", wantProto: "sigil-postgres"},
		{alpn: []string{"postgresql"}, wantRoute: "postgres-tls", wantProto: "postgresql"},
		// client preference decides between two registered matches
		{alpn: []string{"sigil-postgres", "h2"}, wantRoute: "postgres-tls", wantProto: "sigil-postgres"},
		{alpn: []string{"unknown", "h2"}, wantRoute: "h2", wantProto: "h2"},
		{alpn: []string{"http/1.1"}, wantRoute: "default", wantProto: ""},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.alpn), func(t *testing.T) {
			conn, err := tls.DialWithDialer(&net.Dialer{Timeout: testWait}, "tcp", h.addr, &tls.Config{
				ServerName: "localhost",
				RootCAs:    h.pool,
				NextProtos: tt.alpn,
			})
			if err != nil {
				t.Fatalf("TLS dial: %v", err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(testWait))
			line, err := bufio.NewReader(conn).ReadString('\n')
			if err != nil {
				t.Fatalf("reading reply: %v", err)
			}
			if got := strings.TrimSpace(line); got != tt.wantRoute {
				t.Fatalf("reached %q, want %q", got, tt.wantRoute)
			}
			if got := conn.ConnectionState().NegotiatedProtocol; got != tt.wantProto {
				t.Fatalf("negotiated %q, want %q", got, tt.wantProto)
			}
			c := h.nextCall()
			if c.route != tt.wantRoute || c.proto != ProtocolTLS {
				t.Fatalf("call = %+v", c)
			}
			if c.hello == nil || c.hello.ServerName != "localhost" || fmt.Sprint(c.hello.ALPN) != fmt.Sprint(tt.alpn) {
				t.Fatalf("handler saw hello %+v, want SNI localhost ALPN %v", c.hello, tt.alpn)
			}
		})
	}
}

func TestRawProtocols(t *testing.T) {
	h := startMux(t, Config{}, registerAll)
	tests := []struct {
		name      string
		send      []byte
		wantRoute string
		wantProto Protocol
	}{
		{name: "sslrequest", send: pgPacket(8, pgSSLRequestCode), wantRoute: "sslrequest", wantProto: ProtocolPostgresSSLRequest},
		{name: "gssencrequest", send: pgPacket(8, pgGSSENCRequestCode), wantRoute: "sslrequest", wantProto: ProtocolPostgresSSLRequest},
		{name: "ssh", send: []byte("SSH-2.0-x\r\n"), wantRoute: "ssh", wantProto: ProtocolSSH},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := h.dial()
			conn.SetDeadline(time.Now().Add(testWait))
			// Byte by byte, so the sniffer must cope with short reads.
			for i := range tt.send {
				if _, err := conn.Write(tt.send[i : i+1]); err != nil {
					t.Fatal(err)
				}
			}
			reply, err := io.ReadAll(conn)
			if err != nil || string(reply) != "ok" {
				t.Fatalf("reply %q, err %v", reply, err)
			}
			c := h.nextCall()
			if c.route != tt.wantRoute || c.proto != tt.wantProto || !bytes.Equal(c.data, tt.send) {
				t.Fatalf("call = %+v, want route %q proto %q data %q", c, tt.wantRoute, tt.wantProto, tt.send)
			}
		})
	}
}

func TestPlainPostgresRoutedWhenRegistered(t *testing.T) {
	startup := append(pgPacket(9, pgProtocolV3), 0)
	h := startMux(t, Config{}, func(h *harness) {
		h.m.Handle(ProtocolPostgresPlain, h.rawHandler("plain", len(startup)))
	})
	conn := h.dial()
	conn.SetDeadline(time.Now().Add(testWait))
	if _, err := conn.Write(startup); err != nil {
		t.Fatal(err)
	}
	if reply, err := io.ReadAll(conn); err != nil || string(reply) != "ok" {
		t.Fatalf("reply %q, err %v", reply, err)
	}
	if c := h.nextCall(); c.route != "plain" || !bytes.Equal(c.data, startup) {
		t.Fatalf("call = %+v", c)
	}
}

// expectDropped asserts the server closed conn (EOF or reset), not that our
// own deadline expired.
func expectDropped(t *testing.T, conn net.Conn) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(testWait))
	_, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection was not closed by the mux: %v", err)
	}
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("unexpected read error %v", err)
	}
}

func TestDroppedConnections(t *testing.T) {
	hello := clientHelloBytes(t, "localhost", "h2")
	tests := []struct {
		name string
		send []byte
	}{
		{name: "garbage", send: []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{name: "truncated client hello", send: hello[:20]},
		{name: "oversized record header", send: []byte{0x16, 0x03, 0x01, 0xff, 0xff}},
		{name: "bad postgres code", send: pgPacket(8, 42)},
		{name: "plain postgres unregistered", send: append(pgPacket(9, pgProtocolV3), 0)},
		{name: "tls record of garbage", send: []byte{0x16, 3, 1, 0, 4, 1, 2, 3, 4}},
		{name: "nothing then EOF", send: nil},
	}
	h := startMux(t, Config{}, registerAll)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := h.dial()
			if _, err := conn.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			// Half-close so a mux waiting for more bytes sees EOF at once; it
			// fails harmlessly when the mux already reset the connection.
			_ = conn.CloseWrite()
			expectDropped(t, conn)
			h.noCall()
		})
	}
}

func TestOversizedRecordRefusedWithoutWaiting(t *testing.T) {
	// No half-close here: the header alone must be enough to refuse.
	h := startMux(t, Config{}, registerAll)
	conn := h.dial()
	if _, err := conn.Write([]byte{0x16, 0x03, 0x01, 0x40, 0x01}); err != nil {
		t.Fatal(err)
	}
	expectDropped(t, conn)
	h.noCall()
}

func TestSilentClientDroppedAfterSniffTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	h := startMux(t, Config{SniffTimeout: timeout}, registerAll)
	start := time.Now()
	conn := h.dial()
	expectDropped(t, conn)
	if elapsed := time.Since(start); elapsed < timeout {
		t.Fatalf("dropped after %v, before the %v sniff timeout", elapsed, timeout)
	}
	h.noCall()
}

func TestSniffDeadlineClearedForHandler(t *testing.T) {
	// The handler's second read only succeeds if the mux cleared the sniff
	// deadline: the rest of the banner arrives well after it expired.
	const timeout = 50 * time.Millisecond
	banner := "SSH-2.0-x\r\n"
	h := startMux(t, Config{SniffTimeout: timeout}, func(h *harness) {
		h.m.Handle(ProtocolSSH, h.rawHandler("ssh", len(banner)))
	})
	conn := h.dial()
	if _, err := conn.Write([]byte(banner[:4])); err != nil {
		t.Fatal(err)
	}
	<-time.After(3 * timeout) // let the sniff deadline pass; not used for synchronisation
	if _, err := conn.Write([]byte(banner[4:])); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(testWait))
	reply, err := io.ReadAll(conn)
	if err != nil || string(reply) != "ok" {
		t.Fatalf("reply %q, err %v", reply, err)
	}
	if c := h.nextCall(); string(c.data) != banner {
		t.Fatalf("handler read %q, want %q", c.data, banner)
	}
}

func TestCloseEndsServeAndCancelsHandlers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Listener: ln, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	cancelled := make(chan struct{})
	m.Handle(ProtocolSSH, func(ctx context.Context, conn net.Conn) {
		defer conn.Close()
		close(started)
		<-ctx.Done()
		close(cancelled)
	})
	serveErr := make(chan error, 1)
	go func() { serveErr <- m.Serve(context.Background()) }()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("SSH-2.0-x\r\n"))
	select {
	case <-started:
	case <-time.After(testWait):
		t.Fatal("handler not started")
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Close waits for Serve, so both must already be done.
	select {
	case <-cancelled:
	default:
		t.Fatal("handler context not cancelled by the time Close returned")
	}
	select {
	case err := <-serveErr:
		if err != nil {
			t.Fatalf("Serve = %v, want nil", err)
		}
	case <-time.After(testWait):
		t.Fatal("Serve did not return")
	}
	if n := m.activeConns(); n != 0 {
		t.Fatalf("%d connections tracked after Close", n)
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), testWait); err == nil {
		c.Close()
		t.Fatal("listener still accepting after Close")
	}
	if err := m.Serve(context.Background()); err != nil {
		t.Fatalf("Serve after Close = %v, want nil", err)
	}
}

func TestContextCancelEndsServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Listener: ln, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	serveErr := make(chan error, 1)
	go func() { serveErr <- m.Serve(ctx) }()
	cancel()
	select {
	case err := <-serveErr:
		if err != nil {
			t.Fatalf("Serve = %v, want nil", err)
		}
	case <-time.After(testWait):
		t.Fatal("Serve did not return after cancel")
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close after Serve returned: %v", err)
	}
}

func TestCloseForcesHandlersIgnoringContext(t *testing.T) {
	readErr := make(chan error, 1)
	started := make(chan struct{})
	h := startMux(t, Config{CloseGrace: 50 * time.Millisecond}, func(h *harness) {
		h.m.Handle(ProtocolSSH, func(_ context.Context, conn net.Conn) {
			defer conn.Close()
			buf := make([]byte, 4)
			io.ReadFull(conn, buf)
			close(started)
			_, err := conn.Read(buf) // ignores ctx; only closing the conn frees it
			readErr <- err
		})
	})
	conn := h.dial()
	conn.Write([]byte("SSH-"))
	select {
	case <-started:
	case <-time.After(testWait):
		t.Fatal("handler not started")
	}
	if err := h.m.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-readErr:
		if err == nil {
			t.Fatal("handler read succeeded after forced close")
		}
	default:
		t.Fatal("Close returned while the handler was still running")
	}
}

func TestHandlerPanicDoesNotStopServe(t *testing.T) {
	h := startMux(t, Config{}, func(h *harness) {
		h.m.Handle(ProtocolPostgresSSLRequest, func(context.Context, net.Conn) { panic("boom") })
		h.m.Handle(ProtocolSSH, h.rawHandler("ssh", 4))
	})
	conn := h.dial()
	conn.Write(pgPacket(8, pgSSLRequestCode))
	expectDropped(t, conn)

	conn = h.dial()
	conn.Write([]byte("SSH-"))
	conn.SetReadDeadline(time.Now().Add(testWait))
	if reply, err := io.ReadAll(conn); err != nil || string(reply) != "ok" {
		t.Fatalf("reply %q, err %v", reply, err)
	}
}

func TestMaxConnsQueuesInsteadOfDropping(t *testing.T) {
	release := make(chan struct{})
	h := startMux(t, Config{MaxConns: 1}, func(h *harness) {
		h.m.Handle(ProtocolSSH, func(ctx context.Context, conn net.Conn) {
			defer conn.Close()
			buf := make([]byte, 5)
			io.ReadFull(conn, buf)
			h.calls <- call{route: "ssh", data: buf}
			if buf[4] == '1' {
				<-release
			}
			conn.Write([]byte("ok"))
		})
	})
	first := h.dial()
	first.Write([]byte("SSH-1"))
	if c := h.nextCall(); string(c.data) != "SSH-1" {
		t.Fatalf("first call %q", c.data)
	}
	second := h.dial()
	second.Write([]byte("SSH-2"))
	close(release)
	for _, conn := range []net.Conn{first, second} {
		conn.SetReadDeadline(time.Now().Add(testWait))
		if reply, err := io.ReadAll(conn); err != nil || string(reply) != "ok" {
			t.Fatalf("reply %q, err %v", reply, err)
		}
	}
	if c := h.nextCall(); string(c.data) != "SSH-2" {
		t.Fatalf("second call %q", c.data)
	}
}

// flakyListener fails Accept with temporary errors before delegating.
type flakyListener struct {
	net.Listener
	failures atomic.Int32
}

type tempErr struct{}

func (tempErr) Error() string   { return "temporary accept failure" }
func (tempErr) Temporary() bool { return true }
func (tempErr) Timeout() bool   { return false }

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.failures.Add(-1) >= 0 {
		return nil, tempErr{}
	}
	return l.Listener.Accept()
}

func TestTemporaryAcceptErrorsBackOff(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &flakyListener{Listener: inner}
	ln.failures.Store(3)
	m, err := New(Config{Listener: ln, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{}, 1)
	m.Handle(ProtocolSSH, func(_ context.Context, conn net.Conn) {
		conn.Close()
		got <- struct{}{}
	})
	serveErr := make(chan error, 1)
	go func() { serveErr <- m.Serve(context.Background()) }()
	defer m.Close()

	conn, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("SSH-"))
	select {
	case <-got:
	case err := <-serveErr:
		t.Fatalf("Serve returned %v on a temporary error", err)
	case <-time.After(testWait):
		t.Fatal("connection not served after temporary accept errors")
	}
	if n := ln.failures.Load(); n >= 0 {
		t.Fatalf("only %d temporary failures consumed", 3-n)
	}
}

type failingListener struct{ net.Listener }

func (failingListener) Accept() (net.Conn, error) { return nil, errors.New("listener broken") }

func TestPermanentAcceptErrorReturned(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Listener: failingListener{inner}, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	err = m.Serve(context.Background())
	if err == nil || !strings.Contains(err.Error(), "listener broken") {
		t.Fatalf("Serve = %v, want the accept error", err)
	}
}

func TestExternallyClosedListenerEndsServeCleanly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Listener: ln, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- m.Serve(context.Background()) }()
	ln.Close()
	select {
	case err := <-serveErr:
		if err != nil {
			t.Fatalf("Serve = %v, want nil", err)
		}
	case <-time.After(testWait):
		t.Fatal("Serve did not return")
	}
}

func TestConnListenerBehindMux(t *testing.T) {
	cert, pool := selfSigned(t)
	var cl *ConnListener
	h := startMux(t, Config{}, func(h *harness) {
		cl = NewConnListener(h.m.Addr())
		h.m.HandleALPN([]string{"h2", "http/1.1"}, cl.Handler())
		h.m.Handle(ProtocolSSH, h.rawHandler("ssh", 4))
	})
	if cl.Addr().String() != h.addr {
		t.Fatalf("ConnListener addr %v, want %v", cl.Addr(), h.addr)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s via %s", r.URL.Path, r.Proto)
		}),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
	}
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.ServeTLS(cl, "", "") }()
	defer srv.Close()

	for _, h2 := range []bool{true, false} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
		}
		client := &http.Client{Transport: tr, Timeout: testWait}
		resp, err := client.Get("https://localhost:" + strings.Split(h.addr, ":")[1] + "/ping")
		if err != nil {
			t.Fatalf("GET (h2=%v): %v", h2, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := "/ping via HTTP/1.1"
		if h2 {
			want = "/ping via HTTP/2.0"
		}
		if string(body) != want {
			t.Fatalf("body %q, want %q", body, want)
		}
		tr.CloseIdleConnections()
	}

	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-srvErr; !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("ServeTLS = %v", err)
	}
	// http.Server closed the ConnListener: Accept refuses and routed
	// connections are dropped.
	if _, err := cl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close = %v, want net.ErrClosed", err)
	}
	conn := h.dial()
	if err := tls.Client(conn, &tls.Config{ServerName: "localhost", RootCAs: pool}).Handshake(); err == nil {
		t.Fatal("TLS handshake succeeded through a closed ConnListener")
	}
}

func TestConfigCheckAndSetDefaults(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "defaults", cfg: Config{Listener: ln}},
		{name: "no listener", cfg: Config{}, wantErr: "missing Listener"},
		{name: "negative timeout", cfg: Config{Listener: ln, SniffTimeout: -1}, wantErr: "SniffTimeout"},
		{name: "negative max conns", cfg: Config{Listener: ln, MaxConns: -1}, wantErr: "MaxConns"},
		{name: "negative grace", cfg: Config{Listener: ln, CloseGrace: -1}, wantErr: "CloseGrace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.CheckAndSetDefaults()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.cfg.SniffTimeout != DefaultSniffTimeout || tt.cfg.CloseGrace != DefaultCloseGrace || tt.cfg.Logger == nil {
				t.Fatalf("defaults not set: %+v", tt.cfg)
			}
		})
	}
}

func TestDuplicateRegistrationPanics(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Listener: ln})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	noop := func(context.Context, net.Conn) {}
	m.HandleALPN([]string{"h2"}, noop)
	m.Handle(ProtocolSSH, noop)
	m.HandleDefaultTLS(noop)
	for name, register := range map[string]func(){
		"alpn":        func() { m.HandleALPN([]string{"x", "h2"}, noop) },
		"protocol":    func() { m.Handle(ProtocolSSH, noop) },
		"default tls": func() { m.HandleDefaultTLS(noop) },
		"nil":         func() { m.Handle(ProtocolPostgresPlain, nil) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			register()
		})
	}
	// The failed ALPN registration must not have half-registered "x".
	if _, ok := m.alpn["x"]; ok {
		t.Fatal("partial ALPN registration")
	}
}

func TestClientHelloFromForeignConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, ok := ClientHelloFromConn(a); ok {
		t.Fatal("ClientHelloFromConn accepted a foreign conn")
	}
	if _, ok := ProtocolFromConn(a); ok {
		t.Fatal("ProtocolFromConn accepted a foreign conn")
	}
}
