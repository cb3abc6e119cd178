package authn

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"strings"
	"sync"
	"time"

	"github.com/gravitational/trace"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
)

const (
	// TOTPPeriod is the step length; 30 s is what every authenticator app assumes.
	TOTPPeriod = 30 * time.Second
	// TOTPSkew is how many steps either side of now are accepted, to absorb
	// clock drift between the server and the user's phone.
	TOTPSkew = 1

	totpDigits = otp.DigitsSix
	// maxTOTPSecretLength bounds the base32 secret we will decode.
	maxTOTPSecretLength = 256
)

const errBadTOTP = "invalid one-time code"

// NewTOTP generates a fresh 160-bit TOTP secret and the otpauth:// URL that
// authenticator apps consume (typically rendered as a QR code).
func NewTOTP(issuer, account string) (secret string, url string, err error) {
	if issuer == "" {
		return "", "", trace.BadParameter("TOTP issuer is required")
	}
	if account == "" {
		return "", "", trace.BadParameter("TOTP account name is required")
	}
	key, err := totp.Generate(totp.GenerateOpts{
		Issuer:      issuer,
		AccountName: account,
		Period:      uint(TOTPPeriod / time.Second),
		SecretSize:  20,
		Digits:      totpDigits,
		Algorithm:   otp.AlgorithmSHA1,
	})
	if err != nil {
		return "", "", trace.Wrap(err, "generating TOTP secret")
	}
	return key.Secret(), key.URL(), nil
}

// ValidateTOTP checks code against secret at now, accepting ±TOTPSkew steps.
// It does not prevent replay; use ValidateTOTPStep with a TOTPReplayCache
// for that.
func ValidateTOTP(secret, code string, now time.Time) error {
	_, err := ValidateTOTPStep(secret, code, now)
	return trace.Wrap(err)
}

// ValidateTOTPStep is ValidateTOTP that also returns the time step the code
// matched, which is what a replay cache must remember.
func ValidateTOTPStep(secret, code string, now time.Time) (uint64, error) {
	if secret == "" || len(secret) > maxTOTPSecretLength {
		return 0, trace.BadParameter("malformed TOTP secret")
	}
	code = strings.TrimSpace(code)
	if len(code) != totpDigits.Length() || strings.Trim(code, "0123456789") != "" {
		return 0, trace.AccessDenied(errBadTOTP)
	}
	opts := totp.ValidateOpts{
		Period:    uint(TOTPPeriod / time.Second),
		Digits:    totpDigits,
		Algorithm: otp.AlgorithmSHA1,
	}
	period := int64(TOTPPeriod / time.Second)
	current := now.Unix() / period
	// Every candidate is computed and compared so the time taken does not
	// reveal which step (if any) matched.
	var matched uint64
	found := 0
	for d := int64(-TOTPSkew); d <= TOTPSkew; d++ {
		step := current + d
		if step < 0 {
			continue
		}
		want, err := totp.GenerateCodeCustom(secret, time.Unix(step*period, 0), opts)
		if err != nil {
			return 0, trace.BadParameter("malformed TOTP secret")
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 && found == 0 {
			matched, found = uint64(step), 1
		}
	}
	if found == 0 {
		return 0, trace.AccessDenied(errBadTOTP)
	}
	return matched, nil
}

// TOTPReplayCacheConfig configures a TOTPReplayCache.
type TOTPReplayCacheConfig struct {
	// MaxKeys bounds memory; defaults to 100000.
	MaxKeys int
	// Clock returns the current time; defaults to time.Now.
	Clock func() time.Time
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *TOTPReplayCacheConfig) CheckAndSetDefaults() error {
	if c.MaxKeys < 0 {
		return trace.BadParameter("MaxKeys must not be negative")
	}
	if c.MaxKeys == 0 {
		c.MaxKeys = 100_000
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return nil
}

// TOTPReplayCache remembers the last accepted time step per key (typically
// per user or per MFA device) so a code observed over a shoulder or in a
// phishing proxy cannot be used a second time. It is in-memory: a cluster of
// auth servers needs the step persisted alongside the device instead.
type TOTPReplayCache struct {
	cfg  TOTPReplayCacheConfig
	mu   sync.Mutex
	last map[string]uint64
}

// NewTOTPReplayCache creates an empty cache.
func NewTOTPReplayCache(cfg TOTPReplayCacheConfig) (*TOTPReplayCache, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return &TOTPReplayCache{cfg: cfg, last: make(map[string]uint64)}, nil
}

// Validate checks code like ValidateTOTP and additionally rejects any code
// whose step is not newer than the last step accepted for key. Rejecting
// older steps too (not just the same one) stops an attacker holding the
// previous code from using it inside the skew window.
func (c *TOTPReplayCache) Validate(key, secret, code string) error {
	if key == "" {
		return trace.BadParameter("TOTP replay key is required")
	}
	now := c.cfg.Clock()
	step, err := ValidateTOTPStep(secret, code, now)
	if err != nil {
		return trace.Wrap(err)
	}
	// Keys may be user names; hash them so the map holds fixed-size entries.
	k := hashKey(key)
	c.mu.Lock()
	defer c.mu.Unlock()
	if last, ok := c.last[k]; ok && step <= last {
		return trace.AccessDenied("one-time code has already been used; wait for the next code")
	}
	if _, ok := c.last[k]; !ok && len(c.last) >= c.cfg.MaxKeys {
		c.evictLocked(now)
	}
	c.last[k] = step
	return nil
}

// evictLocked drops steps too old to matter: once now has moved more than
// TOTPSkew steps past an entry, no code for that step can validate anyway.
func (c *TOTPReplayCache) evictLocked(now time.Time) {
	current := uint64(now.Unix() / int64(TOTPPeriod/time.Second))
	for k, step := range c.last {
		if step+TOTPSkew < current {
			delete(c.last, k)
		}
	}
	// Still full of live entries: drop arbitrary ones rather than grow
	// without bound. This can only re-open a replay window of ~90 s for
	// the evicted keys, which is preferable to refusing logins.
	for k := range c.last {
		if len(c.last) < c.cfg.MaxKeys*9/10 {
			break
		}
		delete(c.last, k)
	}
}

func hashKey(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:16])
}
