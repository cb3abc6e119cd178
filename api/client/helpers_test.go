package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/gen/sigil/v1/sigilv1connect"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a leaf for key; server leaves get localhost/127.0.0.1 SANs.
func (ca *testCA) issue(t *testing.T, cn string, server bool, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err = MarshalPrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM
}

type testAuth struct {
	sigilv1connect.UnimplementedAuthServiceHandler
	caPEM []byte
}

func (a *testAuth) ClusterInfo(context.Context, *connect.Request[sigilv1.ClusterInfoRequest]) (*connect.Response[sigilv1.ClusterInfoResponse], error) {
	return connect.NewResponse(&sigilv1.ClusterInfoResponse{ClusterName: "test", TlsCaPem: a.caPEM, Version: "0.0.0-test"}), nil
}

func (a *testAuth) WhoAmI(_ context.Context, req *connect.Request[sigilv1.WhoAmIRequest]) (*connect.Response[sigilv1.WhoAmIResponse], error) {
	return connect.NewResponse(&sigilv1.WhoAmIResponse{CertSerial: "ok"}), nil
}

// startGateway serves AuthService over TLS 1.3 with a leaf signed by
// serverCA while advertising advertisedCAPEM in ClusterInfo. When userCA is
// set, WhoAmI requires a client certificate it signed.
func startGateway(t *testing.T, serverCA *testCA, advertisedCAPEM []byte, userCA *testCA) string {
	t.Helper()
	certPEM, keyPEM := serverCA.issue(t, "gateway", true, time.Now().Add(time.Hour))
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	path, handler := sigilv1connect.NewAuthServiceHandler(&testAuth{caPEM: advertisedCAPEM})
	mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/WhoAmI") && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
			http.Error(w, "client certificate required", http.StatusUnauthorized)
			return
		}
		handler.ServeHTTP(w, r)
	}))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2", "http/1.1"}}
	if userCA != nil {
		pool := x509.NewCertPool()
		pool.AddCert(userCA.cert)
		srv.TLS.ClientCAs = pool
		srv.TLS.ClientAuth = tls.VerifyClientCertIfGiven
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}
