package ssh

import (
	"context"
	"net"
	"strconv"
	"sync"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// directTCPIP is the payload of a direct-tcpip channel open.
type directTCPIP struct {
	Host     string
	Port     uint32
	OrigHost string
	OrigPort uint32
}

// jumpHint tells a client that opened a shell on a jump connection how
// to name a node.
const jumpHint = "sigil: name a node to log in to: sigil ssh LOGIN@NODE, ssh -J GATEWAY LOGIN@NODE, or ssh -p PORT LOGIN@NODE@GATEWAY"

// serveJump serves a connection whose user name named no node: each
// direct-tcpip channel to a registered node becomes an inner SSH
// connection, authenticated and authorized on its own, whose host
// certificate names that node.
func (s *Server) serveJump(ctx context.Context, st *connState, client *gossh.ServerConn, chans <-chan gossh.NewChannel, reqs <-chan *gossh.Request) {
	go gossh.DiscardRequests(reqs)
	sem := make(chan struct{}, maxJumpsPerConn)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		var nc gossh.NewChannel
		var ok bool
		select {
		case nc, ok = <-chans:
		case <-ctx.Done():
			return
		}
		if !ok {
			return
		}
		if nc.ChannelType() != chanDirectTCPIP {
			_ = nc.Reject(gossh.Prohibited, jumpHint)
			continue
		}
		var dst directTCPIP
		if err := gossh.Unmarshal(nc.ExtraData(), &dst); err != nil {
			_ = nc.Reject(gossh.ConnectionFailed, "sigil: malformed direct-tcpip request")
			continue
		}
		node, err := s.resolveNode(ctx, dst.Host, int(dst.Port))
		if err != nil {
			s.log.WarnContext(ctx, "Looking up a node failed.", "host", dst.Host, "error", err)
			_ = nc.Reject(gossh.ConnectionFailed, "sigil: cannot look up nodes right now; try again")
			continue
		}
		if node == nil {
			_ = nc.Reject(gossh.Prohibited, "sigil: no node named "+strconv.Quote(dst.Host)+" or at "+net.JoinHostPort(dst.Host, strconv.Itoa(int(dst.Port)))+" is registered; see \"sigil ls\"")
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			_ = nc.Reject(gossh.ResourceShortage, "sigil: too many connections through this jump connection")
			continue
		}
		ch, chReqs, err := nc.Accept()
		if err != nil {
			<-sem
			continue
		}
		go gossh.DiscardRequests(chReqs)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			conn := &chanConn{Channel: ch, local: client.LocalAddr(), remote: client.RemoteAddr()}
			defer conn.Close()
			s.serve(ctx, conn, st.clientAddr, &jumpTarget{node: node, host: dst.Host})
		}()
	}
}

// chanConn lets an inner SSH connection run over a channel. Deadlines are
// not supported: serve bounds the inner handshake with a timer instead.
type chanConn struct {
	gossh.Channel
	local, remote net.Addr
}

func (c *chanConn) LocalAddr() net.Addr              { return c.local }
func (c *chanConn) RemoteAddr() net.Addr             { return c.remote }
func (c *chanConn) SetDeadline(time.Time) error      { return nil }
func (c *chanConn) SetReadDeadline(time.Time) error  { return nil }
func (c *chanConn) SetWriteDeadline(time.Time) error { return nil }
