package authn

import (
	"bytes"
	"strings"
	"testing"

	"github.com/gravitational/trace"
)

// testParams keep the suite fast; the algorithm is the same at any cost.
var testParams = Params{Memory: 64, Time: 1, Threads: 1, SaltLength: 16, KeyLength: 32}

func TestHashCheckRoundtrip(t *testing.T) {
	pw := []byte("correct horse battery staple")
	hash, err := HashPasswordWithParams(pw, testParams)
	if err != nil {
		t.Fatalf("HashPasswordWithParams: %v", err)
	}
	if !strings.HasPrefix(string(hash), "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Fatalf("unexpected hash format %q", hash)
	}
	if err := CheckPassword(hash, pw); err != nil {
		t.Fatalf("CheckPassword with right password: %v", err)
	}
	err = CheckPassword(hash, []byte("correct horse battery stapler"))
	if !trace.IsAccessDenied(err) {
		t.Fatalf("wrong password: want AccessDenied, got %v", err)
	}
	if !strings.Contains(err.Error(), "invalid username or password") {
		t.Fatalf("wrong password: unexpected message %q", err.Error())
	}
	if err := CheckPassword(hash, bytes.Repeat([]byte("a"), MaxPasswordLength+1)); !trace.IsAccessDenied(err) {
		t.Fatalf("over-long password: want AccessDenied, got %v", err)
	}
}

func TestHashIsSalted(t *testing.T) {
	pw := []byte("the same password twice")
	h1, err := HashPasswordWithParams(pw, testParams)
	if err != nil {
		t.Fatal(err)
	}
	h2, err := HashPasswordWithParams(pw, testParams)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(h1, h2) {
		t.Fatalf("two hashes of the same password are identical: %q", h1)
	}
	for _, h := range [][]byte{h1, h2} {
		if err := CheckPassword(h, pw); err != nil {
			t.Fatalf("CheckPassword(%q): %v", h, err)
		}
	}
}

// TestDefaultParamsHash hashes once at full cost (64 MiB); the roundtrip is
// covered with cheap params elsewhere.
func TestDefaultParamsHash(t *testing.T) {
	hash, err := HashPassword([]byte("default parameters work"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(hash), "$argon2id$v=19$m=65536,t=1,p=2$") {
		t.Fatalf("unexpected default hash %q", hash)
	}
	if _, _, _, err := decodeHash(hash); err != nil {
		t.Fatalf("default hash does not parse: %v", err)
	}
	if NeedsRehash(hash, DefaultParams) {
		t.Fatal("NeedsRehash reported true for a hash made with the same params")
	}
	if !NeedsRehash(hash, testParams) {
		t.Fatal("NeedsRehash reported false for different params")
	}
}

func TestCheckPasswordMalformed(t *testing.T) {
	good, err := HashPasswordWithParams([]byte("a fine password"), testParams)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(string(good), "$")
	salt, key := parts[4], parts[5]
	tests := []struct {
		name, hash, msg string
	}{
		{"empty", "", "malformed password hash"},
		{"garbage", "not a hash", "malformed password hash"},
		{"bcrypt", "$2a$10$abcdefghijklmnopqrstuu5u1H7Yx0pTnJ0g0c8b1XWz3Q8N7F6e", "malformed password hash"},
		{"argon2i", "$argon2i$v=19$m=64,t=1,p=1$" + salt + "$" + key, "unsupported password hash algorithm"},
		{"version", "$argon2id$v=16$m=64,t=1,p=1$" + salt + "$" + key, "unsupported argon2 version"},
		{"missing param", "$argon2id$v=19$m=64,t=1$" + salt + "$" + key, "expected m=..,t=..,p=.."},
		{"unknown param", "$argon2id$v=19$m=64,t=1,x=1$" + salt + "$" + key, "unknown parameter"},
		{"non-numeric", "$argon2id$v=19$m=lots,t=1,p=1$" + salt + "$" + key, "bad value"},
		{"huge memory", "$argon2id$v=19$m=4194304,t=1,p=1$" + salt + "$" + key, "exceeds the maximum"},
		{"zero time", "$argon2id$v=19$m=64,t=0,p=1$" + salt + "$" + key, "time cost"},
		{"bad salt", "$argon2id$v=19$m=64,t=1,p=1$!!!$" + key, "bad salt encoding"},
		{"short key", "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$AAAA", "key length"},
		{"too long", "$argon2id$" + strings.Repeat("A", 600), "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPassword([]byte(tt.hash), []byte("a fine password"))
			if !trace.IsBadParameter(err) {
				t.Fatalf("want BadParameter, got %v", err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("error %q does not mention %q", err.Error(), tt.msg)
			}
		})
	}
}

func TestValidatePassword(t *testing.T) {
	tests := []struct {
		name string
		pw   []byte
		msg  string
	}{
		{"ok", []byte("twelve chars"), ""},
		{"unicode counted in runes", []byte("ñññññññññññ1"), ""},
		{"short", []byte("elevenchars"), "at least 12 characters (got 11)"},
		{"empty", nil, "at least 12 characters (got 0)"},
		{"long", bytes.Repeat([]byte("x"), MaxPasswordLength+1), "maximum is 1024 bytes"},
		{"max", bytes.Repeat([]byte("x"), MaxPasswordLength), ""},
		{"invalid utf8", append([]byte("twelve chars"), 0xff), "valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidatePassword(tt.pw)
			if tt.msg == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if !trace.IsBadParameter(err) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("want BadParameter containing %q, got %v", tt.msg, err)
			}
		})
	}
}

func TestParamsValidation(t *testing.T) {
	_, err := HashPasswordWithParams([]byte("whatever password"), Params{Memory: maxMemoryKiB + 1})
	if !trace.IsBadParameter(err) {
		t.Fatalf("want BadParameter for excessive memory, got %v", err)
	}
	_, err = HashPasswordWithParams([]byte("whatever password"), Params{Memory: 64, Time: 1, Threads: 1, SaltLength: 4})
	if !trace.IsBadParameter(err) || !strings.Contains(err.Error(), "salt length") {
		t.Fatalf("want BadParameter for short salt, got %v", err)
	}
}
