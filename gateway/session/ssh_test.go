package session

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/certid"
)

func addSSHResources(t *testing.T, e *env) *types.Node {
	t.Helper()
	ctx := context.Background()
	node := &types.Node{Metadata: types.Metadata{Name: "node1", Labels: map[string]string{"env": "dev"}}, Spec: types.NodeSpec{Addr: "127.0.0.1:22"}}
	ops, err := types.NewRole("ops", types.RoleSpec{
		Options: types.RoleOptions{SSHPortForwarding: true},
		Allow: types.RoleConditions{
			Logins: []string{"{{internal.logins}}"},
			Nodes:  &types.ResourceConditions{Labels: types.Labels{"env": {"dev"}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	mfa, err := types.NewRole("mfa", types.RoleSpec{Options: types.RoleOptions{RequireSessionMFA: true}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []types.Resource{node, ops, mfa} {
		if err := r.CheckAndSetDefaults(); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	return node
}

func TestStartSSH(t *testing.T) {
	e, m := newEnv(t)
	node := addSSHResources(t, e)
	ctx := context.Background()
	alice := &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"ops"}, Traits: map[string][]string{"logins": {"alice"}}}

	s, err := m.StartSSH(ctx, alice, SSHRequest{Node: node, Login: "alice", ClientAddr: "127.0.0.1:5000", Details: map[string]string{"recording": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	if !s.SSH.PortForwarding || s.SSH.AgentForwarding {
		t.Errorf("decision = %+v, want port forwarding only", s.SSH)
	}
	starts := e.emitter.ofType(audit.EventSSHSessionStart)
	if len(starts) != 1 || !starts[0].Success || starts[0].Resource.Login != "alice" || starts[0].Resource.Name != "node1" ||
		starts[0].Details["recording"] != "x" || starts[0].SessionId != s.ID {
		t.Fatalf("start events = %v", starts)
	}
	if err := s.End(ctx, Stats{Details: map[string]string{"recordings": "x"}}); err != nil {
		t.Fatal(err)
	}
	ends := e.emitter.ofType(audit.EventSSHSessionEnd)
	if len(ends) != 1 || ends[0].Details["recordings"] != "x" || ends[0].SessionId != s.ID {
		t.Fatalf("end events = %v", ends)
	}
	if n := len(e.emitter.ofType(audit.EventDBSessionEnd)); n != 0 {
		t.Errorf("%d db.session.end events for an SSH session", n)
	}

	refusals := []struct {
		name string
		id   *certid.Identity
		req  SSHRequest
		want string
	}{
		{name: "login not allowed", id: alice, req: SSHRequest{Node: node, Login: "root"}, want: `no role allows login "root"`},
		{name: "unknown node", id: alice, req: SSHRequest{Target: "ghost", Login: "alice"}, want: `node "ghost" is not registered`},
		{name: "no login", id: alice, req: SSHRequest{Node: node}, want: "no login given"},
		{name: "route to a database", id: &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"ops"}, Traits: alice.Traits,
			Route: certid.Route{ResourceKind: types.KindDatabase, ResourceName: "pg1", DBUser: "x"}}, req: SSHRequest{Node: node, Login: "alice"}, want: "is bound to database"},
		{name: "session MFA", id: &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"ops", "mfa"}, Traits: alice.Traits},
			req: SSHRequest{Node: node, Login: "alice"}, want: "requires a per-session MFA check"},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.emitter.ofType(audit.EventSSHSessionStart))
			_, err := m.StartSSH(ctx, tt.id, tt.req)
			if !IsWhoError(err) || !strings.Contains(Message(err), tt.want) {
				t.Fatalf("err = %v, want who error %q", err, tt.want)
			}
			evs := e.emitter.ofType(audit.EventSSHSessionStart)
			if len(evs) != before+1 || evs[len(evs)-1].Success || !strings.Contains(evs[len(evs)-1].Error, tt.want) {
				t.Errorf("denied event not recorded: %v", evs[before:])
			}
		})
	}

	// With session MFA proved, the session starts.
	withMFA := &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"ops", "mfa"}, Traits: alice.Traits, MFADevice: "yubikey"}
	if _, err := m.StartSSH(ctx, withMFA, SSHRequest{Node: node, Login: "alice"}); err != nil {
		t.Errorf("session with a verified MFA device refused: %v", err)
	}
}

func TestStartSSHLockEndsSession(t *testing.T) {
	e, m := newEnv(t)
	node := addSSHResources(t, e)
	ctx := context.Background()
	alice := &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"ops"}, Traits: map[string][]string{"logins": {"alice"}}}
	s, err := m.StartSSH(ctx, alice, SSHRequest{Node: node, Login: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.End(ctx, Stats{})
	if _, err := e.locks.Add(ctx, types.LockTarget{User: "alice"}, 0, "laptop stolen", "admin"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("session not ended within 2s of the lock")
	}
	var w *WhoError
	if !errors.As(s.Err(), &w) || !strings.Contains(w.Message, "laptop stolen") {
		t.Errorf("Err = %v, want the lock message", s.Err())
	}
	if err := m.CheckLocks(ctx, alice); !IsWhoError(err) {
		t.Errorf("CheckLocks = %v, want a who error", err)
	}
}
