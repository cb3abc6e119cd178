package client

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/gen/sigil/v1/sigilv1connect"
)

// Fingerprint formats the SHA-256 of a CA certificate's DER the way Sigil
// shows and stores it: "sha256:" then upper-case hex bytes joined by ':'.
func Fingerprint(caCertDER []byte) string {
	sum := sha256.Sum256(caCertDER)
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	var b strings.Builder
	b.Grow(len("sha256:") + len(h) + len(sum) - 1)
	b.WriteString("sha256:")
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}

// FetchCA learns the gateway's TLS CA on first contact, before the client
// trusts anything. It dials without verification, asks ClusterInfo over
// that same connection for the CA bundle and then checks that the
// certificate the server presented really chains to an advertised CA for
// addr's host. The result is self-consistent, not authenticated: callers
// must pin the returned fingerprint (known_cas) or have a human confirm it.
//
// fingerprint is that of the CA the server's certificate chains to.
func FetchCA(ctx context.Context, addr string, timeout time.Duration) (caPEM []byte, fingerprint string, err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", trace.BadParameter("gateway address %q is not HOST:PORT", addr)
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	dialer := &tls.Dialer{
		NetDialer: &net.Dialer{Timeout: timeout},
		Config: &tls.Config{
			// Verification happens below, against the CA the server
			// advertises; there is nothing to verify against yet.
			InsecureSkipVerify: true,
			ServerName:         host,
			MinVersion:         tls.VersionTLS13,
			// http/1.1 only: one request on one pre-dialed connection.
			NextProtos: []string{"http/1.1"},
		},
	}
	rawConn, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, "", trace.ConnectionProblem(err, "cannot reach the gateway at %s: %v", addr, err)
	}
	conn := rawConn.(*tls.Conn)
	defer conn.Close()
	peerCerts := conn.ConnectionState().PeerCertificates
	if len(peerCerts) == 0 {
		return nil, "", trace.AccessDenied("the gateway at %s presented no certificate", addr)
	}

	var once sync.Once
	transport := &http.Transport{
		DialTLSContext: func(context.Context, string, string) (net.Conn, error) {
			var c net.Conn
			once.Do(func() { c = conn })
			if c == nil {
				return nil, trace.ConnectionProblem(nil, "the pre-dialed gateway connection was already used")
			}
			return c, nil
		},
		DisableKeepAlives: true,
	}
	defer transport.CloseIdleConnections()
	auth := sigilv1connect.NewAuthServiceClient(&http.Client{Transport: transport, Timeout: timeout}, "https://"+addr)
	resp, err := auth.ClusterInfo(ctx, connect.NewRequest(&sigilv1.ClusterInfoRequest{}))
	if err != nil {
		return nil, "", trace.Wrap(err, "asking %s for its cluster CA", addr)
	}
	caPEM = resp.Msg.GetTlsCaPem()
	if len(caPEM) > maxIdentityFileSize {
		return nil, "", trace.LimitExceeded("the gateway at %s advertised an oversized CA bundle", addr)
	}
	root, err := VerifyServerChain(peerCerts, caPEM, host)
	var herr x509.HostnameError
	if errors.As(err, &herr) {
		return nil, "", trace.AccessDenied("refusing the gateway at %s: its certificate is not valid for %q (%v); use an address it was issued for", addr, host, herr)
	}
	if err != nil {
		return nil, "", trace.AccessDenied("refusing the gateway at %s: its certificate does not chain to the CA it advertises (%v); this can be a man-in-the-middle", addr, err)
	}
	return caPEM, Fingerprint(root.Raw), nil
}

// VerifyServerChain checks that chain[0] is a server certificate valid for
// host and issued (possibly through chain[1:]) by a CA in caPEM, and
// returns that CA.
func VerifyServerChain(chain []*x509.Certificate, caPEM []byte, host string) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, trace.BadParameter("empty certificate chain")
	}
	roots, err := CertPoolFromPEM(caPEM)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	chains, err := chain[0].Verify(x509.VerifyOptions{
		DNSName:       host,
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	verified := chains[0]
	return verified[len(verified)-1], nil
}
