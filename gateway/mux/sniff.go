package mux

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"time"

	"github.com/gravitational/trace"
)

const (
	tlsRecordHeaderLen  = 5
	tlsRecordHandshake  = 0x16
	maxTLSPlaintextSize = 16 << 10
	// maxSniffBytes bounds what one connection may make us buffer before it is
	// routed: one full-size TLS record. A ClientHello split over several records
	// is accepted only while the total stays under this bound.
	maxSniffBytes = tlsRecordHeaderLen + maxTLSPlaintextSize

	pgSSLRequestCode    = 80877103
	pgGSSENCRequestCode = 80877104
	pgCancelRequestCode = 80877102
	pgProtocolV3        = 196608
	// maxPostgresStartupLen mirrors the server's own limit on a startup packet.
	maxPostgresStartupLen = 10000
)

var sshBanner = []byte("SSH-")

// errHelloCaptured aborts the throwaway TLS handshake once the hello is parsed.
var errHelloCaptured = errors.New("client hello captured")

// sniffResult is what sniffing learnt about a connection.
type sniffResult struct {
	proto Protocol
	hello *ClientHello
	// buf holds every byte read from the connection; it must be replayed.
	buf []byte
}

// recorder reads from the connection and keeps every byte so the handler can
// see the stream from its first byte.
type recorder struct {
	r     io.Reader
	buf   []byte
	limit int
}

// fill makes sure at least n bytes are buffered.
func (rec *recorder) fill(n int) error {
	if n > rec.limit {
		return trace.LimitExceeded("protocol preamble exceeds %d bytes", rec.limit)
	}
	if len(rec.buf) >= n {
		return nil
	}
	start := len(rec.buf)
	rec.buf = slices.Grow(rec.buf, n-start)[:n]
	read, err := io.ReadFull(rec.r, rec.buf[start:n])
	rec.buf = rec.buf[:start+read]
	return trace.Wrap(err)
}

// sniff identifies the protocol spoken on r from its first bytes.
func sniff(r io.Reader) (sniffResult, error) {
	rec := &recorder{r: r, limit: maxSniffBytes, buf: make([]byte, 0, 512)}
	if err := rec.fill(1); err != nil {
		return sniffResult{}, trace.Wrap(err, "reading first byte")
	}
	switch rec.buf[0] {
	case tlsRecordHandshake:
		return sniffTLS(rec)
	case sshBanner[0]:
		if err := rec.fill(len(sshBanner)); err != nil {
			return sniffResult{}, trace.Wrap(err, "reading SSH banner")
		}
		if !bytes.Equal(rec.buf[:len(sshBanner)], sshBanner) {
			return sniffResult{}, trace.BadParameter("unrecognised protocol preamble %q", rec.buf)
		}
		return sniffResult{proto: ProtocolSSH, buf: rec.buf}, nil
	case 0:
		// PostgreSQL packets start with a big-endian int32 length, and startup
		// packets are far below 16 MiB, so their first byte is always zero.
		return sniffPostgres(rec)
	default:
		return sniffResult{}, trace.BadParameter("unrecognised protocol preamble %q", rec.buf)
	}
}

func sniffPostgres(rec *recorder) (sniffResult, error) {
	if err := rec.fill(8); err != nil {
		return sniffResult{}, trace.Wrap(err, "reading PostgreSQL startup packet")
	}
	length := binary.BigEndian.Uint32(rec.buf[0:4])
	code := binary.BigEndian.Uint32(rec.buf[4:8])
	switch {
	case length == 8 && (code == pgSSLRequestCode || code == pgGSSENCRequestCode):
		return sniffResult{proto: ProtocolPostgresSSLRequest, buf: rec.buf}, nil
	case length == 16 && code == pgCancelRequestCode,
		code == pgProtocolV3 && length > 8 && length <= maxPostgresStartupLen:
		return sniffResult{proto: ProtocolPostgresPlain, buf: rec.buf}, nil
	default:
		return sniffResult{}, trace.BadParameter("unrecognised PostgreSQL packet (length %d, code %d)", length, code)
	}
}

func sniffTLS(rec *recorder) (sniffResult, error) {
	if err := rec.fill(tlsRecordHeaderLen); err != nil {
		return sniffResult{}, trace.Wrap(err, "reading TLS record header")
	}
	if rec.buf[1] != 3 {
		return sniffResult{}, trace.BadParameter("unsupported TLS record version %d.%d", rec.buf[1], rec.buf[2])
	}
	length := int(binary.BigEndian.Uint16(rec.buf[3:5]))
	if length == 0 || length > maxTLSPlaintextSize {
		return sniffResult{}, trace.LimitExceeded("TLS record length %d outside 1..%d", length, maxTLSPlaintextSize)
	}
	if err := rec.fill(tlsRecordHeaderLen + length); err != nil {
		return sniffResult{}, trace.Wrap(err, "reading TLS record")
	}
	hello, err := parseClientHello(rec)
	if err != nil {
		return sniffResult{}, trace.Wrap(err)
	}
	return sniffResult{proto: ProtocolTLS, hello: hello, buf: rec.buf}, nil
}

// parseClientHello lets crypto/tls parse the hello (a real, maintained parser)
// and stops the handshake as soon as the hello is known. Nothing is written to
// the client: the handler still has to run the real handshake.
func parseClientHello(rec *recorder) (*ClientHello, error) {
	var hello *ClientHello
	cfg := &tls.Config{
		GetConfigForClient: func(info *tls.ClientHelloInfo) (*tls.Config, error) {
			hello = &ClientHello{
				ServerName: info.ServerName,
				ALPN:       slices.Clone(info.SupportedProtos),
			}
			return nil, errHelloCaptured
		},
	}
	err := tls.Server(&helloConn{rec: rec}, cfg).Handshake()
	if hello != nil {
		return hello, nil
	}
	if err == nil {
		return nil, trace.BadParameter("TLS handshake completed without a ClientHello")
	}
	return nil, trace.BadParameter("malformed TLS ClientHello: %v", err)
}

// helloConn is the read-only connection the throwaway tls.Server reads from:
// buffered bytes first, then the real connection, recording everything and
// refusing to go past the recorder's limit.
type helloConn struct {
	rec *recorder
	pos int
}

func (h *helloConn) Read(p []byte) (int, error) {
	if h.pos < len(h.rec.buf) {
		n := copy(p, h.rec.buf[h.pos:])
		h.pos += n
		return n, nil
	}
	room := h.rec.limit - len(h.rec.buf)
	if room <= 0 {
		return 0, trace.LimitExceeded("TLS ClientHello exceeds %d bytes", h.rec.limit)
	}
	if len(p) > room {
		p = p[:room]
	}
	n, err := h.rec.r.Read(p)
	h.rec.buf = append(h.rec.buf, p[:n]...)
	h.pos += n
	return n, err
}

// Write drops the alert the aborted handshake sends; the client must not see it.
func (h *helloConn) Write(p []byte) (int, error)      { return len(p), nil }
func (h *helloConn) Close() error                     { return nil }
func (h *helloConn) LocalAddr() net.Addr              { return sniffAddr{} }
func (h *helloConn) RemoteAddr() net.Addr             { return sniffAddr{} }
func (h *helloConn) SetDeadline(time.Time) error      { return nil }
func (h *helloConn) SetReadDeadline(time.Time) error  { return nil }
func (h *helloConn) SetWriteDeadline(time.Time) error { return nil }

type sniffAddr struct{}

func (sniffAddr) Network() string { return "mux" }
func (sniffAddr) String() string  { return "sniff" }
