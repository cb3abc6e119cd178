package mfa_test

import (
	"context"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/descope/virtualwebauthn"
	"github.com/gravitational/trace"
	"github.com/pquerna/otp/totp"

	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/identity/authn/webauthntest"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/services/mfa"
	"github.com/sigilhq/sigil/services/storage/badger"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

const origin = "https://localhost:3443"

func newService(t *testing.T) (*mfa.Service, *clock) {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	backend, err := badger.New(ctx, badger.Config{InMemory: true, Logger: log})
	must(t, err)
	t.Cleanup(func() { backend.Close() })
	sealer, err := ca.NewFileSealer(filepath.Join(t.TempDir(), "seal"))
	must(t, err)
	wa, err := authn.NewWebAuthn(authn.WebAuthnConfig{PublicAddr: "127.0.0.1:3443"})
	must(t, err)
	if wa.Origin() != origin || wa.RPID() != "localhost" {
		t.Fatalf("a loopback public address must give the localhost origin, got %s (RP %s)", wa.Origin(), wa.RPID())
	}
	c := &clock{now: time.Now().UTC()}
	svc, err := mfa.New(mfa.Config{Backend: backend, Sealer: sealer, WebAuthn: wa, Issuer: "Sigil test", Clock: c.Now, Logger: log})
	must(t, err)
	return svc, c
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// key is a virtual security key.
type key struct {
	rp   virtualwebauthn.RelyingParty
	auth virtualwebauthn.Authenticator
	cred virtualwebauthn.Credential
}

func newKey() *key {
	return &key{
		rp:   virtualwebauthn.RelyingParty{Name: "Sigil", ID: "localhost", Origin: origin},
		auth: virtualwebauthn.NewAuthenticator(),
		cred: webauthntest.NewEC2Credential(),
	}
}

func (k *key) register(t *testing.T, options []byte) []byte {
	t.Helper()
	opts, err := virtualwebauthn.ParseAttestationOptions(string(options))
	must(t, err)
	resp := virtualwebauthn.CreateAttestationResponse(k.rp, k.auth, k.cred, *opts)
	k.auth.AddCredential(k.cred)
	return []byte(resp)
}

// assert signs options with the counter at counter.
func (k *key) assert(t *testing.T, options []byte, counter uint32) []byte {
	t.Helper()
	opts, err := virtualwebauthn.ParseAssertionOptions(string(options))
	must(t, err)
	k.cred.Counter = counter
	return []byte(virtualwebauthn.CreateAssertionResponse(k.rp, k.auth, k.cred, *opts))
}

func addKey(t *testing.T, svc *mfa.Service, user, name string, proven bool) *key {
	t.Helper()
	ctx := context.Background()
	id, reg, err := svc.BeginRegistration(ctx, mfa.RegistrationRequest{User: user, Name: name, Type: mfa.TypeWebAuthn, Proven: proven})
	must(t, err)
	k := newKey()
	k.cred.Counter = 1
	if _, err := svc.FinishRegistration(ctx, user, id, "", k.register(t, reg.WebAuthnOptions)); err != nil {
		t.Fatalf("registering the virtual key: %v", err)
	}
	return k
}

func addTOTP(t *testing.T, svc *mfa.Service, c *clock, user, name string, proven bool) string {
	t.Helper()
	ctx := context.Background()
	id, reg, err := svc.BeginRegistration(ctx, mfa.RegistrationRequest{User: user, Name: name, Type: mfa.TypeTOTP, Proven: proven})
	must(t, err)
	u, err := url.Parse(reg.TOTPURL)
	must(t, err)
	secret := u.Query().Get("secret")
	code, err := totp.GenerateCode(secret, c.Now())
	must(t, err)
	if _, err := svc.FinishRegistration(ctx, user, id, code, nil); err != nil {
		t.Fatalf("registering the TOTP app: %v", err)
	}
	return secret
}

func dbTarget(db, user string) mfa.Target {
	return mfa.Target{Kind: mfa.TargetDatabase, Database: db, DBUser: user, DBName: "app"}
}

func wantDenied(t *testing.T, err error, contains string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want a refusal containing %q, got none", contains)
	}
	if !trace.IsAccessDenied(err) || !strings.Contains(err.Error(), contains) {
		t.Fatalf("want an access denied containing %q, got %T %v", contains, trace.Unwrap(err), err)
	}
}

func TestWebAuthnChallenge(t *testing.T) {
	ctx := context.Background()
	svc, _ := newService(t)
	k := addKey(t, svc, "alice", "yubikey", false)
	binding := []byte("client-public-key")

	id, c, err := svc.CreateChallenge(ctx, mfa.ChallengeRequest{User: "alice", Target: dbTarget("pg1", "writer"), Binding: binding, AllowTOTP: true, AllowWebAuthn: true})
	must(t, err)
	if got := strings.Join(c.Methods(), ","); got != "webauthn" {
		t.Fatalf("methods %q, want webauthn only (alice has no TOTP app)", got)
	}
	redeem := mfa.RedeemRequest{ID: id, User: "alice", Target: dbTarget("pg1", "writer"), Binding: binding}
	if _, pending, err := svc.Redeem(ctx, redeem); err != nil || !pending {
		t.Fatalf("before approval: pending=%v err=%v, want pending", pending, err)
	}
	if _, err := svc.VerifyWebAuthn(ctx, id, k.assert(t, c.WebAuthnOptions, 2)); err != nil {
		t.Fatalf("approving with the key: %v", err)
	}
	// The same assertion again is a replay.
	if _, err := svc.VerifyWebAuthn(ctx, id, k.assert(t, c.WebAuthnOptions, 3)); err == nil {
		t.Fatal("a second approval of one challenge was accepted")
	}

	// Bound to the user, the target and the client.
	_, _, err = svc.Redeem(ctx, mfa.RedeemRequest{ID: id, User: "mallory", Target: redeem.Target, Binding: binding})
	wantDenied(t, err, "another user")
	_, _, err = svc.Redeem(ctx, mfa.RedeemRequest{ID: id, User: "alice", Target: dbTarget("pg1", "admin"), Binding: binding})
	wantDenied(t, err, "created for database pg1 as db user writer")
	_, _, err = svc.Redeem(ctx, mfa.RedeemRequest{ID: id, User: "alice", Target: redeem.Target, Binding: []byte("another key")})
	wantDenied(t, err, "another client")

	used, pending, err := svc.Redeem(ctx, redeem)
	if err != nil || pending || used.Name != "yubikey" || used.Type != mfa.TypeWebAuthn {
		t.Fatalf("redeeming: %+v pending=%v err=%v", used, pending, err)
	}
	// Single use.
	_, _, err = svc.Redeem(ctx, redeem)
	wantDenied(t, err, "already used")
}

func TestChallengeExpiry(t *testing.T) {
	ctx := context.Background()
	svc, c := newService(t)
	k := addKey(t, svc, "alice", "yubikey", false)
	binding := []byte("k")
	id, ch, err := svc.CreateChallenge(ctx, mfa.ChallengeRequest{User: "alice", Target: dbTarget("pg1", "writer"), Binding: binding, AllowWebAuthn: true})
	must(t, err)
	c.Advance(mfa.ChallengeTTL)
	_, err = svc.VerifyWebAuthn(ctx, id, k.assert(t, ch.WebAuthnOptions, 2))
	wantDenied(t, err, "expired")
	_, _, err = svc.Redeem(ctx, mfa.RedeemRequest{ID: id, User: "alice", Target: dbTarget("pg1", "writer"), Binding: binding})
	wantDenied(t, err, "expired")
	if _, err := svc.Challenge(ctx, id); !trace.IsNotFound(err) {
		t.Fatalf("an expired challenge is still shown: %v", err)
	}
}

func TestClonedKeyRefused(t *testing.T) {
	ctx := context.Background()
	svc, _ := newService(t)
	k := addKey(t, svc, "alice", "yubikey", false)
	approve := func(counter uint32) error {
		id, ch, err := svc.CreateChallenge(ctx, mfa.ChallengeRequest{User: "alice", Target: dbTarget("pg1", "writer"), Binding: []byte("k"), AllowWebAuthn: true})
		must(t, err)
		_, err = svc.VerifyWebAuthn(ctx, id, k.assert(t, ch.WebAuthnOptions, counter))
		return err
	}
	must(t, approve(10))
	// A clone still at counter 5 (or one replaying 10) gives itself away.
	wantDenied(t, approve(5), "counter went back")
	wantDenied(t, approve(10), "counter went back")
	must(t, approve(11))
	devs, err := svc.Devices(ctx, "alice")
	must(t, err)
	if got := devs[0].Credential.Authenticator.SignCount; got != 11 {
		t.Fatalf("stored sign count %d, want 11", got)
	}
}

func TestTOTPChallengeAndReplay(t *testing.T) {
	ctx := context.Background()
	svc, c := newService(t)
	secret := addTOTP(t, svc, c, "alice", "phone", false)
	// The code that proved the app at registration is spent.
	c.Advance(authn.TOTPPeriod)
	binding := []byte("k")
	target := dbTarget("pg1", "writer")
	id, ch, err := svc.CreateChallenge(ctx, mfa.ChallengeRequest{User: "alice", Target: target, Binding: binding, AllowTOTP: true, AllowWebAuthn: true})
	must(t, err)
	if got := strings.Join(ch.Methods(), ","); got != "totp" {
		t.Fatalf("methods %q, want totp", got)
	}
	_, _, err = svc.Redeem(ctx, mfa.RedeemRequest{ID: id, User: "alice", Target: target, Binding: binding, TOTPCode: "000000"})
	wantDenied(t, err, "invalid one-time code")
	code, err := totp.GenerateCode(secret, c.Now())
	must(t, err)
	used, _, err := svc.Redeem(ctx, mfa.RedeemRequest{ID: id, User: "alice", Target: target, Binding: binding, TOTPCode: code})
	if err != nil || used.Name != "phone" {
		t.Fatalf("solving with a code: %+v %v", used, err)
	}
	// The same code on a fresh challenge is a replay.
	id2, _, err := svc.CreateChallenge(ctx, mfa.ChallengeRequest{User: "alice", Target: target, Binding: binding, AllowTOTP: true})
	must(t, err)
	_, _, err = svc.Redeem(ctx, mfa.RedeemRequest{ID: id2, User: "alice", Target: target, Binding: binding, TOTPCode: code})
	wantDenied(t, err, "already used")
}

func TestRegistrationNeedsProof(t *testing.T) {
	ctx := context.Background()
	svc, c := newService(t)
	addTOTP(t, svc, c, "alice", "phone", false)
	_, _, err := svc.BeginRegistration(ctx, mfa.RegistrationRequest{User: "alice", Name: "thief", Type: mfa.TypeTOTP})
	wantDenied(t, err, "needs a check with an existing one")
	_, _, err = svc.BeginRegistration(ctx, mfa.RegistrationRequest{User: "alice", Name: "phone", Type: mfa.TypeTOTP, Proven: true})
	if !trace.IsAlreadyExists(err) {
		t.Fatalf("a second device named phone: %v, want already exists", err)
	}
	addKey(t, svc, "alice", "yubikey", true)
	// Another user's registration is not alice's to finish.
	id, _, err := svc.BeginRegistration(ctx, mfa.RegistrationRequest{User: "bob", Name: "phone", Type: mfa.TypeTOTP})
	must(t, err)
	_, err = svc.FinishRegistration(ctx, "alice", id, "123456", nil)
	wantDenied(t, err, "another user")

	devs, err := svc.Devices(ctx, "alice")
	must(t, err)
	if len(devs) != 2 || devs[0].Name != "phone" || devs[1].Name != "yubikey" {
		t.Fatalf("devices %+v", devs)
	}
	if _, err := svc.RemoveDevice(ctx, "alice", "phone"); err != nil {
		t.Fatal(err)
	}
	if totpOK, keyOK, err := svc.HasDevices(ctx, "alice"); err != nil || totpOK || !keyOK {
		t.Fatalf("after removing the app: totp=%v key=%v err=%v", totpOK, keyOK, err)
	}
}

func TestPendingListsOwnKeyChallenges(t *testing.T) {
	ctx := context.Background()
	svc, _ := newService(t)
	addKey(t, svc, "alice", "yubikey", false)
	addKey(t, svc, "bob", "yubikey", false)
	id, _, err := svc.CreateChallenge(ctx, mfa.ChallengeRequest{User: "alice", Target: dbTarget("pg1", "writer"), Binding: []byte("k"), AllowWebAuthn: true})
	must(t, err)
	_, _, err = svc.CreateChallenge(ctx, mfa.ChallengeRequest{User: "bob", Target: dbTarget("pg1", "writer"), Binding: []byte("k"), AllowWebAuthn: true})
	must(t, err)
	list, err := svc.Pending(ctx, "alice")
	must(t, err)
	if len(list) != 1 || list[0].Ref != mfa.Ref(id) {
		t.Fatalf("alice's pending challenges: %+v", list)
	}
}
