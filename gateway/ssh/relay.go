package ssh

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gravitational/trace"
	gossh "golang.org/x/crypto/ssh"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/gateway/session"
)

// Channel types and requests of the SSH connection protocol (RFC 4254)
// and OpenSSH extensions.
const (
	chanSession        = "session"
	chanDirectTCPIP    = "direct-tcpip"
	chanForwardedTCPIP = "forwarded-tcpip"
	chanAgent          = "auth-agent@openssh.com"

	reqTCPIPForward       = "tcpip-forward"
	reqCancelTCPIPForward = "cancel-tcpip-forward"
	reqAgent              = "auth-agent-req@openssh.com"
)

// terminateGrace is how long the lock message may take to reach the
// client before the connection is closed under it.
const terminateGrace = 500 * time.Millisecond

// relay carries one authorized client connection to its node.
type relay struct {
	s      *Server
	st     *connState
	sess   *session.Session
	client gossh.Conn
	up     *upstream
	log    *slog.Logger

	wg       sync.WaitGroup
	bytesIn  atomic.Int64
	bytesOut atomic.Int64
	execs    atomic.Int64
	// agentAsked is set once a session channel was allowed agent
	// forwarding; only then may the node open agent channels.
	agentAsked atomic.Bool

	mu         sync.Mutex
	sessions   map[*sessionChannel]struct{}
	recordings []string
	nRecorded  int
}

// serveSession relays an authorized connection (st.sess set) until
// either side ends, a lock hits the identity or the gateway stops.
func (s *Server) serveSession(ctx context.Context, st *connState, client *gossh.ServerConn, chans <-chan gossh.NewChannel, reqs <-chan *gossh.Request) {
	sess := st.sess
	log := s.log.With("session_id", sess.ID, "user", sess.Identity.Name, "node", sess.Node.Metadata.Name, "login", sess.Login)
	up, err := s.dialNode(ctx, sess)
	if err != nil {
		log.InfoContext(ctx, "Connecting to the node failed.", "error", err)
		refuseFirstChannel(chans, reqs, gossh.ConnectionFailed, "sigil: "+trace.UserMessage(err))
		st.end(session.Stats{Err: err}, nil)
		return
	}
	defer up.conn.Close()
	r := &relay{s: s, st: st, sess: sess, client: client, up: up, log: log, sessions: map[*sessionChannel]struct{}{}}
	upDone := make(chan struct{})
	go func() {
		_ = up.conn.Wait()
		close(upDone)
	}()
	go gossh.DiscardRequests(up.reqs)
	// Counted, so that the channels it starts are added to wg while the
	// count is above zero (before serveSession waits).
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.upstreamChannels()
	}()

	var endErr error
loop:
	for {
		select {
		case nc, ok := <-chans:
			if !ok {
				break loop
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.clientChannel(nc)
			}()
		case req, ok := <-reqs:
			if !ok {
				reqs = nil
				continue
			}
			r.globalRequest(req)
		case <-upDone:
			break loop
		case <-sess.Done():
			endErr = sess.Err()
			r.terminate("session terminated: " + session.Message(endErr))
			break loop
		case <-ctx.Done():
			endErr = trace.ConnectionProblem(ctx.Err(), "gateway shutting down")
			r.terminate("the gateway is shutting down")
			break loop
		}
	}
	_ = client.Close()
	_ = up.conn.Close()
	r.wg.Wait()
	r.mu.Lock()
	recs := append([]string(nil), r.recordings...)
	r.mu.Unlock()
	st.end(session.Stats{BytesIn: r.bytesIn.Load(), BytesOut: r.bytesOut.Load(), Statements: r.execs.Load(), Err: endErr}, recs)
}

// refuseFirstChannel tells a client that got no upstream why: OpenSSH
// prints a rejected channel's message ("open failed: ...").
func refuseFirstChannel(chans <-chan gossh.NewChannel, reqs <-chan *gossh.Request, reason gossh.RejectionReason, msg string) {
	go gossh.DiscardRequests(reqs)
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case nc, ok := <-chans:
		if ok {
			_ = nc.Reject(reason, msg)
		}
	case <-timer.C:
	}
}

// terminate tells every open session channel why the session ends, then
// lets serveSession close the connections.
func (r *relay) terminate(msg string) {
	r.log.Info("Terminating SSH session.", "reason", msg)
	r.mu.Lock()
	var chans []*sessionChannel
	for sc := range r.sessions {
		chans = append(chans, sc)
	}
	r.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, sc := range chans {
			_, _ = sc.client.Stderr().Write([]byte("\r\nsigil: " + msg + "\r\n"))
		}
	}()
	// A client that does not read must not hold the session open.
	timer := time.NewTimer(terminateGrace)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
	}
}

