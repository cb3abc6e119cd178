package users_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/storage/badger"
	"github.com/sigilhq/sigil/services/users"
)

const password = "correct horse battery staple"

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newService(t *testing.T) (*users.Service, *fakeClock) {
	t.Helper()
	ctx := context.Background()
	backend, err := badger.New(ctx, badger.Config{InMemory: true})
	must(t, err)
	t.Cleanup(func() { backend.Close() })
	store, err := resources.New(backend)
	must(t, err)
	clock := &fakeClock{now: time.Now().UTC()}
	svc, err := users.New(users.Config{
		Backend:        backend,
		Resources:      store,
		PasswordParams: authn.Params{Memory: 64, Time: 1, Threads: 1},
		Clock:          clock.Now,
	})
	must(t, err)
	return svc, clock
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
}

func requireErr(t *testing.T, err error, is func(error) bool, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("expected an error containing %q, got success", want)
	}
	if !is(err) {
		t.Fatalf("error %v has the wrong type", err)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not contain %q", err.Error(), want)
	}
}

func addUser(t *testing.T, svc *users.Service, name string) string {
	t.Helper()
	u, err := types.NewUser(name, []string{types.RoleAccess}, nil)
	must(t, err)
	_, token, _, err := svc.Add(context.Background(), u)
	must(t, err)
	return token
}

func TestSignupConsumesToken(t *testing.T) {
	svc, _ := newService(t)
	ctx := context.Background()
	token := addUser(t, svc, "alice")

	pending, err := svc.PendingSignup(ctx, "alice")
	must(t, err)
	if !pending {
		t.Fatal("alice is not pending before signup")
	}
	_, err = svc.Authenticate(ctx, "alice", []byte(password), "")
	requireErr(t, err, trace.IsAccessDenied, "invalid username or password")

	name, err := svc.SignupUser(ctx, token)
	must(t, err)
	if name != "alice" {
		t.Fatalf("token belongs to %q", name)
	}
	name, err = svc.Signup(ctx, token, []byte(password), "127.0.0.1")
	must(t, err)
	if name != "alice" {
		t.Fatalf("signed up %q", name)
	}
	pending, err = svc.PendingSignup(ctx, "alice")
	must(t, err)
	if pending {
		t.Fatal("alice is still pending after signup")
	}
	u, err := svc.Authenticate(ctx, "alice", []byte(password), "")
	must(t, err)
	if u.Metadata.Name != "alice" {
		t.Fatalf("authenticated %q", u.Metadata.Name)
	}

	_, err = svc.Signup(ctx, token, []byte("another long password"), "127.0.0.1")
	requireErr(t, err, trace.IsNotFound, "invalid, already used or expired")
	// The second attempt changed nothing.
	_, err = svc.Authenticate(ctx, "alice", []byte("another long password"), "")
	requireErr(t, err, trace.IsAccessDenied, "invalid username or password")
	_, err = svc.Authenticate(ctx, "alice", []byte(password), "")
	must(t, err)

	// Unknown users are unknown to PendingSignup.
	pending, err = svc.PendingSignup(ctx, "nobody")
	must(t, err)
	if pending {
		t.Fatal("an unknown user is pending")
	}
}

func TestSignupRefusals(t *testing.T) {
	svc, clock := newService(t)
	ctx := context.Background()
	token := addUser(t, svc, "alice")

	_, err := svc.Signup(ctx, token, []byte("short"), "127.0.0.1")
	requireErr(t, err, trace.IsBadParameter, "password is too short")
	_, err = svc.Signup(ctx, "", []byte(password), "127.0.0.1")
	requireErr(t, err, trace.IsBadParameter, "malformed")
	_, err = svc.Signup(ctx, strings.Repeat("a", 257), []byte(password), "127.0.0.1")
	requireErr(t, err, trace.IsBadParameter, "malformed")

	clock.Advance(users.DefaultSignupTTL)
	_, err = svc.Signup(ctx, token, []byte(password), "127.0.0.1")
	requireErr(t, err, trace.IsNotFound, "signup token expired")
	pending, err := svc.PendingSignup(ctx, "alice")
	must(t, err)
	if !pending {
		t.Fatal("an expired token wrote credentials")
	}

	// A fresh token (sigilctl users reset) works.
	fresh, _, err := svc.NewSignupToken(ctx, "alice")
	must(t, err)
	_, err = svc.Signup(ctx, fresh, []byte(password), "127.0.0.1")
	must(t, err)
}

