package mux

import (
	"net"
	"sync"
	"sync/atomic"
)

// ClientHello is the part of a TLS ClientHello the mux routes on, offered to
// handlers that want it (for example to pick a certificate by SNI).
type ClientHello struct {
	// ServerName is the SNI value, empty if the client sent none.
	ServerName string
	// ALPN lists the offered protocols in the client's order of preference.
	ALPN []string
}

// sniffedConn replays the bytes read while sniffing before reading from the
// underlying connection, so handlers see the stream from its first byte.
type sniffedConn struct {
	net.Conn
	proto Protocol
	hello *ClientHello

	// drained lets Read skip the mutex once the replay buffer is spent, which
	// is every read after the first one or two.
	drained atomic.Bool
	mu      sync.Mutex
	buf     []byte
}

func newSniffedConn(conn net.Conn, res sniffResult) *sniffedConn {
	c := &sniffedConn{Conn: conn, proto: res.proto, hello: res.hello, buf: res.buf}
	c.drained.Store(len(res.buf) == 0)
	return c
}

func (c *sniffedConn) Read(p []byte) (int, error) {
	if !c.drained.Load() {
		c.mu.Lock()
		if len(c.buf) > 0 {
			n := copy(p, c.buf)
			c.buf = c.buf[n:]
			if len(c.buf) == 0 {
				c.buf = nil
				c.drained.Store(true)
			}
			c.mu.Unlock()
			return n, nil
		}
		c.mu.Unlock()
	}
	return c.Conn.Read(p)
}

// ClientHelloFromConn returns the ClientHello the mux parsed for conn, when
// conn is a TLS connection handed out by the mux.
func ClientHelloFromConn(conn net.Conn) (*ClientHello, bool) {
	c, ok := conn.(*sniffedConn)
	if !ok || c.hello == nil {
		return nil, false
	}
	return c.hello, true
}

// ProtocolFromConn returns the protocol the mux detected for conn.
func ProtocolFromConn(conn net.Conn) (Protocol, bool) {
	c, ok := conn.(*sniffedConn)
	if !ok {
		return "", false
	}
	return c.proto, true
}
