package ssh

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit/recording"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/identity/certid"
)

// fakeNode is a minimal SSH server standing in for OpenSSH: it trusts the
// SSH user CA, presents a host certificate from the SSH host CA, runs
// "exec" by echoing the command and exiting with status 7, and for a
// shell echoes input back until "exit".
type fakeNode struct {
	addr  string
	mu    sync.Mutex
	users []string
	keyID []string
}

func startFakeNode(t *testing.T, auth *ca.Authority, principals ...string) *fakeNode {
	t.Helper()
	hostSigner, _ := newKey(t)
	cert, err := auth.SignSSHHostCert(hostSigner.PublicKey(), principals[0], principals[1:], time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certSigner, err := gossh.NewCertSigner(cert, hostSigner)
	if err != nil {
		t.Fatal(err)
	}
	userCA := auth.SSHPublicKey(ca.SSHUserCA)
	n := &fakeNode{}
	checker := &gossh.CertChecker{IsUserAuthority: func(k gossh.PublicKey) bool { return bytes.Equal(k.Marshal(), userCA.Marshal()) }}
	cfg := &gossh.ServerConfig{PublicKeyCallback: func(md gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
		perms, err := checker.Authenticate(md, key)
		if err == nil {
			n.mu.Lock()
			n.users = append(n.users, md.User())
			n.keyID = append(n.keyID, key.(*gossh.Certificate).KeyId)
			n.mu.Unlock()
		}
		return perms, err
	}}
	cfg.AddHostKey(certSigner)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	n.addr = ln.Addr().String()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go n.serve(c, cfg)
		}
	}()
	return n
}

func (n *fakeNode) serve(c net.Conn, cfg *gossh.ServerConfig) {
	defer c.Close()
	_, chans, reqs, err := gossh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	go gossh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(gossh.UnknownChannelType, "no")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer ch.Close()
			for req := range creqs {
				switch req.Type {
				case "pty-req", "env", "window-change":
					_ = req.Reply(true, nil)
				case "exec":
					var e execReq
					_ = gossh.Unmarshal(req.Payload, &e)
					_ = req.Reply(true, nil)
					_, _ = io.WriteString(ch, "ran: "+e.Command+"\n")
					_, _ = io.WriteString(ch.Stderr(), "to stderr\n")
					_, _ = ch.SendRequest("exit-status", false, gossh.Marshal(struct{ Status uint32 }{7}))
					return
				case "shell":
					_ = req.Reply(true, nil)
					go func() {
						buf := make([]byte, 1024)
						var seen []byte
						for {
							k, err := ch.Read(buf)
							if k > 0 {
								_, _ = ch.Write(buf[:k])
								seen = append(seen, buf[:k]...)
								if bytes.Contains(seen, []byte("exit\n")) {
									_, _ = ch.SendRequest("exit-status", false, gossh.Marshal(struct{ Status uint32 }{0}))
									ch.Close()
									return
								}
							}
							if err != nil {
								return
							}
						}
					}()
				default:
					_ = req.Reply(false, nil)
				}
			}
		}()
	}
}

