package ssh

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/gateway/session"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/identity/certid"
)

// ALPNProtocol carries one SSH connection to a node inside TLS, for
// "sigil proxy ssh" (ssh's ProxyCommand). The client authenticates with
// its Sigil TLS certificate, sends "HOST:PORT\n" and reads "OK\n" or
// "ERR message\n"; then the SSH client's own stream follows, served by
// the same inner server as a jump (ssh -J). The SSH layer inside is what
// protects the session end to end, so this costs one TLS layer instead of
// a second SSH connection.
const ALPNProtocol = "sigil-ssh"

// maxTargetLine bounds the HOST:PORT line.
const maxTargetLine = 512

// HandleTLS serves a TLS connection with ALPN sigil-ssh.
func (s *Server) HandleTLS(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	tc := tls.Server(conn, &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: s.cfg.GetCertificate,
		NextProtos:     []string{ALPNProtocol},
		// Verified below with certid.Verify, so a refused certificate gets
		// a readable reason instead of a TLS alert.
		ClientAuth: tls.RequireAnyClientCert,
	})
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		s.log.DebugContext(ctx, "TLS handshake failed.", "error", err)
		return
	}
	clientAddr := conn.RemoteAddr().String()
	br := bufio.NewReaderSize(tc, maxTargetLine)
	refuse := func(format string, args ...any) {
		msg := "sigil: " + strings.ReplaceAll(strings.TrimSpace(fmt.Sprintf(format, args...)), "\n", " ")
		_, _ = tc.Write([]byte("ERR " + msg + "\n"))
	}
	peers := tc.ConnectionState().PeerCertificates
	id, err := certid.Verify(peers[0], peers[1:], s.cfg.Authority.CertPool(ca.UserCA), s.cfg.Clock())
	if err != nil {
		refuse("certificate refused: %s; run \"sigil login\" again", trace.UserMessage(err))
		return
	}
	if !id.Route.IsZero() {
		refuse("this certificate is bound to %s %q; use your login certificate", id.Route.ResourceKind, id.Route.ResourceName)
		return
	}
	line, err := br.ReadSlice('\n')
	if err != nil {
		return
	}
	host, portStr, err := net.SplitHostPort(strings.TrimSpace(string(line)))
	port, perr := strconv.Atoi(portStr)
	if err != nil || perr != nil || host == "" || port <= 0 || port > 65535 {
		refuse("expected HOST:PORT, got %q", strings.TrimSpace(string(line)))
		return
	}
	if err := s.cfg.Sessions.CheckLocks(ctx, id); err != nil {
		refuse("%s", session.Message(err))
		return
	}
	node, err := s.resolveNode(ctx, host, port)
	if err != nil {
		s.log.WarnContext(ctx, "Looking up a node failed.", "host", host, "error", err)
		refuse("cannot look up nodes right now; try again")
		return
	}
	if node == nil {
		refuse("no node named %q or at %s is registered; see \"sigil ls\"", host, net.JoinHostPort(host, portStr))
		return
	}
	if _, err := tc.Write([]byte("OK\n")); err != nil {
		return
	}
	_ = conn.SetDeadline(time.Time{})
	s.serve(ctx, &bufferedConn{Conn: tc, r: br}, clientAddr, &jumpTarget{node: node, host: host, owner: id.Name})
}

// bufferedConn reads through the reader that read the target line, in
// case the client sent more.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
