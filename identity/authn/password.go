package authn

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/gravitational/trace"
	"golang.org/x/crypto/argon2"
)

const (
	// MinPasswordLength is counted in characters (runes), not bytes, so that
	// non-ASCII passphrases are not penalised.
	MinPasswordLength = 12
	// MaxPasswordLength is counted in bytes; it bounds the work an
	// unauthenticated caller can make us do per attempt.
	MaxPasswordLength = 1024

	// maxHashLength bounds the parser; a real encoded hash is ~100 bytes.
	maxHashLength = 512

	argon2idName = "argon2id"
)

// errBadCredentials is the single message used for every credential failure
// so that responses do not reveal whether the user or the password was wrong.
const errBadCredentials = "invalid username or password"

// Params are the argon2id cost parameters. They are encoded into every hash,
// so changing DefaultParams does not invalidate existing hashes; use
// NeedsRehash on successful login to upgrade them.
type Params struct {
	// Memory is in KiB.
	Memory uint32
	// Time is the number of passes over memory.
	Time uint32
	// Threads is the degree of parallelism.
	Threads uint8
	// SaltLength is in bytes.
	SaltLength uint32
	// KeyLength is the length of the derived key in bytes.
	KeyLength uint32
}

// DefaultParams follow the second recommended option of RFC 9106 scaled to
// a single pass: 64 MiB of memory, which takes roughly 50-100 ms per hash on
// one modern core and makes GPU cracking memory-bound.
var DefaultParams = Params{
	Memory:     64 * 1024,
	Time:       1,
	Threads:    2,
	SaltLength: 16,
	KeyLength:  32,
}

// Bounds applied to parameters read back from a stored hash, so a corrupted
// or hostile hash cannot make CheckPassword allocate gigabytes.
const (
	maxMemoryKiB  = 1024 * 1024 // 1 GiB
	maxTimeCost   = 64
	minSaltLength = 8
	maxSaltLength = 64
	minKeyLength  = 16
	maxKeyLength  = 128
)

// CheckAndSetDefaults validates p, filling zero fields from DefaultParams.
func (p *Params) CheckAndSetDefaults() error {
	if p.Memory == 0 {
		p.Memory = DefaultParams.Memory
	}
	if p.Time == 0 {
		p.Time = DefaultParams.Time
	}
	if p.Threads == 0 {
		p.Threads = DefaultParams.Threads
	}
	if p.SaltLength == 0 {
		p.SaltLength = DefaultParams.SaltLength
	}
	if p.KeyLength == 0 {
		p.KeyLength = DefaultParams.KeyLength
	}
	return trace.Wrap(p.check())
}

func (p Params) check() error {
	switch {
	case p.Memory > maxMemoryKiB:
		return trace.BadParameter("argon2id memory %d KiB exceeds the maximum of %d KiB", p.Memory, maxMemoryKiB)
	case p.Memory < 8*uint32(p.Threads):
		return trace.BadParameter("argon2id memory %d KiB must be at least 8 KiB per thread", p.Memory)
	case p.Time == 0 || p.Time > maxTimeCost:
		return trace.BadParameter("argon2id time cost %d must be between 1 and %d", p.Time, maxTimeCost)
	case p.Threads == 0:
		return trace.BadParameter("argon2id parallelism must be at least 1")
	case p.SaltLength < minSaltLength || p.SaltLength > maxSaltLength:
		return trace.BadParameter("argon2id salt length %d must be between %d and %d bytes", p.SaltLength, minSaltLength, maxSaltLength)
	case p.KeyLength < minKeyLength || p.KeyLength > maxKeyLength:
		return trace.BadParameter("argon2id key length %d must be between %d and %d bytes", p.KeyLength, minKeyLength, maxKeyLength)
	}
	return nil
}

// ValidatePassword enforces the password policy for new passwords. It is not
// applied by CheckPassword so that a policy change does not lock anyone out.
func ValidatePassword(p []byte) error {
	if len(p) > MaxPasswordLength {
		return trace.BadParameter("password is too long: the maximum is %d bytes", MaxPasswordLength)
	}
	if !utf8.Valid(p) {
		return trace.BadParameter("password must be valid UTF-8 text")
	}
	if n := utf8.RuneCount(p); n < MinPasswordLength {
		return trace.BadParameter("password is too short: it must be at least %d characters (got %d)", MinPasswordLength, n)
	}
	return nil
}

// HashPassword hashes password with DefaultParams.
func HashPassword(password []byte) ([]byte, error) {
	hash, err := HashPasswordWithParams(password, DefaultParams)
	return hash, trace.Wrap(err)
}

