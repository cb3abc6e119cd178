package testenv

import (
	"net/url"
	"testing"

	"github.com/descope/virtualwebauthn"
	"github.com/sigilhq/sigil/identity/authn/webauthntest"
)

// VirtualKey is a software security key for WebAuthn ceremonies over
// HTTP (github.com/descope/virtualwebauthn): it answers the options the
// console hands a browser, as navigator.credentials would.
type VirtualKey struct {
	rp   virtualwebauthn.RelyingParty
	auth virtualwebauthn.Authenticator
	cred virtualwebauthn.Credential
	// Counter is the signature counter the next assertion carries; each
	// Assert increments it first.
	Counter uint32
}

// NewVirtualKey returns a key for the console at origin
// (https://localhost:PORT).
func NewVirtualKey(t testing.TB, origin string) *VirtualKey {
	t.Helper()
	u, err := url.Parse(origin)
	if err != nil {
		t.Fatal(err)
	}
	return &VirtualKey{
		rp:   virtualwebauthn.RelyingParty{Name: "Sigil", ID: u.Hostname(), Origin: origin},
		auth: virtualwebauthn.NewAuthenticator(),
		cred: webauthntest.NewEC2Credential(),
	}
}

// Register answers credential creation options ({"publicKey": ...}).
func (k *VirtualKey) Register(t testing.TB, options string) string {
	t.Helper()
	opts, err := virtualwebauthn.ParseAttestationOptions(options)
	if err != nil {
		t.Fatalf("parsing WebAuthn creation options: %v\n%s", err, options)
	}
	k.cred.Counter = k.Counter
	resp := virtualwebauthn.CreateAttestationResponse(k.rp, k.auth, k.cred, *opts)
	k.auth.AddCredential(k.cred)
	return resp
}

// Assert answers credential request options with the next counter.
func (k *VirtualKey) Assert(t testing.TB, options string) string {
	t.Helper()
	k.Counter++
	return k.AssertWithCounter(t, options, k.Counter)
}

// AssertWithCounter answers with a chosen counter (a cloned key's).
func (k *VirtualKey) AssertWithCounter(t testing.TB, options string, counter uint32) string {
	t.Helper()
	opts, err := virtualwebauthn.ParseAssertionOptions(options)
	if err != nil {
		t.Fatalf("parsing WebAuthn request options: %v\n%s", err, options)
	}
	k.cred.Counter = counter
	return virtualwebauthn.CreateAssertionResponse(k.rp, k.auth, k.cred, *opts)
}
