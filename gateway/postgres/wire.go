package postgres

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"

	"github.com/gravitational/trace"
)

// Protocol codes of the untyped startup-phase packets.
const (
	protocolV3        = 3 << 16
	sslRequestCode    = 80877103
	gssencRequestCode = 80877104
	cancelRequestCode = 80877102

	// maxStartupLen mirrors the server's own limit on a startup packet.
	maxStartupLen = 10000
	// maxMessageLen is the protocol's limit on a message (1 GiB).
	maxMessageLen = 1 << 30
	// maxStatementLen bounds Query and Parse bodies the gateway reads
	// to classify: larger ones are refused, never forwarded unchecked.
	maxStatementLen = 16 << 20
	// maxBufferedLen bounds other inspected messages (Bind, Execute,
	// Close); a larger Bind is forwarded as a stream without recording its
	// parameters.
	maxBufferedLen = 16 << 20
	// maxAuthFrameLen bounds the frames read from the server before
	// ReadyForQuery.
	maxAuthFrameLen = 1 << 20
)

// SQLSTATE codes the gateway sends.
const (
	codeInvalidAuthorization = "28000"
	codeInsufficientPriv     = "42501"
	codeAdminShutdown        = "57P01"
	codeCannotConnectNow     = "57P03"
	codeProtocolViolation    = "08P01"
	codeProgramLimit         = "54000"
	codeFeatureNotSupported  = "0A000"
	codeConnectionFailure    = "08006"
	codeInternal             = "XX000"
)

// errorResponse encodes an ErrorResponse. severity is ERROR or FATAL.
func errorResponse(severity, code, msg string) []byte {
	msg = strings.ToValidUTF8(strings.ReplaceAll(msg, "\x00", ""), "?")
	n := 4 + (1 + len(severity) + 1) + (1 + len(severity) + 1) + (1 + len(code) + 1) + (1 + len(msg) + 1) + 1
	b := make([]byte, 0, n+1)
	b = append(b, 'E')
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	for _, f := range []struct {
		t byte
		v string
	}{{'S', severity}, {'V', severity}, {'C', code}, {'M', msg}} {
		b = append(b, f.t)
		b = append(b, f.v...)
		b = append(b, 0)
	}
	return append(b, 0)
}

// syncMessage is a frontend Sync.
var syncMessage = []byte{'S', 0, 0, 0, 4}

// startupPacket is the first packet of a connection (after TLS).
type startupPacket struct {
	code   uint32
	params map[string]string
	// order keeps the parameters in the order the client sent them.
	order []string
	// cancel holds the process id and secret of a CancelRequest.
	cancelPID, cancelSecret uint32
}

// readStartup reads one untyped startup-phase packet.
func readStartup(r io.Reader) (*startupPacket, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, trace.Wrap(err, "reading startup packet")
	}
	length := binary.BigEndian.Uint32(hdr[0:4])
	code := binary.BigEndian.Uint32(hdr[4:8])
	if length < 8 || length > maxStartupLen {
		return nil, trace.BadParameter("invalid startup packet length %d", length)
	}
	body := make([]byte, length-8)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, trace.Wrap(err, "reading startup packet")
	}
	p := &startupPacket{code: code}
	switch {
	case code == sslRequestCode || code == gssencRequestCode:
		if len(body) != 0 {
			return nil, trace.BadParameter("invalid SSLRequest")
		}
		return p, nil
	case code == cancelRequestCode:
		if len(body) != 8 {
			return nil, trace.BadParameter("invalid CancelRequest length %d", length)
		}
		p.cancelPID = binary.BigEndian.Uint32(body[0:4])
		p.cancelSecret = binary.BigEndian.Uint32(body[4:8])
		return p, nil
	case code>>16 != 3:
		return nil, trace.BadParameter("unsupported frontend protocol %d.%d: the gateway speaks 3.0", code>>16, code&0xffff)
	}
	params, order, err := parseStartupParams(body)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	p.params, p.order = params, order
	return p, nil
}

// parseStartupParams parses the NUL-terminated name/value pairs of a
// StartupMessage.
func parseStartupParams(body []byte) (map[string]string, []string, error) {
	params := make(map[string]string)
	var order []string
	for {
		i := indexZero(body)
		if i < 0 {
			return nil, nil, trace.BadParameter("startup packet: unterminated parameter name")
		}
		if i == 0 {
			if len(body) != 1 {
				return nil, nil, trace.BadParameter("startup packet: data after the terminator")
			}
			return params, order, nil
		}
		name := string(body[:i])
		body = body[i+1:]
		j := indexZero(body)
		if j < 0 {
			return nil, nil, trace.BadParameter("startup packet: unterminated value of %q", name)
		}
		if _, dup := params[name]; !dup {
			order = append(order, name)
		}
		params[name] = string(body[:j])
		body = body[j+1:]
	}
}

func indexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}

// encodeStartup encodes a protocol 3.0 StartupMessage.
func encodeStartup(order []string, params map[string]string) []byte {
	b := make([]byte, 8, 256)
	binary.BigEndian.PutUint32(b[4:8], protocolV3)
	for _, k := range order {
		b = append(b, k...)
		b = append(b, 0)
		b = append(b, params[k]...)
		b = append(b, 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b[0:4], uint32(len(b)))
	return b
}

// encodeCancel encodes a CancelRequest.
func encodeCancel(pid, secret uint32) []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint32(b[0:4], 16)
	binary.BigEndian.PutUint32(b[4:8], cancelRequestCode)
	binary.BigEndian.PutUint32(b[8:12], pid)
	binary.BigEndian.PutUint32(b[12:16], secret)
	return b
}

// sslRequest is the 8-byte SSLRequest.
func sslRequest() []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b[0:4], 8)
	binary.BigEndian.PutUint32(b[4:8], sslRequestCode)
	return b
}

// escapeOption escapes a value for the options startup parameter, which
// the server splits on unescaped whitespace and unescapes backslashes in
// (libpq's rules).
func escapeOption(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case ' ', '\t', '\n', '\r', '\f', '\v', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// readFrame reads one typed message into buf (grown as needed, up to max).
func readFrame(r io.Reader, buf []byte, max int) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, buf, trace.Wrap(err)
	}
	length := int(binary.BigEndian.Uint32(hdr[1:5]))
	if length < 4 || length-4 > max {
		return 0, buf, trace.BadParameter("message %q of invalid length %d", hdr[0], length)
	}
	n := length - 4
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, buf, trace.Wrap(err)
	}
	return hdr[0], buf, nil
}

// appendFrame appends a typed message.
func appendFrame(dst []byte, typ byte, body []byte) []byte {
	dst = append(dst, typ)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)+4))
	return append(dst, body...)
}

// cstring splits a NUL-terminated string off b.
func cstring(b []byte) (string, []byte, error) {
	i := indexZero(b)
	if i < 0 {
		return "", nil, fmt.Errorf("unterminated string")
	}
	return string(b[:i]), b[i+1:], nil
}