// HashPasswordWithParams hashes password with a fresh random salt and returns
// a PHC string: $argon2id$v=19$m=65536,t=1,p=2$<salt>$<key>.
func HashPasswordWithParams(password []byte, params Params) ([]byte, error) {
	if err := params.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	if len(password) > MaxPasswordLength {
		return nil, trace.BadParameter("password is too long: the maximum is %d bytes", MaxPasswordLength)
	}
	salt := make([]byte, params.SaltLength)
	if _, err := rand.Read(salt); err != nil {
		return nil, trace.Wrap(err, "generating salt")
	}
	key := argon2.IDKey(password, salt, params.Time, params.Memory, params.Threads, params.KeyLength)
	return []byte(encodeHash(params, salt, key)), nil
}

func encodeHash(p Params, salt, key []byte) string {
	return fmt.Sprintf("$%s$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2idName, argon2.Version, p.Memory, p.Time, p.Threads,
		base64.RawStdEncoding.EncodeToString(salt),
		base64.RawStdEncoding.EncodeToString(key))
}

// CheckPassword reports whether password matches hash. A mismatch yields
// AccessDenied with a generic message; a hash that cannot be parsed yields
// BadParameter, which callers should treat as a server-side fault.
func CheckPassword(hash, password []byte) error {
	params, salt, key, err := decodeHash(hash)
	if err != nil {
		return trace.Wrap(err)
	}
	if len(password) > MaxPasswordLength {
		// No stored password can be this long, so it cannot match.
		return trace.AccessDenied(errBadCredentials)
	}
	got := argon2.IDKey(password, salt, params.Time, params.Memory, params.Threads, params.KeyLength)
	if subtle.ConstantTimeCompare(got, key) != 1 {
		return trace.AccessDenied(errBadCredentials)
	}
	return nil
}

// NeedsRehash reports whether hash was made with parameters other than want,
// so callers can transparently upgrade it after a successful CheckPassword.
func NeedsRehash(hash []byte, want Params) bool {
	if err := want.CheckAndSetDefaults(); err != nil {
		return false
	}
	got, salt, _, err := decodeHash(hash)
	if err != nil {
		return true
	}
	got.SaltLength = uint32(len(salt))
	return got != want
}

func decodeHash(hash []byte) (Params, []byte, []byte, error) {
	var p Params
	if len(hash) > maxHashLength {
		return p, nil, nil, trace.BadParameter("malformed password hash: longer than %d bytes", maxHashLength)
	}
	// "$argon2id$v=19$m=..,t=..,p=..$salt$key" splits into 6 fields, the first empty.
	parts := strings.Split(string(hash), "$")
	if len(parts) != 6 || parts[0] != "" {
		return p, nil, nil, trace.BadParameter("malformed password hash: expected $argon2id$v=..$m=..,t=..,p=..$salt$hash")
	}
	if parts[1] != argon2idName {
		return p, nil, nil, trace.BadParameter("unsupported password hash algorithm %q", parts[1])
	}
	version, ok := strings.CutPrefix(parts[2], "v=")
	if !ok {
		return p, nil, nil, trace.BadParameter("malformed password hash: missing version")
	}
	if v, err := strconv.Atoi(version); err != nil || v != argon2.Version {
		return p, nil, nil, trace.BadParameter("unsupported argon2 version %q", version)
	}
	if err := parseParams(parts[3], &p); err != nil {
		return p, nil, nil, trace.Wrap(err)
	}
	salt, err := base64.RawStdEncoding.Strict().DecodeString(parts[4])
	if err != nil {
		return p, nil, nil, trace.BadParameter("malformed password hash: bad salt encoding")
	}
	key, err := base64.RawStdEncoding.Strict().DecodeString(parts[5])
	if err != nil {
		return p, nil, nil, trace.BadParameter("malformed password hash: bad key encoding")
	}
	p.SaltLength = uint32(len(salt))
	p.KeyLength = uint32(len(key))
	if err := p.check(); err != nil {
		return p, nil, nil, trace.BadParameter("malformed password hash: %v", err)
	}
	return p, salt, key, nil
}

func parseParams(s string, p *Params) error {
	fields := strings.Split(s, ",")
	if len(fields) != 3 {
		return trace.BadParameter("malformed password hash: expected m=..,t=..,p=..")
	}
	var seen [3]bool
	for _, f := range fields {
		name, value, ok := strings.Cut(f, "=")
		if !ok {
			return trace.BadParameter("malformed password hash: bad parameter %q", f)
		}
		n, err := strconv.ParseUint(value, 10, 32)
		if err != nil {
			return trace.BadParameter("malformed password hash: bad value for %q", name)
		}
		switch name {
		case "m":
			p.Memory, seen[0] = uint32(n), true
		case "t":
			p.Time, seen[1] = uint32(n), true
		case "p":
			if n > 255 {
				return trace.BadParameter("malformed password hash: parallelism %d exceeds 255", n)
			}
			p.Threads, seen[2] = uint8(n), true
		default:
			return trace.BadParameter("malformed password hash: unknown parameter %q", name)
		}
	}
	if !seen[0] || !seen[1] || !seen[2] {
		return trace.BadParameter("malformed password hash: m, t and p are all required")
	}
	return nil
}
