package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

var serial atomic.Int64

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue signs a fresh key. NotBefore is backdated a minute like the Sigil
// CA does, which renewal scheduling must not mistake for age.
func (ca *testCA) issue(t testing.TB, cn string, server bool, ttl time.Duration) *tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(ttl),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// fakeGateway requires a client certificate, records each first message
// with the certificate's CN, answers "CN=<cn>\n" and then echoes.
type fakeGateway struct {
	addr string
	ca   *testCA

	mu       sync.Mutex
	startups [][]byte
	cns      []string
	alpns    []string
	cancels  chan []byte
}

func startFakeGateway(t *testing.T, ca *testCA, alpn string) *fakeGateway {
	t.Helper()
	srvCert := ca.issue(t, "gateway", true, time.Hour)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*srvCert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.pool, NextProtos: []string{alpn},
	})
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGateway{addr: ln.Addr().String(), ca: ca, cancels: make(chan []byte, 4)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				g.serve(c.(*tls.Conn))
			}()
		}
	}()
	return g
}

func (g *fakeGateway) serve(c *tls.Conn) {
	if err := c.Handshake(); err != nil {
		return
	}
	st := c.ConnectionState()
	msg, code, err := readStartup(c)
	if err != nil {
		return
	}
	if code == codeCancelRequest {
		g.cancels <- msg
		return
	}
	cn := st.PeerCertificates[0].Subject.CommonName
	g.mu.Lock()
	g.startups = append(g.startups, msg)
	g.cns = append(g.cns, cn)
	g.alpns = append(g.alpns, st.NegotiatedProtocol)
	g.mu.Unlock()
	fmt.Fprintf(c, "CN=%s\n", cn)
	io.Copy(c, c)
}

func startupMessage(user, db string) []byte {
	var body []byte
	body = binary.BigEndian.AppendUint32(body, 3<<16)
	for _, kv := range [][2]string{{"user", user}, {"database", db}, {"application_name", "test"}} {
		body = append(body, kv[0]...)
		body = append(body, 0)
		body = append(body, kv[1]...)
		body = append(body, 0)
	}
	body = append(body, 0)
	return append(binary.BigEndian.AppendUint32(nil, uint32(4+len(body))), body...)
}

func request(code uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, 8)
	return binary.BigEndian.AppendUint32(b, code)
}

