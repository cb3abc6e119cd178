package tunnel

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/gravitational/trace"
)

const (
	// mysqlCapSSL is CLIENT_SSL in the lower capability flags.
	mysqlCapSSL = 1 << 11
	// mysqlHandshakeV10 is the only initial handshake version in use.
	mysqlHandshakeV10 = 10
	// maxMySQLGreeting bounds the gateway's first packet: a handshake is
	// about a hundred bytes, an error packet a few hundred.
	maxMySQLGreeting = 16 << 10
	// mysqlErrConnect is CR_CONN_HOST_ERROR, what clients report when
	// they cannot reach a server; the message says the rest.
	mysqlErrConnect = 2003
)

// handleMySQL dials the gateway at once (a MySQL server speaks first),
// passes its greeting on without CLIENT_SSL and relays the rest.
func (t *Tunnel) handleMySQL(ctx context.Context, local net.Conn, log *slog.Logger) {
	remote, err := t.dial(ctx)
	if err != nil {
		log.WarnContext(ctx, "Cannot connect to the gateway.", "gateway", t.cfg.GatewayAddr, "error", err)
		writeMySQLError(local, mysqlErrConnect, "08S01", "sigil tunnel: cannot connect to the gateway "+t.cfg.GatewayAddr+": "+trace.UserMessage(err))
		return
	}
	if !t.track(remote) {
		remote.Close()
		return
	}
	defer t.untrack(remote)
	remote.SetReadDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	greeting, err := readMySQLPacket(remote, maxMySQLGreeting)
	if err != nil {
		log.WarnContext(ctx, "No MySQL handshake from the gateway.", "error", err)
		writeMySQLError(local, mysqlErrConnect, "08S01", "sigil tunnel: the gateway closed the connection before its MySQL handshake: "+trace.UserMessage(err))
		return
	}
	remote.SetReadDeadline(time.Time{})
	clearMySQLSSL(greeting)
	if _, err := local.Write(greeting); err != nil {
		return
	}
	log.DebugContext(ctx, "Tunnel connection open.")
	pipe(local, remote)
	log.DebugContext(ctx, "Tunnel connection closed.")
}

// readMySQLPacket reads one packet, header included.
func readMySQLPacket(r io.Reader, limit int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, trace.Wrap(err)
	}
	n := int(hdr[0]) | int(hdr[1])<<8 | int(hdr[2])<<16
	if n > limit {
		return nil, trace.LimitExceeded("first MySQL packet of %d bytes exceeds %d", n, limit)
	}
	p := make([]byte, 4+n)
	copy(p, hdr[:])
	if _, err := io.ReadFull(r, p[4:]); err != nil {
		return nil, trace.Wrap(err)
	}
	return p, nil
}

// clearMySQLSSL clears CLIENT_SSL in a v10 handshake packet (header
// included) in place. The tunnel is already encrypted where it matters;
// a local client offered TLS here would try to upgrade a plain loopback
// connection the gateway cannot upgrade. Anything else (an error packet)
// is left alone.
func clearMySQLSSL(p []byte) {
	if len(p) < 5 || p[4] != mysqlHandshakeV10 {
		return
	}
	body := p[5:]
	end := -1
	for i, b := range body {
		if b == 0 {
			end = i
			break
		}
	}
	// server version NUL, connection id (4), auth data part 1 (8),
	// filler (1), then the lower capability flags (2).
	off := end + 1 + 4 + 8 + 1
	if end < 0 || len(body) < off+2 {
		return
	}
	caps := binary.LittleEndian.Uint16(body[off:])
	binary.LittleEndian.PutUint16(body[off:], caps&^mysqlCapSSL)
}

// writeMySQLError sends an ERR packet as the server's first packet, which
// clients show as the reason the connection failed.
func writeMySQLError(w net.Conn, code uint16, sqlstate, msg string) {
	const maxMsg = 512
	if len(msg) > maxMsg {
		msg = msg[:maxMsg]
	}
	payload := []byte{0xff}
	payload = binary.LittleEndian.AppendUint16(payload, code)
	payload = append(payload, '#')
	payload = append(payload, sqlstate...)
	payload = append(payload, msg...)
	out := []byte{byte(len(payload)), byte(len(payload) >> 8), byte(len(payload) >> 16), 0}
	out = append(out, payload...)
	w.SetWriteDeadline(time.Now().Add(5 * time.Second))
	w.Write(out)
}
