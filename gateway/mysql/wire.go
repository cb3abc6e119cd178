package mysql

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/gravitational/trace"
)

// Capability flags (MySQL client/server protocol).
const (
	capLongPassword     uint32 = 1 << 0
	capFoundRows        uint32 = 1 << 1
	capLongFlag         uint32 = 1 << 2
	capConnectWithDB    uint32 = 1 << 3
	capNoSchema         uint32 = 1 << 4
	capCompress         uint32 = 1 << 5
	capODBC             uint32 = 1 << 6
	capLocalFiles       uint32 = 1 << 7
	capIgnoreSpace      uint32 = 1 << 8
	capProtocol41       uint32 = 1 << 9
	capInteractive      uint32 = 1 << 10
	capSSL              uint32 = 1 << 11
	capIgnoreSigpipe    uint32 = 1 << 12
	capTransactions     uint32 = 1 << 13
	capReserved         uint32 = 1 << 14
	capSecureConn       uint32 = 1 << 15
	capMultiStatements  uint32 = 1 << 16
	capMultiResults     uint32 = 1 << 17
	capPSMultiResults   uint32 = 1 << 18
	capPluginAuth       uint32 = 1 << 19
	capConnectAttrs     uint32 = 1 << 20
	capPluginAuthLenenc uint32 = 1 << 21
	capExpiredPasswords uint32 = 1 << 22
	capSessionTrack     uint32 = 1 << 23
	capDeprecateEOF     uint32 = 1 << 24
)

// serverCaps is what the gateway offers clients. Deliberately absent:
// compression (the relay reads packets), LOCAL INFILE (the server would
// pull file contents through the command stream), session tracking and
// query attributes (they change packet layouts the tap relies on).
const serverCaps = capLongPassword | capFoundRows | capLongFlag | capConnectWithDB | capODBC |
	capIgnoreSpace | capProtocol41 | capInteractive | capSSL | capIgnoreSigpipe | capTransactions |
	capReserved | capSecureConn | capMultiStatements | capMultiResults | capPSMultiResults |
	capPluginAuth | capConnectAttrs | capPluginAuthLenenc | capDeprecateEOF

// formatCaps change what the server sends; the upstream connection must
// agree with the client on each of them.
const formatCaps = capProtocol41 | capMultiResults | capPSMultiResults | capDeprecateEOF | capLongFlag | capFoundRows

// Commands.
const (
	comQuit             = 0x01
	comInitDB           = 0x02
	comQuery            = 0x03
	comFieldList        = 0x04
	comCreateDB         = 0x05
	comDropDB           = 0x06
	comRefresh          = 0x07
	comShutdown         = 0x08
	comStatistics       = 0x09
	comProcessInfo      = 0x0a
	comProcessKill      = 0x0c
	comDebug            = 0x0d
	comPing             = 0x0e
	comChangeUser       = 0x11
	comStmtPrepare      = 0x16
	comStmtExecute      = 0x17
	comStmtSendLongData = 0x18
	comStmtClose        = 0x19
	comStmtReset        = 0x1a
	comSetOption        = 0x1b
	comStmtFetch        = 0x1c
	comResetConnection  = 0x1f
)

// Error codes and SQLSTATEs the gateway sends.
const (
	erDBAccessDenied     = 1044
	erAccessDenied       = 1045
	erUnknownCommand     = 1047
	erServerShutdown     = 1053
	erNoSuchThread       = 1094
	erTableAccessDenied  = 1142
	erNetPacketTooLarge  = 1153
	erHandshake          = 1043
	erConnectionKilled   = 1927
	stateAccessDenied    = "28000"
	stateSyntaxOrAccess  = "42000"
	stateConnection      = "08S01"
	stateGeneral         = "HY000"
	stateConnectionKill  = "70100"
	defaultCollation     = 45 // utf8mb4_general_ci
	statusAutocommit     = 0x0002
	maxPayload           = 0xffffff
	nativePasswordPlugin = "mysql_native_password"
	// serverVersion is what clients see; the suffix names the gateway.
	serverVersion = "8.0.0-sigil"
	// maxHandshakePacket bounds packets read before the command phase.
	maxHandshakePacket = 64 << 10
)

