package access

import (
	"context"
	"strings"
	"testing"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/storage/badger"
)

type delegates map[string][]string

func (d delegates) Delegate(_ context.Context, agent *certid.Identity) ([]string, map[string][]string, error) {
	roles, ok := d[agent.OnBehalfOf]
	if !ok {
		return nil, nil, trace.AccessDenied("agent %q acts on behalf of %q, who is no longer a user", agent.Name, agent.OnBehalfOf)
	}
	return roles, map[string][]string{"db_users": {agent.OnBehalfOf}}, nil
}

func newResolver(t *testing.T, d Delegates) *Resolver {
	t.Helper()
	b, err := badger.New(context.Background(), badger.Config{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	store, err := resources.New(b)
	if err != nil {
		t.Fatal(err)
	}
	all := types.Labels{"*": {"*"}}
	for name, db := range map[string]*types.DatabaseConditions{
		// The agent's own role: any db user, writes, no approval.
		"agent-rw": {Labels: all, DBUsers: []string{"*"}, DBNames: []string{"*"}, Statements: "write"},
		// The person's: only their own db user (a trait), read.
		"person-ro": {Labels: all, DBUsers: []string{"{{internal.db_users}}"}, DBNames: []string{"*"}, Statements: "read"},
		// Templated agent role: the db user comes from the person's traits.
		"agent-self": {Labels: all, DBUsers: []string{"{{internal.db_users}}"}, DBNames: []string{"*"}},
	} {
		r, err := types.NewRole(name, types.RoleSpec{Allow: types.RoleConditions{Databases: db}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := store.Create(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	r, err := New(Config{Resources: store, Delegates: d})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestOnBehalfOfIntersects(t *testing.T) {
	ctx := context.Background()
	r := newResolver(t, delegates{"alice": {"person-ro"}})
	db, err := types.NewDatabase("pg1", nil, types.DatabaseSpec{Protocol: "postgres", URI: "localhost:5432"})
	if err != nil {
		t.Fatal(err)
	}
	agent := &certid.Identity{Name: "copilot", Kind: certid.KindAgent, Roles: []string{"agent-rw"}, OnBehalfOf: "alice"}
	c, _, err := r.Checker(ctx, agent, types.KindDatabase, "pg1")
	if err != nil {
		t.Fatal(err)
	}
	dec, err := c.CheckDatabase(db, "alice", "app")
	if err != nil || dec.Statements != "read" {
		t.Fatalf("agent as alice's db user: %+v %v; want read (the person's level)", dec, err)
	}
	if _, err := c.CheckDatabase(db, "postgres", "app"); err == nil || !strings.Contains(err.Error(), `acting on behalf of "alice"`) {
		t.Fatalf("agent beyond the person's access: %v", err)
	}
	// The agent is templated with the person's traits.
	self := &certid.Identity{Name: "copilot", Kind: certid.KindAgent, Roles: []string{"agent-self"}, OnBehalfOf: "alice"}
	c, _, err = r.Checker(ctx, self, types.KindDatabase, "pg1")
	if err != nil {
		t.Fatal(err)
	}
	if dec, err := c.CheckDatabase(db, "alice", "app"); err != nil || dec.Statements != "read" {
		t.Fatalf("templated agent role: %+v %v", dec, err)
	}
	// Nobody to act for: refused.
	gone := &certid.Identity{Name: "copilot", Kind: certid.KindAgent, Roles: []string{"agent-rw"}, OnBehalfOf: "ghost"}
	if _, _, err := r.Checker(ctx, gone, types.KindDatabase, "pg1"); !trace.IsAccessDenied(err) {
		t.Fatalf("agent of a deleted person: %v", err)
	}
	// Without a delegate source, on_behalf_of is refused, never ignored.
	if _, _, err := newResolver(t, nil).Checker(ctx, agent, types.KindDatabase, "pg1"); !trace.IsAccessDenied(err) {
		t.Fatalf("on_behalf_of without delegates: %v", err)
	}
	// A bot without a person is its roles alone.
	bot := &certid.Identity{Name: "ci", Kind: certid.KindBot, Roles: []string{"agent-rw"}}
	c, _, err = r.Checker(ctx, bot, types.KindDatabase, "pg1")
	if err != nil {
		t.Fatal(err)
	}
	if dec, err := c.CheckDatabase(db, "postgres", "app"); err != nil || dec.Statements != "write" {
		t.Fatalf("bot: %+v %v", dec, err)
	}
	// Requests without a requests service are refused.
	req := &certid.Identity{Name: "bob", Kind: certid.KindHuman, Roles: []string{"person-ro"}, AccessRequests: []string{"r1"}}
	if _, _, err := r.Checker(ctx, req, "", ""); !trace.IsAccessDenied(err) {
		t.Fatalf("access requests without a requests service: %v", err)
	}
}
