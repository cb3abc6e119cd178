package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/gen/sigil/v1/sigilv1connect"
)

type fakeCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newFakeCA(t *testing.T, name string) *fakeCA {
	t.Helper()
	key, err := client.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &fakeCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *fakeCA) sign(pub any, cn string, server bool, notAfter time.Time) ([]byte, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// fakeAuth is a minimal AuthService: one user "alice" with password "s3cret".
type fakeAuth struct {
	sigilv1connect.UnimplementedAuthServiceHandler
	tlsCA, userCA *fakeCA

	mu        sync.Mutex
	logins    []*sigilv1.LoginRequest
	signup    []*sigilv1.SignupRequest
	mysqlAddr string
}

func (f *fakeAuth) setMySQLAddr(addr string) {
	f.mu.Lock()
	f.mysqlAddr = addr
	f.mu.Unlock()
}

func (f *fakeAuth) ClusterInfo(context.Context, *connect.Request[sigilv1.ClusterInfoRequest]) (*connect.Response[sigilv1.ClusterInfoResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return connect.NewResponse(&sigilv1.ClusterInfoResponse{ClusterName: "test", TlsCaPem: f.tlsCA.pem, MysqlAddr: f.mysqlAddr}), nil
}

func (f *fakeAuth) Signup(_ context.Context, req *connect.Request[sigilv1.SignupRequest]) (*connect.Response[sigilv1.SignupResponse], error) {
	f.mu.Lock()
	f.signup = append(f.signup, req.Msg)
	f.mu.Unlock()
	if req.Msg.GetToken() != "tok123" {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("signup link is invalid or expired; ask an admin for a new one"))
	}
	return connect.NewResponse(&sigilv1.SignupResponse{User: "alice"}), nil
}

func (f *fakeAuth) Login(_ context.Context, req *connect.Request[sigilv1.LoginRequest]) (*connect.Response[sigilv1.LoginResponse], error) {
	f.mu.Lock()
	f.logins = append(f.logins, req.Msg)
	f.mu.Unlock()
	if req.Msg.GetUser() != "alice" || req.Msg.GetPassword() != "s3cret" {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("invalid user or password"))
	}
	pub, err := x509.ParsePKIXPublicKey(req.Msg.GetTlsPublicKey())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	ttl := 8 * time.Hour
	if s := req.Msg.GetTtlSeconds(); s > 0 {
		ttl = time.Duration(s) * time.Second
	}
	exp := time.Now().Add(ttl).Truncate(time.Second)
	certPEM, err := f.userCA.sign(pub, "alice", false, exp)
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	return connect.NewResponse(&sigilv1.LoginResponse{
		TlsCertPem: certPEM,
		TlsCaPem:   f.tlsCA.pem,
		UserCaPem:  f.userCA.pem,
		Identity: &sigilv1.Identity{
			Version: 1, Name: "alice", Kind: sigilv1.IdentityKind_IDENTITY_KIND_HUMAN, Roles: []string{"dev"},
			Traits: map[string]*sigilv1.TraitValues{"logins": {Values: []string{"alice", "root"}}},
		},
		Expires: timestamppb.New(exp),
	}), nil
}

// startFakeGateway serves f, and the services more registers, over TLS
// 1.3 on 127.0.0.1 and returns its address.
func startFakeGateway(t *testing.T, f *fakeAuth, more ...func(*http.ServeMux)) string {
	t.Helper()
	key, err := client.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := f.tlsCA.sign(key.Public(), "gateway", true, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := client.MarshalPrivateKeyPEM(key)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(sigilv1connect.NewAuthServiceHandler(f))
	for _, register := range more {
		register(mux)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2", "http/1.1"}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// fakeTerminal answers prompts from scripts and records them.
type fakeTerminal struct {
	lines     []string
	passwords []string
	prompts   []string
}

func (f *fakeTerminal) ReadPassword(prompt string) (string, error) {
	f.prompts = append(f.prompts, prompt)
	if len(f.passwords) == 0 {
		return "", errors.New("fake terminal: unexpected password prompt " + prompt)
	}
	p := f.passwords[0]
	f.passwords = f.passwords[1:]
	return p, nil
}

func (f *fakeTerminal) ReadLine(prompt string) (string, error) {
	f.prompts = append(f.prompts, prompt)
	if len(f.lines) == 0 {
		return "", errors.New("fake terminal: unexpected prompt " + prompt)
	}
	l := f.lines[0]
	f.lines = f.lines[1:]
	return l, nil
}

func (f *fakeTerminal) Close() error { return nil }

type result struct {
	code           int
	stdout, stderr string
}

// runWith runs the CLI in-process; tty nil means there is no terminal.
func runWith(t *testing.T, tty *fakeTerminal, stdin string, args ...string) result {
	t.Helper()
	var out, errb strings.Builder
	a := &app{
		stdin:  strings.NewReader(stdin),
		stdout: &out,
		stderr: &errb,
		openTerminal: func() (terminal, error) {
			if tty == nil {
				return nil, errNoTerminal
			}
			return tty, nil
		},
		now: time.Now,
	}
	code := a.run(context.Background(), args)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}
