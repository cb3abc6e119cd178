package authn

import (
	"regexp"
	"testing"
)

func TestNewToken(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{64}$`)
	seen := make(map[string]bool)
	for range 100 {
		tok, err := NewToken()
		if err != nil {
			t.Fatal(err)
		}
		if !re.MatchString(tok) {
			t.Fatalf("token %q is not 64 hex chars", tok)
		}
		if seen[tok] {
			t.Fatalf("duplicate token %q", tok)
		}
		seen[tok] = true
	}
}

func TestTokensEqual(t *testing.T) {
	a, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	if !TokensEqual(a, a) || !TokensEqual(a, string([]byte(a))) {
		t.Fatal("equal tokens compared unequal")
	}
	if TokensEqual(a, b) || TokensEqual(a, a[:63]) || TokensEqual(a, "") {
		t.Fatal("different tokens compared equal")
	}
}
