package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// myPacket frames payload as a MySQL packet.
func myPacket(seq byte, payload []byte) []byte {
	n := len(payload)
	return append([]byte{byte(n), byte(n >> 8), byte(n >> 16), seq}, payload...)
}

// myHandshake is a v10 initial handshake with the given capabilities.
func myHandshake(caps uint32, connID uint32) []byte {
	p := []byte{10}
	p = append(p, "11.4.0-sigil"...)
	p = append(p, 0)
	p = binary.LittleEndian.AppendUint32(p, connID)
	p = append(p, "abcdefgh"...) // auth data part 1
	p = append(p, 0)             // filler
	p = binary.LittleEndian.AppendUint16(p, uint16(caps))
	p = append(p, 45)                          // collation
	p = binary.LittleEndian.AppendUint16(p, 2) // status
	p = binary.LittleEndian.AppendUint16(p, uint16(caps>>16))
	p = append(p, 21)
	p = append(p, make([]byte, 10)...)
	p = append(p, "ijklmnopqrst"...)
	p = append(p, 0)
	p = append(p, "mysql_native_password"...)
	return append(p, 0)
}

// myGatewaySeen is one connection as the fake MySQL gateway saw it.
type myGatewaySeen struct {
	cn, alpn string
	response []byte
}

// fakeMyGateway requires a client certificate, sends greeting (a whole
// packet, or nothing when nil), reads the client's handshake response,
// answers a packet "CN=<cn>" and then echoes packets.
type fakeMyGateway struct {
	addr string
	ca   *testCA

	mu   sync.Mutex
	seen []myGatewaySeen
}

func startFakeMyGateway(t *testing.T, ca *testCA, alpn string, greeting []byte) *fakeMyGateway {
	t.Helper()
	srvCert := ca.issue(t, "gateway", true, time.Hour)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*srvCert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.pool, NextProtos: []string{alpn},
	})
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeMyGateway{addr: ln.Addr().String(), ca: ca}
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
				g.serve(c.(*tls.Conn), greeting)
			}()
		}
	}()
	return g
}

func (g *fakeMyGateway) serve(c *tls.Conn, greeting []byte) {
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := c.Handshake(); err != nil || greeting == nil {
		return
	}
	st := c.ConnectionState()
	if _, err := c.Write(greeting); err != nil {
		return
	}
	resp, err := readMySQLPacket(c, 1<<20)
	if err != nil {
		return
	}
	cn := st.PeerCertificates[0].Subject.CommonName
	g.mu.Lock()
	g.seen = append(g.seen, myGatewaySeen{cn: cn, alpn: st.NegotiatedProtocol, response: resp})
	g.mu.Unlock()
	c.Write(myPacket(2, []byte("CN="+cn)))
	for {
		p, err := readMySQLPacket(c, 1<<20)
		if err != nil {
			return
		}
		if _, err := c.Write(p); err != nil {
			return
		}
	}
}

func (g *fakeMyGateway) sessions() []myGatewaySeen {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]myGatewaySeen(nil), g.seen...)
}