// gatewayClient serves one mux-less connection of the engine on a
// loopback listener and dials it as user with a certificate for id.
func gatewayClient(t *testing.T, e *testEnv, id *certid.Identity, user string) (*gossh.Client, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go e.srv.HandleConn(ctx, c)
		}
	}()
	signer, pub := newKey(t)
	cert, err := e.auth.SignSSHUserCert(id, pub, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certSigner, err := gossh.NewCertSigner(cert, signer)
	if err != nil {
		t.Fatal(err)
	}
	var banner strings.Builder
	clt, err := gossh.Dial("tcp", ln.Addr().String(), &gossh.ClientConfig{
		User: user, Auth: []gossh.AuthMethod{gossh.PublicKeys(certSigner)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(),
		BannerCallback:  func(m string) error { banner.WriteString(m); return nil },
		Timeout:         10 * time.Second,
	})
	if err != nil {
		return nil, errors.New(banner.String() + err.Error())
	}
	return clt, nil
}

func addRelayResources(t *testing.T, e *testEnv, nodeAddr string) {
	t.Helper()
	ctx := context.Background()
	node := &types.Node{Metadata: types.Metadata{Name: "fake", Labels: map[string]string{"env": "dev"}}, Spec: types.NodeSpec{Addr: nodeAddr}}
	role, err := types.NewRole("dev", types.RoleSpec{Allow: types.RoleConditions{
		Logins: []string{"{{internal.logins}}"},
		Nodes:  &types.ResourceConditions{Labels: types.Labels{"env": {"dev"}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []types.Resource{node, role} {
		if err := r.CheckAndSetDefaults(); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRelayExecAndRecording(t *testing.T) {
	e := newTestEnv(t)
	e.srv.cfg.Clock = time.Now
	node := startFakeNode(t, e.auth, "fake")
	addRelayResources(t, e, node.addr)
	alice := &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"dev"}, Traits: map[string][]string{"logins": {"deploy"}}}

	clt, err := gatewayClient(t, e, alice, "deploy@fake")
	if err != nil {
		t.Fatal(err)
	}
	defer clt.Close()

	// exec: output, stderr and exit status come back.
	sess, err := clt.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	sess.Stdout, sess.Stderr = &stdout, &stderr
	err = sess.Run("uname -a")
	var exitErr *gossh.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 7 {
		t.Errorf("Run = %v, want exit status 7", err)
	}
	if stdout.String() != "ran: uname -a\n" || stderr.String() != "to stderr\n" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	node.mu.Lock()
	if len(node.users) == 0 || node.users[0] != "deploy" || node.keyID[0] != "alice" {
		t.Errorf("node saw users %v key IDs %v, want deploy / alice", node.users, node.keyID)
	}
	node.mu.Unlock()

	// A pty shell is recorded: the replay is what the client saw.
	sess, err = clt.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.RequestPty("xterm", 30, 100, nil); err != nil {
		t.Fatal(err)
	}
	stdout.Reset()
	sess.Stdout = &stdout
	sess.Stdin = strings.NewReader("héllo €\nexit\n")
	if err := sess.Shell(); err != nil {
		t.Fatal(err)
	}
	if err := sess.Wait(); err != nil {
		t.Fatal(err)
	}
	clt.Close()
	var cast string
	deadline := time.Now().Add(10 * time.Second)
	for {
		matches, _ := filepath.Glob(filepath.Join(e.srv.cfg.RecordingsDir, "*"+recording.Ext))
		if len(matches) == 1 {
			b, _ := os.ReadFile(matches[0])
			cast = string(b)
			if strings.Contains(cast, "exit") {
				var played bytes.Buffer
				if err := recording.Play(context.Background(), &played, strings.NewReader(cast), recording.PlayOptions{Speed: -1}); err != nil {
					t.Fatal(err)
				}
				if played.String() != stdout.String() {
					t.Errorf("replay %q, session %q", played.String(), stdout.String())
				}
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no complete recording in %s: %q", e.srv.cfg.RecordingsDir, cast)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(cast, `"width":100,"height":30`) || !strings.Contains(cast, `"i", "h`) {
		t.Errorf("recording lacks the header size or the input:\n%s", cast)
	}
}

func TestRelayRefusals(t *testing.T) {
	e := newTestEnv(t)
	e.srv.cfg.Clock = time.Now
	node := startFakeNode(t, e.auth, "fake")
	addRelayResources(t, e, node.addr)
	alice := &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"dev"}, Traits: map[string][]string{"logins": {"deploy"}}}

	if _, err := gatewayClient(t, e, alice, "root@fake"); err == nil || !strings.Contains(err.Error(), `no role allows login "root"`) {
		t.Errorf("login not allowed: %v", err)
	}
	clt, err := gatewayClient(t, e, alice, "deploy@fake")
	if err != nil {
		t.Fatal(err)
	}
	defer clt.Close()
	if _, err := clt.Dial("tcp", node.addr); err == nil || !strings.Contains(err.Error(), "port forwarding is not allowed") {
		t.Errorf("port forwarding: %v", err)
	}
	sess, err := clt.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.Setenv("LD_PRELOAD", "/tmp/x.so"); err == nil {
		t.Error("LD_PRELOAD passed to the node")
	}
	if err := sess.RequestSubsystem("netconf"); err == nil {
		t.Error("subsystem netconf allowed")
	}
	if ok, _, err := clt.SendRequest("tcpip-forward", true, gossh.Marshal(struct {
		Addr string
		Port uint32
	}{"127.0.0.1", 0})); err != nil || ok {
		t.Errorf("remote forwarding: ok=%v err=%v", ok, err)
	}

	// A jump connection (no @) refuses a shell with a hint.
	jump, err := gatewayClient(t, e, alice, "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer jump.Close()
	if _, err := jump.NewSession(); err == nil || !strings.Contains(err.Error(), "name a node") {
		t.Errorf("session on a jump connection: %v", err)
	}
	_, err = jump.Dial("tcp", "ghost:22")
	var oce *gossh.OpenChannelError
	if !errors.As(err, &oce) || !strings.Contains(oce.Message, `no node named "ghost"`) {
		t.Errorf("jump to an unknown node: %v", err)
	}
}