// readPacket reads one packet (header and payload) of at most limit
// payload bytes into buf.
func readPacket(r io.Reader, buf []byte, limit int) (seq byte, payload []byte, err error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(hdr[0]) | int(hdr[1])<<8 | int(hdr[2])<<16
	if n > limit {
		return 0, nil, trace.LimitExceeded("packet of %d bytes exceeds the limit of %d", n, limit)
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, nil, trace.Wrap(unexpectedEOF(err))
	}
	return hdr[3], buf, nil
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// appendPacket frames payload (shorter than 16 MiB) with seq.
func appendPacket(dst []byte, seq byte, payload []byte) []byte {
	n := len(payload)
	dst = append(dst, byte(n), byte(n>>8), byte(n>>16), seq)
	return append(dst, payload...)
}

// errPacket is an ERR packet with a SQLSTATE (CLIENT_PROTOCOL_41).
func errPacket(seq byte, code uint16, state, msg string) []byte {
	p := make([]byte, 0, 9+len(msg))
	p = append(p, 0xff, byte(code), byte(code>>8), '#')
	p = append(p, state...)
	p = append(p, msg...)
	if len(p) > maxPayload {
		p = p[:maxPayload]
	}
	return appendPacket(nil, seq, p)
}

// okPacket is an OK packet with no rows affected.
func okPacket(seq byte, status uint16) []byte {
	return appendPacket(nil, seq, []byte{0x00, 0, 0, byte(status), byte(status >> 8), 0, 0})
}

func appendLenenc(b []byte, n uint64) []byte {
	switch {
	case n < 251:
		return append(b, byte(n))
	case n < 1<<16:
		return append(b, 0xfc, byte(n), byte(n>>8))
	case n < 1<<24:
		return append(b, 0xfd, byte(n), byte(n>>8), byte(n>>16))
	default:
		b = append(b, 0xfe)
		return binary.LittleEndian.AppendUint64(b, n)
	}
}

func appendLenencString(b []byte, s string) []byte {
	return append(appendLenenc(b, uint64(len(s))), s...)
}

// readLenenc decodes a length-encoded integer; ok is false when b is too
// short or holds a NULL (0xfb) or ERR (0xff) marker.
func readLenenc(b []byte) (n uint64, rest []byte, ok bool) {
	if len(b) == 0 {
		return 0, nil, false
	}
	switch c := b[0]; {
	case c < 0xfb:
		return uint64(c), b[1:], true
	case c == 0xfc && len(b) >= 3:
		return uint64(binary.LittleEndian.Uint16(b[1:])), b[3:], true
	case c == 0xfd && len(b) >= 4:
		return uint64(b[1]) | uint64(b[2])<<8 | uint64(b[3])<<16, b[4:], true
	case c == 0xfe && len(b) >= 9:
		return binary.LittleEndian.Uint64(b[1:]), b[9:], true
	}
	return 0, nil, false
}

func readLenencBytes(b []byte) (v, rest []byte, ok bool) {
	n, rest, ok := readLenenc(b)
	if !ok || n > uint64(len(rest)) {
		return nil, nil, false
	}
	return rest[:n], rest[n:], true
}

func readNulString(b []byte) (string, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// serverHandshake is the initial handshake (protocol 10).
type serverHandshake struct {
	version   string
	connID    uint32
	authData  []byte
	caps      uint32
	collation byte
	status    uint16
	plugin    string
}

func (h *serverHandshake) encode() []byte {
	auth := h.authData
	p := []byte{10}
	p = append(p, h.version...)
	p = append(p, 0)
	p = binary.LittleEndian.AppendUint32(p, h.connID)
	p = append(p, auth[:8]...)
	p = append(p, 0)
	p = binary.LittleEndian.AppendUint16(p, uint16(h.caps))
	p = append(p, h.collation)
	p = binary.LittleEndian.AppendUint16(p, h.status)
	p = binary.LittleEndian.AppendUint16(p, uint16(h.caps>>16))
	p = append(p, byte(len(auth)+1))
	p = append(p, make([]byte, 10)...)
	p = append(p, auth[8:]...)
	p = append(p, 0)
	p = append(p, h.plugin...)
	p = append(p, 0)
	return p
}

func parseServerHandshake(p []byte) (*serverHandshake, error) {
	bad := func(what string) error { return trace.BadParameter("malformed server handshake: %s", what) }
	if len(p) == 0 {
		return nil, bad("empty")
	}
	if p[0] != 10 {
		return nil, trace.BadParameter("server handshake protocol %d is not supported (want 10)", p[0])
	}
	h := &serverHandshake{}
	var ok bool
	h.version, p, ok = readNulString(p[1:])
	if !ok || len(p) < 4+8+1+2 {
		return nil, bad("short")
	}
	h.connID = binary.LittleEndian.Uint32(p)
	h.authData = append([]byte(nil), p[4:12]...)
	p = p[13:]
	h.caps = uint32(binary.LittleEndian.Uint16(p))
	p = p[2:]
	if len(p) < 1+2+2+1+10 {
		return h, nil
	}
	h.collation = p[0]
	h.status = binary.LittleEndian.Uint16(p[1:])
	h.caps |= uint32(binary.LittleEndian.Uint16(p[3:])) << 16
	authLen := int(p[5])
	p = p[16:]
	if h.caps&capSecureConn != 0 {
		n := max(13, authLen-8)
		if len(p) < n {
			return nil, bad("short auth data")
		}
		part := p[:n]
		if i := bytes.IndexByte(part, 0); i >= 0 {
			part = part[:i]
		}
		h.authData = append(h.authData, part...)
		p = p[n:]
	}
	if h.caps&capPluginAuth != 0 {
		name, _, ok := readNulString(p)
		if !ok {
			name = string(p)
		}
		h.plugin = name
	}
	return h, nil
}

// handshakeResponse is a client's HandshakeResponse41 (or its first 32
// bytes, an SSLRequest).
type handshakeResponse struct {
	caps       uint32
	maxPacket  uint32
	collation  byte
	user       string
	authResp   []byte
	db         string
	plugin     string
	attrs      map[string]string
	attrsOrder []string
}

// sslRequestLen is the payload length of an SSLRequest.
const sslRequestLen = 32

// maxAttrs bounds the connection attributes kept from a client.
const maxAttrs = 64

func parseHandshakeResponse(p []byte) (*handshakeResponse, error) {
	bad := func(what string) error { return trace.BadParameter("malformed handshake response: %s", what) }
	if len(p) < sslRequestLen {
		return nil, bad("short")
	}
	r := &handshakeResponse{
		caps:      binary.LittleEndian.Uint32(p),
		maxPacket: binary.LittleEndian.Uint32(p[4:]),
		collation: p[8],
	}
	if r.caps&capProtocol41 == 0 {
		return nil, trace.BadParameter("the client does not speak protocol 4.1")
	}
	p = p[sslRequestLen:]
	if len(p) == 0 {
		// An SSLRequest.
		return r, nil
	}
	var ok bool
	if r.user, p, ok = readNulString(p); !ok {
		return nil, bad("user")
	}
	switch {
	case r.caps&capPluginAuthLenenc != 0:
		if r.authResp, p, ok = readLenencBytes(p); !ok {
			return nil, bad("auth response")
		}
	case r.caps&capSecureConn != 0:
		if len(p) < 1 || int(p[0]) > len(p)-1 {
			return nil, bad("auth response")
		}
		r.authResp, p = p[1:1+int(p[0])], p[1+int(p[0]):]
	default:
		var s string
		if s, p, ok = readNulString(p); !ok {
			return nil, bad("auth response")
		}
		r.authResp = []byte(s)
	}
	if r.caps&capConnectWithDB != 0 && len(p) > 0 {
		if r.db, p, ok = readNulString(p); !ok {
			return nil, bad("database")
		}
	}
	if r.caps&capPluginAuth != 0 && len(p) > 0 {
		if r.plugin, p, ok = readNulString(p); !ok {
			// Some clients omit the terminator at the end of the packet.
			r.plugin, p = string(p), nil
		}
	}
	if r.caps&capConnectAttrs != 0 && len(p) > 0 {
		all, _, ok := readLenencBytes(p)
		if !ok {
			return nil, bad("connection attributes")
		}
		r.attrs = make(map[string]string)
		for len(all) > 0 {
			var k, v []byte
			if k, all, ok = readLenencBytes(all); !ok {
				return nil, bad("connection attribute name")
			}
			if v, all, ok = readLenencBytes(all); !ok {
				return nil, bad("connection attribute value")
			}
			if _, dup := r.attrs[string(k)]; !dup && len(r.attrs) < maxAttrs {
				r.attrs[string(k)] = string(v)
				r.attrsOrder = append(r.attrsOrder, string(k))
			}
		}
	}
	return r, nil
}

// encode writes the response (without SSLRequest truncation).
func (r *handshakeResponse) encode() []byte {
	p := binary.LittleEndian.AppendUint32(nil, r.caps)
	p = binary.LittleEndian.AppendUint32(p, r.maxPacket)
	p = append(p, r.collation)
	p = append(p, make([]byte, 23)...)
	p = append(p, r.user...)
	p = append(p, 0)
	switch {
	case r.caps&capPluginAuthLenenc != 0:
		p = appendLenencString(p, string(r.authResp))
	case r.caps&capSecureConn != 0:
		p = append(p, byte(len(r.authResp)))
		p = append(p, r.authResp...)
	default:
		p = append(p, r.authResp...)
		p = append(p, 0)
	}
	if r.caps&capConnectWithDB != 0 {
		p = append(p, r.db...)
		p = append(p, 0)
	}
	if r.caps&capPluginAuth != 0 {
		p = append(p, r.plugin...)
		p = append(p, 0)
	}
	if r.caps&capConnectAttrs != 0 {
		var attrs []byte
		for _, k := range r.attrsOrder {
			attrs = appendLenencString(attrs, k)
			attrs = appendLenencString(attrs, r.attrs[k])
		}
		p = appendLenencString(p, string(attrs))
	}
	return p
}

// sslRequest is the first 32 bytes of a handshake response.
func sslRequest(caps, maxPacket uint32, collation byte) []byte {
	p := binary.LittleEndian.AppendUint32(nil, caps|capSSL)
	p = binary.LittleEndian.AppendUint32(p, maxPacket)
	p = append(p, collation)
	return append(p, make([]byte, 23)...)
}

// serverError is a decoded ERR packet.
type serverError struct {
	code  uint16
	state string
	msg   string
}

func (e *serverError) Error() string { return fmt.Sprintf("ERROR %d (%s): %s", e.code, e.state, e.msg) }

func parseErrPacket(p []byte) *serverError {
	e := &serverError{state: stateGeneral}
	if len(p) < 3 || p[0] != 0xff {
		e.msg = "malformed error packet"
		return e
	}
	e.code = binary.LittleEndian.Uint16(p[1:])
	p = p[3:]
	if len(p) >= 6 && p[0] == '#' {
		e.state = string(p[1:6])
		p = p[6:]
	}
	e.msg = string(p)
	return e
}
