package authn

import (
	"strings"
	"testing"
)

func TestWebAuthnRelyingParty(t *testing.T) {
	for _, tc := range []struct {
		addr, rpID, origin, err string
	}{
		{addr: "127.0.0.1:3443", rpID: "localhost", origin: "https://localhost:3443"},
		{addr: "[::1]:3443", rpID: "localhost", origin: "https://localhost:3443"},
		{addr: "sigil.example.com:443", rpID: "sigil.example.com", origin: "https://sigil.example.com"},
		{addr: "sigil.example.com:3443", rpID: "sigil.example.com", origin: "https://sigil.example.com:3443"},
		{addr: "10.0.0.5:3443", err: "cannot be a WebAuthn relying party"},
		{addr: "no-port", err: "not HOST:PORT"},
	} {
		w, err := NewWebAuthn(WebAuthnConfig{PublicAddr: tc.addr})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err = %v, want %q", tc.addr, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.addr, err)
			continue
		}
		if w.RPID() != tc.rpID || w.Origin() != tc.origin {
			t.Errorf("%s: RP %q origin %q, want %q %q", tc.addr, w.RPID(), w.Origin(), tc.rpID, tc.origin)
		}
	}
}

func TestWebAuthnRefusesOversizedAnswers(t *testing.T) {
	w, err := NewWebAuthn(WebAuthnConfig{PublicAddr: "127.0.0.1:3443"})
	if err != nil {
		t.Fatal(err)
	}
	u := &WebAuthnUser{Handle: []byte("h"), Name: "alice"}
	_, state, err := w.BeginRegistration(u)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.FinishRegistration(u, state, make([]byte, MaxWebAuthnResponse+1)); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized answer: %v", err)
	}
	if _, err := w.FinishRegistration(u, state, []byte(`{"id":"x"}`)); err == nil || !strings.Contains(err.Error(), "malformed") {
		t.Fatalf("malformed answer: %v", err)
	}
}
