package authn

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"

	"github.com/gravitational/trace"
)

// TokenBytes is the entropy of a token from NewToken.
const TokenBytes = 32

// NewToken returns 32 random bytes as 64 lowercase hex characters, which are
// safe in URLs, headers and file names without escaping.
func NewToken() (string, error) {
	b := make([]byte, TokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", trace.Wrap(err, "generating token")
	}
	return hex.EncodeToString(b), nil
}

// TokensEqual compares two secrets in constant time. Both are hashed first so
// that neither the content nor the length of the expected token leaks
// through timing.
func TokensEqual(a, b string) bool {
	ha := sha256.Sum256([]byte(a))
	hb := sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}