func startTunnel(t *testing.T, g *fakeGateway, certs CertSource, logw io.Writer) *Tunnel {
	t.Helper()
	if logw == nil {
		logw = io.Discard
	}
	tun, err := New(Config{
		GatewayAddr: g.addr, Certs: certs, RootCAs: g.ca.pool,
		Logger: slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tun.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	return tun
}

// session is a plain client of the tunnel that has passed the startup.
type session struct {
	c  net.Conn
	r  *bufio.Reader
	cn string
}

func openSession(t testing.TB, tun *Tunnel, negotiate bool) (*session, error) {
	c, err := net.Dial("tcp", tun.Addr().String())
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if negotiate {
		for _, code := range []uint32{codeGSSENCRequest, codeSSLRequest} {
			c.Write(request(code))
			var b [1]byte
			if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'N' {
				c.Close()
				return nil, fmt.Errorf("encryption request %d: answer %q, %v", code, b[0], err)
			}
		}
	}
	if _, err := c.Write(startupMessage("reader", "app")); err != nil {
		return nil, err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("reading gateway greeting: %w (got %q)", err, line)
	}
	if !strings.HasPrefix(line, "CN=") {
		c.Close()
		return nil, fmt.Errorf("unexpected greeting %q", line)
	}
	return &session{c: c, r: r, cn: strings.TrimSpace(strings.TrimPrefix(line, "CN="))}, nil
}

func (s *session) echo(msg string) error {
	s.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.c.Write([]byte(msg + "\n")); err != nil {
		return err
	}
	got, err := s.r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg+"\n" {
		return fmt.Errorf("echo %q, got %q", msg, got)
	}
	return nil
}

func TestStartupForwardedUnchanged(t *testing.T) {
	ca := newTestCA(t)
	g := startFakeGateway(t, ca, ALPNPostgres)
	tun := startTunnel(t, g, StaticCert{Cert: ca.issue(t, "routed-1", false, time.Hour)}, nil)

	s, err := openSession(t, tun, true)
	if err != nil {
		t.Fatal(err)
	}
	defer s.c.Close()
	if s.cn != "routed-1" {
		t.Fatalf("gateway saw CN %q", s.cn)
	}
	if err := s.echo("SELECT 1"); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.startups) != 1 || !bytes.Equal(g.startups[0], startupMessage("reader", "app")) {
		t.Fatalf("startup forwarded as %q", g.startups)
	}
	if g.alpns[0] != ALPNPostgres {
		t.Fatalf("ALPN %q", g.alpns[0])
	}
	if !strings.HasPrefix(tun.Addr().String(), "127.0.0.1:") {
		t.Fatalf("listening on %s", tun.Addr())
	}
}

func TestCancelRequestForwarded(t *testing.T) {
	ca := newTestCA(t)
	g := startFakeGateway(t, ca, ALPNPostgres)
	tun := startTunnel(t, g, StaticCert{Cert: ca.issue(t, "routed-1", false, time.Hour)}, nil)
	c, err := net.Dial("tcp", tun.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cancel := binary.BigEndian.AppendUint32(nil, 16)
	cancel = binary.BigEndian.AppendUint32(cancel, codeCancelRequest)
	cancel = binary.BigEndian.AppendUint32(cancel, 4242)
	cancel = binary.BigEndian.AppendUint32(cancel, 0xdeadbeef)
	c.Write(cancel)
	select {
	case got := <-g.cancels:
		if !bytes.Equal(got, cancel) {
			t.Fatalf("cancel forwarded as %x, want %x", got, cancel)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancel request never reached the gateway")
	}
}

// readError reads one ErrorResponse and returns its SQLSTATE and message.
func readError(t *testing.T, c net.Conn) (code, msg string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	data, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading error: %v", err)
	}
	if len(data) < 6 || data[0] != 'E' {
		t.Fatalf("want an ErrorResponse, got %q", data)
	}
	for _, f := range bytes.Split(data[5:], []byte{0}) {
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case 'C':
			code = string(f[1:])
		case 'M':
			msg = string(f[1:])
		}
	}
	return code, msg
}

func TestBadFirstMessages(t *testing.T) {
	ca := newTestCA(t)
	g := startFakeGateway(t, ca, ALPNPostgres)
	tun := startTunnel(t, g, StaticCert{Cert: ca.issue(t, "routed-1", false, time.Hour)}, nil)
	dial := func() net.Conn {
		c, err := net.Dial("tcp", tun.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	// An oversized length is refused without reading or allocating it.
	c := dial()
	c.Write(binary.BigEndian.AppendUint32(nil, 1<<30))
	c.Write(make([]byte, 4))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("oversized message: read %d bytes, want the connection closed", n)
	}

	// An unknown protocol version gets a protocol-violation error.
	c = dial()
	c.Write(request(2 << 16))
	if code, msg := readError(t, c); code != "08P01" || !strings.Contains(msg, "unsupported protocol") {
		t.Fatalf("got %s %q", code, msg)
	}

	// Endless encryption requests are cut off.
	c = dial()
	for i := 0; i <= maxNegotiations; i++ {
		c.Write(request(codeSSLRequest))
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(c)
	if string(got) != strings.Repeat("N", maxNegotiations) {
		t.Fatalf("answers %q", got)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.startups) != 0 {
		t.Fatalf("bad clients reached the gateway: %q", g.startups)
	}
}

func TestGatewayErrorsReachTheClient(t *testing.T) {
	ca := newTestCA(t)
	// The gateway does not speak sigil-postgres.
	g := startFakeGateway(t, ca, "h2")
	tun := startTunnel(t, g, StaticCert{Cert: ca.issue(t, "routed-1", false, time.Hour)}, nil)
	c, err := net.Dial("tcp", tun.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(startupMessage("reader", "app"))
	if code, msg := readError(t, c); code != "08001" || !strings.Contains(msg, "cannot connect to the gateway "+g.addr) {
		t.Fatalf("got %s %q", code, msg)
	}

	// An expired certificate: the source refuses before any dial.
	g2 := startFakeGateway(t, ca, ALPNPostgres)
	exp := ca.issue(t, "routed-1", false, time.Hour)
	src, err := NewRenewingCerts(RenewingCertsConfig{
		Initial: exp, Issue: func(context.Context) (*tls.Certificate, error) { return nil, errors.New("nope") },
		Clock: func() time.Time { return time.Now().Add(2 * time.Hour) }, RetryInterval: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	tun2 := startTunnel(t, g2, src, nil)
	c2, err := net.Dial("tcp", tun2.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write(startupMessage("reader", "app"))
	if code, msg := readError(t, c2); code != "08001" || !strings.Contains(msg, "database certificate expired") {
		t.Fatalf("got %s %q", code, msg)
	}
}

func TestListenOnlyOnLoopback(t *testing.T) {
	ca := newTestCA(t)
	for _, addr := range []string{"0.0.0.0:0", ":0", "10.1.2.3:5432", "example.com:5432"} {
		_, err := New(Config{ListenAddr: addr, GatewayAddr: "127.0.0.1:1", Certs: StaticCert{}, RootCAs: ca.pool})
		if err == nil || !strings.Contains(err.Error(), "not a loopback address") {
			t.Errorf("%s: got %v", addr, err)
		}
	}
	tun, err := New(Config{ListenAddr: "[::1]:0", GatewayAddr: "127.0.0.1:1", Certs: StaticCert{}, RootCAs: ca.pool})
	if err != nil {
		// Hosts without IPv6 cannot bind ::1; that is not what this checks.
		if !strings.Contains(err.Error(), "assign") && !strings.Contains(err.Error(), "not supported") {
			t.Fatal(err)
		}
	} else {
		tun.Close()
	}
}

func TestRenewalKeepsOpenConnections(t *testing.T) {
	ca := newTestCA(t)
	g := startFakeGateway(t, ca, ALPNPostgres)
	var n atomic.Int32
	var logs syncBuffer
	// The renewal is timed from when the first certificate arrived: start
	// the clock before issuing it, so a slow machine cannot make the
	// renewal look early.
	start := time.Now()
	src, err := NewRenewingCerts(RenewingCertsConfig{
		Initial: ca.issue(t, "routed-1", false, 3*time.Second),
		Issue: func(context.Context) (*tls.Certificate, error) {
			return ca.issue(t, fmt.Sprintf("routed-%d", n.Add(1)+1), false, time.Hour), nil
		},
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	tun := startTunnel(t, g, src, nil)

	old, err := openSession(t, tun, true)
	if err != nil {
		t.Fatal(err)
	}
	defer old.c.Close()
	if old.cn != "routed-1" {
		t.Fatalf("first connection used %q", old.cn)
	}
	select {
	case <-src.Renewed():
	case <-time.After(15 * time.Second):
		t.Fatal("no renewal")
	}
	// A third of a 3s lifetime is left at 2s, or at 1s since X.509 cuts
	// NotAfter to whole seconds; the backdated NotBefore must not make
	// it renew at once.
	if el := time.Since(start); el < time.Second {
		t.Fatalf("renewed after %v, too early", el)
	}
	fresh, err := openSession(t, tun, false)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.c.Close()
	if fresh.cn != "routed-2" {
		t.Fatalf("new connection after renewal used %q", fresh.cn)
	}
	// The connection opened with the old certificate still works, also
	// after that certificate has expired.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(start.Add(3500 * time.Millisecond)) {
		if time.Now().After(deadline) {
			t.Fatal("clock stuck")
		}
		if err := old.echo("still here"); err != nil {
			t.Fatalf("old connection broke: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // pacing the echoes, not synchronisation
	}
	if err := old.echo("after expiry"); err != nil {
		t.Fatalf("old connection broke after its cert expired: %v", err)
	}
	if !strings.Contains(logs.String(), "Renewed the database certificate") {
		t.Fatalf("no renewal log: %s", logs.String())
	}
	if n.Load() != 1 {
		t.Fatalf("%d renewals of a 1h certificate", n.Load())
	}
}

func TestRenewalFailureIsLoggedAndRetried(t *testing.T) {
	ca := newTestCA(t)
	g := startFakeGateway(t, ca, ALPNPostgres)
	var calls atomic.Int32
	var logs syncBuffer
	src, err := NewRenewingCerts(RenewingCertsConfig{
		Initial: ca.issue(t, "routed-1", false, 1500*time.Millisecond),
		Issue: func(context.Context) (*tls.Certificate, error) {
			if calls.Add(1) < 3 {
				return nil, errors.New(`your Sigil login expired; run "sigil login"`)
			}
			return ca.issue(t, "routed-2", false, time.Hour), nil
		},
		RetryInterval: 100 * time.Millisecond,
		Logger:        slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	tun := startTunnel(t, g, src, nil)
	s, err := openSession(t, tun, false)
	if err != nil {
		t.Fatal(err)
	}
	defer s.c.Close()
	select {
	case <-src.Renewed():
	case <-time.After(15 * time.Second):
		t.Fatal("no renewal after failures")
	}
	if calls.Load() != 3 {
		t.Fatalf("%d issue calls", calls.Load())
	}
	out := logs.String()
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, `run \"sigil login\"`) {
		t.Fatalf("failure not logged clearly:\n%s", out)
	}
	if err := s.echo("ok"); err != nil {
		t.Fatal(err)
	}
}

func TestTwentyConcurrentConnections(t *testing.T) {
	ca := newTestCA(t)
	g := startFakeGateway(t, ca, ALPNPostgres)
	tun := startTunnel(t, g, StaticCert{Cert: ca.issue(t, "routed-1", false, time.Hour)}, nil)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sessions := make(chan *session, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := openSession(t, tun, i%2 == 0)
			if err != nil {
				errs <- err
				return
			}
			sessions <- s
			for j := range 20 {
				if err := s.echo(fmt.Sprintf("conn %d query %d", i, j)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	close(sessions)
	for err := range errs {
		t.Error(err)
	}
	count := 0
	for s := range sessions {
		count++
		s.c.Close()
	}
	if count != n {
		t.Fatalf("%d of %d sessions opened", count, n)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.startups) != n {
		t.Fatalf("gateway saw %d startups", len(g.startups))
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