func startMyTunnel(t *testing.T, gatewayAddr string, ca *testCA, certs CertSource) *Tunnel {
	t.Helper()
	tun, err := New(Config{
		Protocol: ProtocolMySQL, GatewayAddr: gatewayAddr, Certs: certs, RootCAs: ca.pool,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
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

// myClient is a plain local client of a MySQL tunnel past the handshake.
type myClient struct {
	c        net.Conn
	greeting []byte
	cn       string
}

var handshakeResponse = myPacket(1, append(binary.LittleEndian.AppendUint32(nil, 0x000fa685), []byte("reader\x00\x00app\x00")...))

func openMyClient(t testing.TB, tun *Tunnel) (*myClient, error) {
	c, err := net.Dial("tcp", tun.Addr().String())
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	greeting, err := readMySQLPacket(c, 1<<20)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if _, err := c.Write(handshakeResponse); err != nil {
		c.Close()
		return nil, err
	}
	p, err := readMySQLPacket(c, 1<<20)
	if err != nil || !bytes.HasPrefix(p[4:], []byte("CN=")) {
		c.Close()
		return nil, fmt.Errorf("after the handshake: %q, %v", p, err)
	}
	return &myClient{c: c, greeting: greeting, cn: string(p[7:])}, nil
}

func (m *myClient) echo(msg string) error {
	m.c.SetDeadline(time.Now().Add(10 * time.Second))
	sent := myPacket(0, append([]byte{3}, msg...)) // COM_QUERY
	if _, err := m.c.Write(sent); err != nil {
		return err
	}
	got, err := readMySQLPacket(m.c, 1<<20)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, sent) {
		return fmt.Errorf("echo %q, got %q", sent, got)
	}
	return nil
}

// readMyError reads an ERR packet and returns its code and message.
func readMyError(t *testing.T, c net.Conn) (uint16, string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	p, err := readMySQLPacket(c, 1<<20)
	if err != nil {
		t.Fatalf("reading error packet: %v", err)
	}
	if len(p) < 13 || p[4] != 0xff || p[7] != '#' {
		t.Fatalf("want an ERR packet, got %q", p)
	}
	return binary.LittleEndian.Uint16(p[5:]), string(p[13:])
}

func TestMySQLRelay(t *testing.T) {
	const sslCaps = 0x000ff7ff | mysqlCapSSL
	for _, tc := range []struct {
		name     string
		caps     uint32
		wantCaps uint32
	}{
		{"gateway without CLIENT_SSL", sslCaps &^ mysqlCapSSL, sslCaps &^ mysqlCapSSL},
		// Should a gateway ever offer TLS inside the tunnel, the local
		// client must still not try it.
		{"gateway offering CLIENT_SSL", sslCaps, sslCaps &^ mysqlCapSSL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := newTestCA(t)
			greeting := myPacket(0, myHandshake(tc.caps, 1<<30+7))
			g := startFakeMyGateway(t, ca, ALPNMySQL, greeting)
			tun := startMyTunnel(t, g.addr, ca, StaticCert{Cert: ca.issue(t, "routed-1", false, time.Hour)})
			m, err := openMyClient(t, tun)
			if err != nil {
				t.Fatal(err)
			}
			defer m.c.Close()
			want := myPacket(0, myHandshake(tc.wantCaps, 1<<30+7))
			if !bytes.Equal(m.greeting, want) {
				t.Fatalf("greeting\n got %x\nwant %x", m.greeting, want)
			}
			if m.cn != "routed-1" {
				t.Fatalf("gateway saw CN %q", m.cn)
			}
			if err := m.echo("select 1"); err != nil {
				t.Fatal(err)
			}
			// A large result spans many TLS records and reads.
			if err := m.echo(strings.Repeat("x", 100<<10)); err != nil {
				t.Fatal(err)
			}
			s := g.sessions()
			if len(s) != 1 || s[0].alpn != ALPNMySQL || !bytes.Equal(s[0].response, handshakeResponse) {
				t.Fatalf("gateway saw %+v", s)
			}
		})
	}
}

func TestMySQLGatewayFailuresReachTheClient(t *testing.T) {
	ca := newTestCA(t)
	cert := StaticCert{Cert: ca.issue(t, "routed-1", false, time.Hour)}
	dial := func(tun *Tunnel) net.Conn {
		c, err := net.Dial("tcp", tun.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	// The gateway does not speak sigil-mysql.
	g := startFakeMyGateway(t, ca, "h2", myPacket(0, myHandshake(0xffff, 1)))
	code, msg := readMyError(t, dial(startMyTunnel(t, g.addr, ca, cert)))
	if code != mysqlErrConnect || !strings.Contains(msg, "cannot connect to the gateway "+g.addr) {
		t.Fatalf("got %d %q", code, msg)
	}

	// The gateway hangs up before its handshake.
	g = startFakeMyGateway(t, ca, ALPNMySQL, nil)
	code, msg = readMyError(t, dial(startMyTunnel(t, g.addr, ca, cert)))
	if code != mysqlErrConnect || !strings.Contains(msg, "closed the connection before its MySQL handshake") {
		t.Fatalf("got %d %q", code, msg)
	}

	// A refusal from the gateway reaches the client unchanged.
	refusal := myPacket(0, append([]byte{0xff, 0x15, 0x04, '#', '2', '8', '0', '0', '0'}, "sigil: access denied"...))
	g = startFakeMyGateway(t, ca, ALPNMySQL, refusal)
	c := dial(startMyTunnel(t, g.addr, ca, cert))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := readMySQLPacket(c, 1<<20); err != nil || !bytes.Equal(got, refusal) {
		t.Fatalf("refusal forwarded as %q, %v", got, err)
	}

	// An expired certificate is refused before any dial.
	src, err := NewRenewingCerts(RenewingCertsConfig{
		Initial: ca.issue(t, "routed-1", false, time.Hour),
		Issue:   func(context.Context) (*tls.Certificate, error) { return nil, fmt.Errorf("nope") },
		Clock:   func() time.Time { return time.Now().Add(2 * time.Hour) }, RetryInterval: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	g = startFakeMyGateway(t, ca, ALPNMySQL, myPacket(0, myHandshake(0xffff, 1)))
	code, msg = readMyError(t, dial(startMyTunnel(t, g.addr, ca, src)))
	if code != mysqlErrConnect || !strings.Contains(msg, "database certificate expired") {
		t.Fatalf("got %d %q", code, msg)
	}
	if s := g.sessions(); len(s) != 0 {
		t.Fatalf("gateway saw %+v", s)
	}
}

func TestMySQLRenewalKeepsOpenConnections(t *testing.T) {
	ca := newTestCA(t)
	g := startFakeMyGateway(t, ca, ALPNMySQL, myPacket(0, myHandshake(0xffff, 1)))
	var n atomic.Int32
	src, err := NewRenewingCerts(RenewingCertsConfig{
		Initial: ca.issue(t, "routed-1", false, 2*time.Second),
		Issue: func(context.Context) (*tls.Certificate, error) {
			return ca.issue(t, fmt.Sprintf("routed-%d", n.Add(1)+1), false, time.Hour), nil
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	tun := startMyTunnel(t, g.addr, ca, src)
	old, err := openMyClient(t, tun)
	if err != nil {
		t.Fatal(err)
	}
	defer old.c.Close()
	select {
	case <-src.Renewed():
	case <-time.After(15 * time.Second):
		t.Fatal("no renewal")
	}
	fresh, err := openMyClient(t, tun)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.c.Close()
	if old.cn != "routed-1" || fresh.cn != "routed-2" {
		t.Fatalf("certificates used: old %q, new %q", old.cn, fresh.cn)
	}
	if err := old.echo("still here"); err != nil {
		t.Fatalf("old connection broke: %v", err)
	}
}

func TestProtocolConfig(t *testing.T) {
	ca := newTestCA(t)
	_, err := New(Config{Protocol: "oracle", GatewayAddr: "127.0.0.1:1", Certs: StaticCert{}, RootCAs: ca.pool})
	if err == nil || !strings.Contains(err.Error(), `unsupported tunnel protocol "oracle"`) {
		t.Fatalf("got %v", err)
	}
	for proto, alpn := range map[string]string{"": ALPNPostgres, ProtocolPostgres: ALPNPostgres, ProtocolMySQL: ALPNMySQL} {
		cfg := Config{Protocol: proto, GatewayAddr: "127.0.0.1:1", Certs: StaticCert{}, RootCAs: ca.pool}
		if err := cfg.CheckAndSetDefaults(); err != nil || cfg.ALPN != alpn {
			t.Errorf("protocol %q: ALPN %q, %v", proto, cfg.ALPN, err)
		}
	}
}

func TestClearMySQLSSLLeavesOtherPacketsAlone(t *testing.T) {
	for _, p := range [][]byte{
		nil,
		myPacket(0, []byte{10}),               // truncated handshake
		myPacket(0, []byte{10, 'v', 0, 1, 2}), // no capabilities yet
		myPacket(0, []byte{10, 'v', 'e', 'r', 's'}), // no NUL
		myPacket(0, []byte{0xff, 0xff, 0xff, 0xff}), // error packet
	} {
		before := bytes.Clone(p)
		clearMySQLSSL(p)
		if !bytes.Equal(p, before) {
			t.Errorf("%x changed to %x", before, p)
		}
	}
}