func (r *relay) globalRequest(req *gossh.Request) {
	switch req.Type {
	case reqTCPIPForward, reqCancelTCPIPForward:
		if !r.sess.SSH.PortForwarding {
			r.log.Info("Refused remote port forwarding.", "request", req.Type)
			_ = req.Reply(false, nil)
			return
		}
		ok, payload, err := r.up.conn.SendRequest(req.Type, req.WantReply, req.Payload)
		if err != nil {
			ok = false
		}
		_ = req.Reply(ok, payload)
	default:
		// keepalive@openssh.com and the like: a failure reply still
		// proves the connection alive.
		_ = req.Reply(false, nil)
	}
}

func (r *relay) clientChannel(nc gossh.NewChannel) {
	switch nc.ChannelType() {
	case chanSession:
		r.sessionChannel(nc)
	case chanDirectTCPIP:
		if !r.sess.SSH.PortForwarding {
			r.log.Info("Refused port forwarding.")
			_ = nc.Reject(gossh.Prohibited, "sigil: port forwarding is not allowed by your roles (role option ssh_port_forwarding)")
			return
		}
		r.forward(nc, r.up.conn, &r.bytesIn, &r.bytesOut)
	default:
		_ = nc.Reject(gossh.UnknownChannelType, "sigil: channel type "+nc.ChannelType()+" is not supported")
	}
}

// upstreamChannels handles channels the node opens: remote forwards and
// agent requests, each only when allowed.
func (r *relay) upstreamChannels() {
	for nc := range r.up.chans {
		switch {
		case nc.ChannelType() == chanForwardedTCPIP && r.sess.SSH.PortForwarding:
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.forward(nc, r.client, &r.bytesOut, &r.bytesIn)
			}()
		case nc.ChannelType() == chanAgent && r.sess.SSH.AgentForwarding && r.agentAsked.Load():
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.forward(nc, r.client, &r.bytesOut, &r.bytesIn)
			}()
		default:
			_ = nc.Reject(gossh.Prohibited, "sigil: not allowed")
		}
	}
}

// forward opens nc's twin on the other side and pipes the two channels;
// in counts bytes from nc's opener, out bytes towards it.
func (r *relay) forward(nc gossh.NewChannel, other gossh.Conn, in, out *atomic.Int64) {
	dst, dstReqs, err := other.OpenChannel(nc.ChannelType(), nc.ExtraData())
	if err != nil {
		var oce *gossh.OpenChannelError
		if errors.As(err, &oce) {
			_ = nc.Reject(oce.Reason, oce.Message)
		} else {
			_ = nc.Reject(gossh.ConnectionFailed, "sigil: "+err.Error())
		}
		return
	}
	src, srcReqs, err := nc.Accept()
	if err != nil {
		dst.Close()
		return
	}
	go gossh.DiscardRequests(srcReqs)
	go gossh.DiscardRequests(dstReqs)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		n, _ := io.Copy(dst, src)
		in.Add(n)
		_ = dst.CloseWrite()
	}()
	go func() {
		defer wg.Done()
		n, _ := io.Copy(src, dst)
		out.Add(n)
		_ = src.CloseWrite()
	}()
	wg.Wait()
	src.Close()
	dst.Close()
}

// emitExec records an ssh.exec event (durable: a command on a host is
// rare and exactly what an investigation needs).
func (r *relay) emitExec(kind, command string, pty bool) error {
	r.execs.Add(1)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.st.ctx), 10*time.Second)
	defer cancel()
	ev := &audit.Event{
		Type:      audit.EventSSHExec,
		Success:   true,
		Statement: command,
		Details:   map[string]string{"kind": kind, "pty": boolString(pty)},
	}
	return trace.Wrap(r.sess.Emit(ctx, ev))
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

// nextRecordingID reserves the name of the next recording of the session.
func (r *relay) nextRecordingID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nRecorded++
	id := recordingID(r.sess.ID, r.nRecorded)
	r.recordings = append(r.recordings, id)
	return id
}

// dropRecording forgets a reserved recording that could not start.
func (r *relay) dropRecording(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, x := range r.recordings {
		if x == id {
			r.recordings = append(r.recordings[:i], r.recordings[i+1:]...)
			return
		}
	}
}

func (r *relay) addSession(sc *sessionChannel) {
	r.mu.Lock()
	r.sessions[sc] = struct{}{}
	r.mu.Unlock()
}

func (r *relay) removeSession(sc *sessionChannel) {
	r.mu.Lock()
	delete(r.sessions, sc)
	r.mu.Unlock()
}

// envAllowed lists the environment a client may set on the node: locale
// and time zone only, so that nothing like LD_PRELOAD or PATH slips past
// the node's own AcceptEnv.
func envAllowed(name string) bool {
	switch {
	case name == "LANG", name == "LANGUAGE", name == "TZ", name == "COLORTERM":
		return true
	case strings.HasPrefix(name, "LC_"):
		return true
	}
	return false
}
