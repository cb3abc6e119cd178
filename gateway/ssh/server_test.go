package ssh

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/gateway/session"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/locks"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/storage/badger"
)

type testEnv struct {
	auth  *ca.Authority
	store *resources.Store
	srv   *Server
	now   time.Time
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	ctx := context.Background()
	backend, err := badger.New(ctx, badger.Config{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	sealer, err := ca.NewFileSealer(filepath.Join(t.TempDir(), "seal.key"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	auth, err := ca.New(ctx, ca.Config{Backend: backend, Sealer: sealer, ClusterName: "test", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	store, err := resources.New(backend)
	if err != nil {
		t.Fatal(err)
	}
	lockSvc, err := locks.New(store, nil)
	if err != nil {
		t.Fatal(err)
	}
	sessions, err := session.New(session.Config{Authority: auth, Resources: store, Locks: lockSvc, Emitter: audit.DiscardEmitter{}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{auth: auth, store: store, now: time.Now()}
	e.srv, err = New(Config{
		Sessions: sessions, Authority: auth, Resources: store, ClusterName: "test",
		RecordingsDir: t.TempDir(), HostNames: []string{"localhost"}, Logger: log,
		Clock: func() time.Time { return e.now },
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*types.Node{
		{Metadata: types.Metadata{Name: "node1"}, Spec: types.NodeSpec{Addr: "10.0.0.1:22"}},
		{Metadata: types.Metadata{Name: "node2"}, Spec: types.NodeSpec{Addr: "10.0.0.2:2222"}},
		{Metadata: types.Metadata{Name: "twin-a"}, Spec: types.NodeSpec{Addr: "10.0.0.3:22"}},
		{Metadata: types.Metadata{Name: "twin-b"}, Spec: types.NodeSpec{Addr: "10.0.0.3:2200"}},
	} {
		if err := n.CheckAndSetDefaults(); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Create(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func TestResolveNode(t *testing.T) {
	e := newTestEnv(t)
	ctx := context.Background()
	tests := []struct {
		host string
		port int
		want string
	}{
		{host: "node1", port: 22, want: "node1"},
		{host: "node1", port: 0, want: "node1"},
		// A name matches whatever port ssh asked for (ssh -J uses 22).
		{host: "node2", port: 22, want: "node2"},
		{host: "node1.test", port: 22, want: "node1"},
		{host: "10.0.0.2", port: 2222, want: "node2"},
		{host: "10.0.0.2", port: 0, want: "node2"},
		{host: "10.0.0.2", port: 22, want: ""},
		{host: "10.0.0.3", port: 2200, want: "twin-b"},
		// Two nodes share the host: without a port it is ambiguous.
		{host: "10.0.0.3", port: 0, want: ""},
		{host: "ghost", port: 22, want: ""},
		{host: "node1.other", port: 22, want: ""},
		{host: "", port: 22, want: ""},
	}
	for _, tt := range tests {
		n, err := e.srv.resolveNode(ctx, tt.host, tt.port)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if n != nil {
			got = n.Metadata.Name
		}
		if got != tt.want {
			t.Errorf("resolveNode(%q, %d) = %q, want %q", tt.host, tt.port, got, tt.want)
		}
	}
}

func newKey(t *testing.T) (gossh.Signer, gossh.PublicKey) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s, s.PublicKey()
}

func TestCheckNodeHostKey(t *testing.T) {
	e := newTestEnv(t)
	node := &types.Node{Metadata: types.Metadata{Name: "node1"}, Spec: types.NodeSpec{Addr: "10.0.0.1:22"}}
	_, hostPub := newKey(t)
	sign := func(principals ...string) *gossh.Certificate {
		c, err := e.auth.SignSSHHostCert(hostPub, principals[0], principals[1:], time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	foreignCA, _ := newKey(t)
	foreign := &gossh.Certificate{Key: hostPub, CertType: gossh.HostCert, ValidPrincipals: []string{"node1"},
		ValidAfter: uint64(time.Now().Add(-time.Minute).Unix()), ValidBefore: uint64(time.Now().Add(time.Hour).Unix())}
	if err := foreign.SignCert(rand.Reader, foreignCA); err != nil {
		t.Fatal(err)
	}
	userCert, err := e.auth.SignSSHUserCert(&certid.Identity{Name: "alice", Kind: certid.KindHuman}, hostPub, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		key  gossh.PublicKey
		want string
	}{
		{name: "by node name", key: sign("node1")},
		{name: "by address host", key: sign("10.0.0.1")},
		{name: "plain key", key: hostPub, want: "plain host key"},
		{name: "other CA", key: foreign, want: "signed by another CA"},
		{name: "other principal", key: sign("node9", "10.9.9.9"), want: `name "node1" or "10.0.0.1"`},
		{name: "user cert", key: userCert, want: "user certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := e.srv.checkNodeHostKey(node, tt.key)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestCheckKey(t *testing.T) {
	e := newTestEnv(t)
	st := &connState{s: e.srv, ctx: context.Background()}
	_, pub := newKey(t)
	id := &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"dev"}, Traits: map[string][]string{"logins": {"alice"}}}
	cert, err := e.auth.SignSSHUserCert(id, pub, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	perms, err := st.checkKey(nil, cert)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := perms.ExtraData[idKey{}].(*certid.Identity)
	if got == nil || got.Name != "alice" || got.Roles[0] != "dev" {
		t.Errorf("identity = %+v", got)
	}

	// Plain keys and other CAs' certificates are refused without a banner
	// (clients try every key they hold).
	var banner *gossh.BannerError
	if _, err := st.checkKey(nil, pub); err == nil || errors.As(err, &banner) {
		t.Errorf("plain key: %v", err)
	}
	hostCert, err := e.auth.SignSSHHostCert(pub, "h", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.checkKey(nil, hostCert); err == nil {
		t.Error("host certificate accepted as a user certificate")
	}

	// Expired: refused with a banner saying so.
	e.now = e.now.Add(2 * time.Hour)
	_, err = st.checkKey(nil, cert)
	if !errors.As(err, &banner) || !strings.Contains(banner.Message, "expired") {
		t.Errorf("expired cert: %v", err)
	}
}

func TestHostKeysCache(t *testing.T) {
	e := newTestEnv(t)
	a, err := e.srv.hostKeys.get([]string{"node1", "node1.test", "node1"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.srv.hostKeys.get([]string{"node1", "node1.test"})
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Error("same names signed twice")
	}
	cert, ok := a.PublicKey().(*gossh.Certificate)
	if !ok || cert.CertType != gossh.HostCert || strings.Join(cert.ValidPrincipals, ",") != "node1,node1.test" {
		t.Errorf("host cert = %+v", a.PublicKey())
	}
	if _, err := e.srv.hostKeys.get([]string{""}); err == nil {
		t.Error("host certificate without names signed")
	}
}

func TestEnvAllowed(t *testing.T) {
	for name, want := range map[string]bool{"LANG": true, "LC_ALL": true, "TZ": true, "LD_PRELOAD": false, "PATH": false, "BASH_ENV": false} {
		if got := envAllowed(name); got != want {
			t.Errorf("envAllowed(%s) = %v, want %v", name, got, want)
		}
	}
	if recordingID("x", 1) != "x" || recordingID("x", 3) != "x-3" {
		t.Error("recordingID")
	}
}