func TestConcurrentSignupOneWinner(t *testing.T) {
	svc, _ := newService(t)
	ctx := context.Background()
	token := addUser(t, svc, "alice")

	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = svc.Signup(ctx, token, []byte(password+string(rune('a'+i))), "127.0.0.1")
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("signups %d and %d both succeeded", winner, i)
		case err == nil:
			winner = i
		case !trace.IsNotFound(err):
			t.Fatalf("signup %d: unexpected error %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no signup succeeded")
	}
	// The stored password is the winner's.
	_, err := svc.Authenticate(ctx, "alice", []byte(password+string(rune('a'+winner))), "")
	must(t, err)
}

func TestDeleteRemovesCredentials(t *testing.T) {
	svc, _ := newService(t)
	ctx := context.Background()
	token := addUser(t, svc, "alice")
	_, err := svc.Signup(ctx, token, []byte(password), "127.0.0.1")
	must(t, err)
	has, err := svc.HasUsers(ctx)
	must(t, err)
	if !has {
		t.Fatal("HasUsers is false with a user")
	}

	must(t, svc.Delete(ctx, "alice"))
	_, err = svc.Authenticate(ctx, "alice", []byte(password), "")
	requireErr(t, err, trace.IsAccessDenied, "invalid username or password")
	has, err = svc.HasUsers(ctx)
	must(t, err)
	if has {
		t.Fatal("HasUsers is true after the only user was deleted")
	}
	requireErr(t, svc.Delete(ctx, "alice"), trace.IsNotFound, `user "alice" not found`)

	// A new user of the same name starts without the old password.
	addUser(t, svc, "alice")
	pending, err := svc.PendingSignup(ctx, "alice")
	must(t, err)
	if !pending {
		t.Fatal("a re-created user inherited the old credentials")
	}
	_, err = svc.Authenticate(ctx, "alice", []byte(password), "")
	requireErr(t, err, trace.IsAccessDenied, "invalid username or password")
}

func TestDeleteRevokesPendingSignup(t *testing.T) {
	svc, _ := newService(t)
	ctx := context.Background()
	old := addUser(t, svc, "alice")
	must(t, svc.Delete(ctx, "alice"))
	// An admin later creates another alice: the link sent to the first
	// one must not claim the new account.
	fresh := addUser(t, svc, "alice")
	_, err := svc.Signup(ctx, old, []byte(password), "127.0.0.1")
	requireErr(t, err, trace.IsNotFound, "invalid, already used or expired")
	_, err = svc.Signup(ctx, fresh, []byte(password), "127.0.0.1")
	must(t, err)
}

func TestAuthenticateSameErrorForAllFailures(t *testing.T) {
	svc, _ := newService(t)
	ctx := context.Background()
	token := addUser(t, svc, "alice")
	_, err := svc.Signup(ctx, token, []byte(password), "127.0.0.1")
	must(t, err)
	for _, tc := range []struct{ name, user, password string }{
		{"wrong password", "alice", "wrong password here"},
		{"unknown user", "bob", password},
		{"invalid name", "../alice", password},
		{"empty password", "alice", ""},
		{"oversized password", "alice", strings.Repeat("x", 2000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := svc.Authenticate(ctx, tc.user, []byte(tc.password), "")
			requireErr(t, err, trace.IsAccessDenied, "invalid username or password")
		})
	}
}
