package authn

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gravitational/trace"
	"github.com/pquerna/otp/totp"
)

// RFC 6238 appendix B SHA-1 seed "12345678901234567890" in base32.
const rfcSecret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"

func TestNewTOTP(t *testing.T) {
	secret, u, err := NewTOTP("Sigil", "alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(secret) != 32 {
		t.Fatalf("want a 160-bit base32 secret (32 chars), got %q", secret)
	}
	parsed, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Scheme != "otpauth" || parsed.Host != "totp" || parsed.Query().Get("secret") != secret ||
		parsed.Query().Get("issuer") != "Sigil" || !strings.Contains(parsed.Path, "alice@example.com") {
		t.Fatalf("unexpected URL %q", u)
	}
	now := time.Unix(1_700_000_000, 0)
	code, err := totp.GenerateCode(secret, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := ValidateTOTP(secret, code, now); err != nil {
		t.Fatalf("fresh secret does not validate its own code: %v", err)
	}
	if _, _, err := NewTOTP("", "alice"); !trace.IsBadParameter(err) {
		t.Fatalf("empty issuer: want BadParameter, got %v", err)
	}
}

func TestValidateTOTP(t *testing.T) {
	// RFC 6238 test vector: T=59 -> 94287082 (8 digits); we use 6 digits -> 287082.
	at59 := time.Unix(59, 0)
	tests := []struct {
		name string
		code string
		now  time.Time
		ok   bool
	}{
		{"rfc vector", "287082", at59, true},
		{"with spaces", " 287082 ", at59, true},
		{"one step later", "287082", at59.Add(30 * time.Second), true},
		{"two steps later", "287082", at59.Add(60 * time.Second), false},
		{"one step earlier", "287082", at59.Add(-30 * time.Second), true},
		{"wrong code", "287083", at59, false},
		{"too short", "28708", at59, false},
		{"non digits", "28708a", at59, false},
		{"empty", "", at59, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateTOTP(rfcSecret, tt.code, tt.now)
			if tt.ok {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if !trace.IsAccessDenied(err) || !strings.Contains(err.Error(), "invalid one-time code") {
				t.Fatalf("want AccessDenied, got %v", err)
			}
		})
	}
	if err := ValidateTOTP("not base32!", "123456", at59); !trace.IsBadParameter(err) {
		t.Fatalf("malformed secret: want BadParameter, got %v", err)
	}
}

func TestTOTPReplayCache(t *testing.T) {
	now := time.Unix(1_700_000_010, 0)
	cache, err := NewTOTPReplayCache(TOTPReplayCacheConfig{Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	code, err := totp.GenerateCode(rfcSecret, now)
	if err != nil {
		t.Fatal(err)
	}
	prev, err := totp.GenerateCode(rfcSecret, now.Add(-TOTPPeriod))
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.Validate("alice", rfcSecret, code); err != nil {
		t.Fatalf("first use: %v", err)
	}
	err = cache.Validate("alice", rfcSecret, code)
	if !trace.IsAccessDenied(err) || !strings.Contains(err.Error(), "already been used") {
		t.Fatalf("replay: want AccessDenied, got %v", err)
	}
	// The previous step's code is still within skew but older than what was used.
	if err := cache.Validate("alice", rfcSecret, prev); !trace.IsAccessDenied(err) {
		t.Fatalf("older code after newer: want AccessDenied, got %v", err)
	}
	// Keys are independent.
	if err := cache.Validate("bob", rfcSecret, code); err != nil {
		t.Fatalf("other key: %v", err)
	}
	// The next step's code is accepted.
	now = now.Add(TOTPPeriod)
	next, err := totp.GenerateCode(rfcSecret, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.Validate("alice", rfcSecret, next); err != nil {
		t.Fatalf("next step: %v", err)
	}
	if err := cache.Validate("alice", rfcSecret, "000000"); !trace.IsAccessDenied(err) {
		t.Fatalf("wrong code: want AccessDenied, got %v", err)
	}
}

func TestTOTPReplayCacheBounded(t *testing.T) {
	now := time.Unix(1_700_000_010, 0)
	cache, err := NewTOTPReplayCache(TOTPReplayCacheConfig{MaxKeys: 10, Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	code, err := totp.GenerateCode(rfcSecret, now)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := cache.Validate(strings.Repeat("u", i+1), rfcSecret, code); err != nil {
			t.Fatal(err)
		}
		cache.mu.Lock()
		n := len(cache.last)
		cache.mu.Unlock()
		if n > 10 {
			t.Fatalf("cache grew to %d entries with MaxKeys 10", n)
		}
	}
}
