package apiserver_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
)

func TestAuditSearchOwnEventsOnly(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.admin()
	e.addUser(admin, "alice", []string{types.RoleAccess}, nil)
	e.addUser(admin, "bob", []string{types.RoleAccess}, nil)
	alice := e.loginClient("alice")
	e.loginClient("bob")

	resp, err := alice.Audit.Search(ctx, connect.NewRequest(&sigilv1.SearchAuditRequest{Types: []string{audit.EventUserLogin}}))
	must(t, err)
	if len(resp.Msg.Events) == 0 {
		t.Fatal("alice sees none of her own logins")
	}
	for _, ev := range resp.Msg.Events {
		if ev.GetIdentity().GetUser() != "alice" {
			t.Fatalf("alice sees %s's event", ev.GetIdentity().GetUser())
		}
	}
	_, err = alice.Audit.Search(ctx, connect.NewRequest(&sigilv1.SearchAuditRequest{User: "bob"}))
	requireCode(t, err, connect.CodePermissionDenied, "only read your own")

	// The admin sees everyone, newest first.
	resp, err = admin.Audit.Search(ctx, connect.NewRequest(&sigilv1.SearchAuditRequest{Types: []string{audit.EventUserLogin}}))
	must(t, err)
	users := map[string]bool{}
	for i, ev := range resp.Msg.Events {
		users[ev.GetIdentity().GetUser()] = true
		if i > 0 && ev.Seq > resp.Msg.Events[i-1].Seq {
			t.Fatalf("events not newest first: %d after %d", ev.Seq, resp.Msg.Events[i-1].Seq)
		}
	}
	if !users["alice"] || !users["bob"] {
		t.Fatalf("admin search users = %v", users)
	}

	// Export is for audit readers only.
	stream, err := alice.Audit.Export(ctx, connect.NewRequest(&sigilv1.ExportAuditRequest{}))
	if err == nil {
		for stream.Receive() {
		}
		err = stream.Err()
	}
	requireCode(t, err, connect.CodePermissionDenied, `"list" on "audit"`)
}

func TestAuditWatchStreamsNewEvents(t *testing.T) {
	e := newEnv(t)
	admin := e.admin()
	e.addUser(admin, "alice", []string{types.RoleAccess}, nil)
	e.addUser(admin, "bob", []string{types.RoleAccess}, nil)
	alice := e.loginClient("alice")

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	adminStream, err := admin.Audit.Watch(ctx, connect.NewRequest(&sigilv1.WatchAuditRequest{Types: []string{audit.EventUserLogin}}))
	must(t, err)
	aliceStream, err := alice.Audit.Watch(ctx, connect.NewRequest(&sigilv1.WatchAuditRequest{}))
	must(t, err)

	// The watches are live once their first (empty) message arrives.
	for _, st := range []*connect.ServerStreamForClient[sigilv1.WatchAuditResponse]{adminStream, aliceStream} {
		if !st.Receive() || st.Msg().Event != nil {
			t.Fatalf("watch did not start with its empty message: %v", st.Err())
		}
	}
	for i := 0; i < 3; i++ {
		e.loginClient("bob")
		e.loginClient("alice")
	}
	seen := map[string]bool{}
	for !(seen["alice"] && seen["bob"]) {
		if !adminStream.Receive() {
			t.Fatalf("admin watch ended: %v", adminStream.Err())
		}
		ev := adminStream.Msg().Event
		if ev == nil {
			continue // the "watch is live" message
		}
		if ev.Type != audit.EventUserLogin {
			t.Fatalf("admin watch for user.login got %s", ev.Type)
		}
		seen[ev.GetIdentity().GetUser()] = true
	}
	for i := 0; i < 3; {
		if !aliceStream.Receive() {
			t.Fatalf("alice's watch ended: %v", aliceStream.Err())
		}
		ev := aliceStream.Msg().Event
		if ev == nil {
			continue
		}
		i++
		if u := ev.GetIdentity().GetUser(); u != "alice" {
			t.Fatalf("alice's watch shows %s's event", u)
		}
	}
}
