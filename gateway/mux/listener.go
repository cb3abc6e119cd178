package mux

import (
	"context"
	"net"
	"sync"
)

// ConnListener is a net.Listener fed by a Handler, so a server that wants a
// listener (http.Server.Serve(tls.NewListener(l, cfg))) can sit behind the mux.
type ConnListener struct {
	addr      net.Addr
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

// NewConnListener returns a listener reporting addr (usually the mux
// listener's address) as its own.
func NewConnListener(addr net.Addr) *ConnListener {
	return &ConnListener{
		addr:  addr,
		conns: make(chan net.Conn),
		done:  make(chan struct{}),
	}
}

// Handler returns the Handler to register with the mux. It blocks until
// Accept takes the connection, so the mux's MaxConns also covers connections
// queued for a slow acceptor; ownership passes to the acceptor.
func (l *ConnListener) Handler() Handler {
	return func(ctx context.Context, conn net.Conn) {
		select {
		case <-l.done:
			conn.Close()
			return
		default:
		}
		select {
		case l.conns <- conn:
		case <-l.done:
			conn.Close()
		case <-ctx.Done():
			conn.Close()
		}
	}
}

// Accept waits for the next connection routed to this listener.
func (l *ConnListener) Accept() (net.Conn, error) {
	select {
	case <-l.done:
		return nil, l.closedErr()
	default:
	}
	select {
	case conn := <-l.conns:
		return conn, nil
	case <-l.done:
		return nil, l.closedErr()
	}
}

// Close stops Accept; connections routed afterwards are closed by the handler.
func (l *ConnListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

// Addr returns the address given to NewConnListener.
func (l *ConnListener) Addr() net.Addr { return l.addr }

// closedErr wraps net.ErrClosed so http.Server and errors.Is treat it as a
// closed listener.
func (l *ConnListener) closedErr() error {
	return &net.OpError{Op: "accept", Net: "mux", Addr: l.addr, Err: net.ErrClosed}
}
