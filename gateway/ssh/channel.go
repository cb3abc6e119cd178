package ssh

import (
	"io"
	"sync"
	"sync/atomic"

	"github.com/gravitational/trace"
	gossh "golang.org/x/crypto/ssh"

	"github.com/sigilhq/sigil/audit/recording"
)

// Payloads of session channel requests (RFC 4254 section 6).
type ptyReq struct {
	Term   string
	Cols   uint32
	Rows   uint32
	Width  uint32
	Height uint32
	Modes  string
}

type windowChange struct {
	Cols   uint32
	Rows   uint32
	Width  uint32
	Height uint32
}

type envReq struct {
	Name  string
	Value string
}

type execReq struct {
	Command string
}

type subsystemReq struct {
	Name string
}

// sessionChannel is one client session channel and its twin on the node.
type sessionChannel struct {
	r      *relay
	client gossh.Channel
	up     gossh.Channel
	pty    bool
	term   string
	rec    atomic.Pointer[recording.Recorder]
	recID  string
}

func (r *relay) sessionChannel(nc gossh.NewChannel) {
	up, upReqs, err := r.up.conn.OpenChannel(chanSession, nil)
	if err != nil {
		_ = nc.Reject(gossh.ConnectionFailed, "sigil: the node refused a session channel: "+err.Error())
		return
	}
	client, clientReqs, err := nc.Accept()
	if err != nil {
		up.Close()
		return
	}
	sc := &sessionChannel{r: r, client: client, up: up}
	r.addSession(sc)
	defer r.removeSession(sc)

	// input ends when the client closes its side; output (stdout and
	// stderr) when the node does.
	var input, output sync.WaitGroup
	input.Add(1)
	go func() {
		defer input.Done()
		n, _ := io.Copy(up, &tap{r: client, rec: &sc.rec, input: true})
		r.bytesIn.Add(n)
		_ = up.CloseWrite()
	}()
	output.Add(2)
	go func() {
		defer output.Done()
		n, _ := io.Copy(client, &tap{r: up, rec: &sc.rec})
		r.bytesOut.Add(n)
	}()
	go func() {
		defer output.Done()
		n, _ := io.Copy(client.Stderr(), up.Stderr())
		r.bytesOut.Add(n)
	}()

	// The node's requests (exit-status, exit-signal, eow@openssh.com) go
	// to the client; the loop ends when the node closes the channel.
	upDone := make(chan struct{})
	go func() {
		defer close(upDone)
		for req := range upReqs {
			ok, _ := client.SendRequest(req.Type, req.WantReply, req.Payload)
			if req.WantReply {
				_ = req.Reply(ok, nil)
			}
		}
	}()
	clientDone := make(chan struct{})
	go func() {
		defer close(clientDone)
		for req := range clientReqs {
			sc.handleRequest(req)
		}
	}()

	select {
	case <-upDone:
		// All output must reach the client before its channel closes.
		output.Wait()
		_ = client.CloseWrite()
		client.Close()
		<-clientDone
	case <-clientDone:
		up.Close()
		client.Close()
		<-upDone
		output.Wait()
	}
	input.Wait()
	if rec := sc.rec.Load(); rec != nil {
		if err := rec.Close(); err != nil {
			r.log.Warn("Writing the session recording failed.", "recording", sc.recID, "error", err)
		}
	}
}

// handleRequest applies policy to a client request and forwards what is
// allowed to the node.
func (sc *sessionChannel) handleRequest(req *gossh.Request) {
	r := sc.r
	forward := func() {
		ok, err := sc.up.SendRequest(req.Type, req.WantReply, req.Payload)
		if err != nil {
			ok = false
		}
		if req.WantReply {
			_ = req.Reply(ok, nil)
		}
	}
	refuse := func(msg string) {
		if msg != "" {
			r.log.Info("Refused session request.", "request", req.Type, "reason", msg)
			_, _ = sc.client.Stderr().Write([]byte("sigil: " + msg + "\r\n"))
		}
		if req.WantReply {
			_ = req.Reply(false, nil)
		}
	}
	switch req.Type {
	case "pty-req":
		var p ptyReq
		if err := gossh.Unmarshal(req.Payload, &p); err != nil {
			refuse("malformed pty-req")
			return
		}
		sc.pty, sc.term = true, p.Term
		sc.startRecording(int(p.Cols), int(p.Rows))
		forward()
	case "window-change":
		var w windowChange
		if err := gossh.Unmarshal(req.Payload, &w); err == nil {
			if rec := sc.rec.Load(); rec != nil {
				rec.Resize(int(w.Cols), int(w.Rows))
			}
		}
		forward()
	case "env":
		var e envReq
		if err := gossh.Unmarshal(req.Payload, &e); err != nil || !envAllowed(e.Name) {
			refuse("")
			return
		}
		forward()
	case "shell":
		forward()
	case "exec":
		var e execReq
		if err := gossh.Unmarshal(req.Payload, &e); err != nil {
			refuse("malformed exec request")
			return
		}
		if err := r.emitExec("exec", e.Command, sc.pty); err != nil {
			r.log.Error("Refusing a command: audit log unavailable.", "error", err)
			refuse("the audit log is unavailable, so no command can run; try again later")
			return
		}
		forward()
	case "subsystem":
		var s subsystemReq
		if err := gossh.Unmarshal(req.Payload, &s); err != nil {
			refuse("malformed subsystem request")
			return
		}
		if s.Name != "sftp" {
			refuse("subsystem " + s.Name + " is not supported (only sftp)")
			return
		}
		if err := r.emitExec("subsystem", s.Name, sc.pty); err != nil {
			r.log.Error("Refusing sftp: audit log unavailable.", "error", err)
			refuse("the audit log is unavailable, so no command can run; try again later")
			return
		}
		forward()
	case "signal", "break":
		forward()
	case reqAgent:
		if !r.sess.SSH.AgentForwarding {
			refuse("agent forwarding is not allowed by your roles (role option ssh_agent_forwarding)")
			return
		}
		r.agentAsked.Store(true)
		forward()
	case "x11-req":
		refuse("X11 forwarding is not supported")
	default:
		refuse("")
	}
}

// startRecording records the channel from its pty request on; a failure
// to start only costs the recording, never the session.
func (sc *sessionChannel) startRecording(cols, rows int) {
	if sc.rec.Load() != nil {
		return
	}
	r := sc.r
	id := r.nextRecordingID()
	sess := r.sess
	rec, err := recording.New(recording.Config{
		Dir: r.s.cfg.RecordingsDir,
		ID:  id,
		Header: recording.Header{
			Width:  cols,
			Height: rows,
			Title:  sess.Identity.Name + " as " + sess.Login + "@" + sess.Node.Metadata.Name,
			Env:    map[string]string{"TERM": sc.term},
		},
		Logger: r.log,
	})
	if err != nil {
		r.dropRecording(id)
		r.log.Error("Cannot record the session.", "error", trace.Wrap(err))
		return
	}
	sc.recID = id
	sc.rec.Store(rec)
}

// tap records what passes through a reader once a recording runs.
type tap struct {
	r     io.Reader
	rec   *atomic.Pointer[recording.Recorder]
	input bool
}

func (t *tap) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		if rec := t.rec.Load(); rec != nil {
			if t.input {
				rec.Input(p[:n])
			} else {
				rec.Output(p[:n])
			}
		}
	}
	return n, err
}
