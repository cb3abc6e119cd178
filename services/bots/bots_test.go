package bots

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/locks"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/storage/badger"
	"github.com/sigilhq/sigil/services/users"
)

type env struct {
	svc   *Service
	store *resources.Store
	locks *locks.Service
	now   time.Time
}

func newEnv(t *testing.T) *env {
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
	// Real time: the backend expires tokens by the wall clock.
	e := &env{store: store, now: time.Now()}
	clock := func() time.Time { return e.now }
	if e.locks, err = locks.New(store, clock); err != nil {
		t.Fatal(err)
	}
	u, err := users.New(users.Config{Backend: b, Resources: store, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	if e.svc, err = New(Config{Backend: b, Resources: store, Locks: e.locks, Users: u, Clock: clock}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) token(t *testing.T, secret string, spec types.TokenSpec, ttl time.Duration) {
	t.Helper()
	exp := e.now.Add(ttl)
	tok := &types.Token{Metadata: types.Metadata{Name: secret, Expires: &exp}, Spec: spec}
	if _, err := e.store.Create(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
}

func TestJoinTokenWorksOnce(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.token(t, "tok1", types.TokenSpec{Kind: "bot", BotName: "ci", Roles: []string{"deployer"}}, time.Hour)
	b, err := e.svc.Join(ctx, "tok1")
	if err != nil {
		t.Fatal(err)
	}
	if b.Name != "ci" || b.Kind != "bot" || b.Generation != 1 || b.Roles[0] != "deployer" {
		t.Fatalf("joined bot = %+v", b)
	}
	if id := b.Identity(); id.Generation != 1 || id.Kind != certid.KindBot {
		t.Fatalf("identity = %+v", id)
	}
	if _, err := e.svc.Join(ctx, "tok1"); !trace.IsAccessDenied(err) || !strings.Contains(err.Error(), "unknown, already used or expired") {
		t.Fatalf("second join with the same token: %v", err)
	}
	if _, err := e.svc.Join(ctx, "nope"); !trace.IsAccessDenied(err) {
		t.Fatalf("unknown token: %v", err)
	}
	if _, err := e.svc.Join(ctx, "../../x"); !trace.IsAccessDenied(err) {
		t.Fatalf("malformed token: %v", err)
	}
	e.token(t, "tok2", types.TokenSpec{Kind: "bot", BotName: "late", Roles: []string{"r"}}, time.Minute)
	e.now = e.now.Add(2 * time.Minute)
	if _, err := e.svc.Join(ctx, "tok2"); !trace.IsAccessDenied(err) {
		t.Fatalf("expired token: %v", err)
	}
}

func TestConcurrentJoinsOneWins(t *testing.T) {
	e := newEnv(t)
	e.token(t, "race", types.TokenSpec{Kind: "bot", BotName: "ci", Roles: []string{"r"}}, time.Hour)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.svc.Join(context.Background(), "race"); err == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ok != 1 {
		t.Fatalf("%d joins succeeded with one token, want 1", ok)
	}
}

func TestRenewGenerations(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.token(t, "t", types.TokenSpec{Kind: "agent", BotName: "copilot", Roles: []string{"r"}}, time.Hour)
	b, err := e.svc.Join(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	id := b.Identity()
	for want := uint64(2); want <= 4; want++ {
		if b, err = e.svc.Renew(ctx, id); err != nil {
			t.Fatal(err)
		}
		if b.Generation != want {
			t.Fatalf("generation after renewal = %d, want %d", b.Generation, want)
		}
		id = b.Identity()
	}
	// A copy of generation 4 renews first; the original, still at 4,
	// then presents a stale generation: the bot is locked.
	stale := *id
	if _, err := e.svc.Renew(ctx, id); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Renew(ctx, &stale)
	if !trace.IsAccessDenied(err) || !strings.Contains(err.Error(), "generation 4 but the latest is 5") || !strings.Contains(err.Error(), "now locked") {
		t.Fatalf("stale renewal: %v", err)
	}
	if err := e.locks.Check(ctx, "copilot", types.IdentityKindAgent, nil); !trace.IsAccessDenied(err) || !strings.Contains(err.Error(), "identity copied") {
		t.Fatalf("bot not locked after the mismatch: %v", err)
	}
	// Certificates issued from the identity cannot renew it.
	routed := *id
	routed.Route = certid.Route{ResourceKind: "db", ResourceName: "pg1"}
	if _, err := e.svc.Renew(ctx, &routed); !trace.IsAccessDenied(err) {
		t.Fatalf("renewal with a routed cert: %v", err)
	}
	if _, err := e.svc.Renew(ctx, &certid.Identity{Name: "alice", Kind: certid.KindHuman}); !trace.IsAccessDenied(err) {
		t.Fatalf("renewal by a human: %v", err)
	}
}

func TestConcurrentRenewalsOneWins(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.token(t, "t", types.TokenSpec{Kind: "bot", BotName: "ci", Roles: []string{"r"}}, time.Hour)
	b, err := e.svc.Join(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	id := b.Identity()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.svc.Renew(ctx, id)
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		}
	}
	if ok != 1 {
		t.Fatalf("%d renewals of one generation succeeded, want 1: %v", ok, errs)
	}
}

func TestRemovedBotCannotRenew(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.token(t, "t", types.TokenSpec{Kind: "bot", BotName: "ci", Roles: []string{"r"}}, time.Hour)
	b, err := e.svc.Join(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	if list, err := e.svc.List(ctx); err != nil || len(list) != 1 || list[0].Name != "ci" {
		t.Fatalf("List = %v, %v", list, err)
	}
	if err := e.svc.Remove(ctx, "ci"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Renew(ctx, b.Identity()); !trace.IsAccessDenied(err) || !strings.Contains(err.Error(), "was removed") {
		t.Fatalf("renewal after removal: %v", err)
	}
}

func TestDelegate(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	alice := &types.User{Metadata: types.Metadata{Name: "alice"}, Spec: types.UserSpec{Roles: []string{"pg-write"}, Traits: map[string][]string{"db_users": {"alice"}}}}
	if _, err := e.store.Create(ctx, alice); err != nil {
		t.Fatal(err)
	}
	agent := &certid.Identity{Name: "copilot", Kind: certid.KindAgent, OnBehalfOf: "alice"}
	roles, traits, err := e.svc.Delegate(ctx, agent)
	if err != nil || len(roles) != 1 || roles[0] != "pg-write" || traits["db_users"][0] != "alice" {
		t.Fatalf("Delegate = %v %v %v", roles, traits, err)
	}
	// An SSO person is not stored: the snapshot from their token counts.
	e.token(t, "sso", types.TokenSpec{Kind: "agent", BotName: "helper", Roles: []string{"r"}, OnBehalfOf: "dave", OnBehalfOfRoles: []string{"sso-dev"}}, time.Hour)
	if _, err := e.svc.Join(ctx, "sso"); err != nil {
		t.Fatal(err)
	}
	roles, _, err = e.svc.Delegate(ctx, &certid.Identity{Name: "helper", Kind: certid.KindAgent, OnBehalfOf: "dave"})
	if err != nil || len(roles) != 1 || roles[0] != "sso-dev" {
		t.Fatalf("Delegate (SSO snapshot) = %v %v", roles, err)
	}
	// A person who is gone leaves the agent nothing.
	if _, _, err := e.svc.Delegate(ctx, &certid.Identity{Name: "x", Kind: certid.KindAgent, OnBehalfOf: "ghost"}); !trace.IsAccessDenied(err) {
		t.Fatalf("Delegate for a deleted person: %v", err)
	}
	// Someone else's token cannot take over dave's agent name.
	e.token(t, "steal", types.TokenSpec{Kind: "agent", BotName: "helper", Roles: []string{"r"}, OnBehalfOf: "alice"}, time.Hour)
	if _, err := e.svc.Join(ctx, "steal"); !trace.IsAlreadyExists(err) {
		t.Fatalf("join taking over another person's agent: %v", err)
	}
}
