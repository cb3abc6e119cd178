package users

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/storage"
)

const (
	credentialsPrefix = "/credentials/"
	signupPrefix      = "/signup_tokens/"
	// DefaultSignupTTL is how long a signup link works.
	DefaultSignupTTL = time.Hour
)

// Config configures the users service.
type Config struct {
	Backend   storage.Backend
	Resources *resources.Store
	// PasswordParams are the argon2id parameters for new hashes.
	PasswordParams authn.Params
	SignupTTL      time.Duration
	// Emitter records completed signups (web and API alike).
	Emitter audit.Emitter
	Clock   func() time.Time
	Logger  *slog.Logger
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Backend == nil || c.Resources == nil {
		return trace.BadParameter("users: missing backend or resource store")
	}
	if c.PasswordParams == (authn.Params{}) {
		c.PasswordParams = authn.DefaultParams
	}
	if err := c.PasswordParams.CheckAndSetDefaults(); err != nil {
		return trace.Wrap(err)
	}
	if c.SignupTTL == 0 {
		c.SignupTTL = DefaultSignupTTL
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Emitter == nil {
		c.Emitter = audit.DiscardEmitter{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Service manages users.
type Service struct {
	cfg Config
	// dummyHash is compared against for unknown users so that a missing
	// user costs the same time as a wrong password.
	dummyHash []byte
}

// New returns a users Service.
func New(cfg Config) (*Service, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	dummy, err := authn.HashPasswordWithParams([]byte("sigil-dummy-password-for-timing"), cfg.PasswordParams)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return &Service{cfg: cfg, dummyHash: dummy}, nil
}

// credentials are kept apart from the user resource so that no API that
// returns users can leak them.
type credentials struct {
	PasswordHash []byte    `json:"password_hash"`
	TOTPSecret   string    `json:"totp_secret,omitempty"`
	UpdatedAt    time.Time `json:"updated_at"`
}

// signupToken is stored under the SHA-256 of the token so that a storage
// dump does not hold usable links.
type signupToken struct {
	User    string    `json:"user"`
	Expires time.Time `json:"expires"`
}

func tokenKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return signupPrefix + hex.EncodeToString(sum[:])
}

// Get returns a user.
func (s *Service) Get(ctx context.Context, name string) (*types.User, error) {
	return resources.Get[*types.User](ctx, s.cfg.Resources, types.KindUser, name)
}

// Add creates a user with no password and returns a signup token for it.
func (s *Service) Add(ctx context.Context, user *types.User) (*types.User, string, time.Time, error) {
	if user.Spec.CreatedAt.IsZero() {
		user.Spec.CreatedAt = s.cfg.Clock().UTC()
	}
	if _, err := s.cfg.Resources.Create(ctx, user); err != nil {
		return nil, "", time.Time{}, trace.Wrap(err)
	}
	token, expires, err := s.NewSignupToken(ctx, user.Metadata.Name)
	if err != nil {
		return nil, "", time.Time{}, trace.Wrap(err)
	}
	return user, token, expires, nil
}

// NewSignupToken issues a one-time token that lets name set a password.
func (s *Service) NewSignupToken(ctx context.Context, name string) (string, time.Time, error) {
	token, err := authn.NewToken()
	if err != nil {
		return "", time.Time{}, trace.Wrap(err)
	}
	expires := s.cfg.Clock().Add(s.cfg.SignupTTL).UTC()
	data, err := json.Marshal(signupToken{User: name, Expires: expires})
	if err != nil {
		return "", time.Time{}, trace.Wrap(err)
	}
	if _, err := s.cfg.Backend.Create(ctx, storage.Item{Key: tokenKey(token), Value: data, Expires: expires}); err != nil {
		return "", time.Time{}, trace.Wrap(err)
	}
	return token, expires, nil
}

// SignupUser returns the user a live signup token belongs to.
func (s *Service) SignupUser(ctx context.Context, token string) (string, error) {
	if len(token) == 0 || len(token) > 256 {
		return "", trace.BadParameter("the signup token is malformed")
	}
	item, err := s.cfg.Backend.Get(ctx, tokenKey(token))
	if trace.IsNotFound(err) {
		return "", trace.NotFound("the signup token is invalid, already used or expired; ask an admin for a new one (sigilctl users reset NAME)")
	}
	if err != nil {
		return "", trace.Wrap(err)
	}
	var st signupToken
	if err := json.Unmarshal(item.Value, &st); err != nil {
		return "", trace.Wrap(err)
	}
	if !s.cfg.Clock().Before(st.Expires) {
		return "", trace.NotFound("the signup token expired at %s; ask an admin for a new one", st.Expires.Format(time.RFC3339))
	}
	return st.User, nil
}

// Signup completes a signup token: checks the password policy, stores the
// hash and consumes the token. On any error nothing is written.
func (s *Service) Signup(ctx context.Context, token string, password []byte, clientAddr string) (string, error) {
	name, err := s.SignupUser(ctx, token)
	if err != nil {
		return "", trace.Wrap(err)
	}
	if err := authn.ValidatePassword(password); err != nil {
		return "", trace.Wrap(err)
	}
	if _, err := s.Get(ctx, name); err != nil {
		return "", trace.Wrap(err)
	}
	hash, err := authn.HashPasswordWithParams(password, s.cfg.PasswordParams)
	if err != nil {
		return "", trace.Wrap(err)
	}
	// Consume the token first: if two requests race, only one wins it.
	if err := s.cfg.Backend.Delete(ctx, tokenKey(token)); err != nil {
		if trace.IsNotFound(err) {
			return "", trace.NotFound("the signup token was already used")
		}
		return "", trace.Wrap(err)
	}
	if err := s.putCredentials(ctx, name, credentials{PasswordHash: hash, UpdatedAt: s.cfg.Clock().UTC()}); err != nil {
		return "", trace.Wrap(err)
	}
	if err := s.cfg.Emitter.Emit(ctx, &audit.Event{
		Type:       audit.EventResourceChanged,
		Identity:   &audit.Identity{User: name, Kind: types.IdentityKindHuman},
		Resource:   &audit.Resource{Kind: types.KindUser, Name: name},
		ClientAddr: clientAddr,
		Success:    true,
		Details:    map[string]string{"action": "signup"},
	}); err != nil {
		s.cfg.Logger.ErrorContext(ctx, "recording a signup in the audit log failed", "user", name, "error", err)
	}
	return name, nil
}

func (s *Service) putCredentials(ctx context.Context, name string, c credentials) error {
	data, err := json.Marshal(c)
	if err != nil {
		return trace.Wrap(err)
	}
	_, err = s.cfg.Backend.Put(ctx, storage.Item{Key: credentialsPrefix + name, Value: data})
	return trace.Wrap(err)
}

// Authenticate checks a password (and a TOTP code when the user enrolled
// one). Unknown users and wrong passwords get the same error and cost.
func (s *Service) Authenticate(ctx context.Context, name string, password []byte, otp string) (*types.User, error) {
	denied := trace.AccessDenied("invalid username or password")
	if types.ValidateName("user", name) != nil || len(password) == 0 || len(password) > 1024 {
		_ = authn.CheckPassword(s.dummyHash, password)
		return nil, denied
	}
	user, err := s.Get(ctx, name)
	if err != nil && !trace.IsNotFound(err) {
		return nil, trace.Wrap(err)
	}
	var creds credentials
	item, cerr := s.cfg.Backend.Get(ctx, credentialsPrefix+name)
	switch {
	case cerr == nil:
		if err := json.Unmarshal(item.Value, &creds); err != nil {
			return nil, trace.Wrap(err)
		}
	case trace.IsNotFound(cerr):
	default:
		return nil, trace.Wrap(cerr)
	}
	if user == nil || len(creds.PasswordHash) == 0 {
		_ = authn.CheckPassword(s.dummyHash, password)
		return nil, denied
	}
	if err := authn.CheckPassword(creds.PasswordHash, password); err != nil {
		return nil, denied
	}
	if creds.TOTPSecret != "" {
		if otp == "" {
			return nil, trace.AccessDenied("this user has a one-time code device: pass --otp CODE")
		}
		if err := authn.ValidateTOTP(creds.TOTPSecret, otp, s.cfg.Clock()); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	return user, nil
}

// Delete removes a user and their credentials.
func (s *Service) Delete(ctx context.Context, name string) error {
	if err := s.cfg.Resources.Delete(ctx, types.KindUser, name); err != nil {
		return trace.Wrap(err)
	}
	if err := s.cfg.Backend.Delete(ctx, credentialsPrefix+name); err != nil && !trace.IsNotFound(err) {
		return trace.Wrap(err)
	}
	// Pending signup links die with the user, or a link sent to this user
	// would claim a later user of the same name. Tokens are keyed by hash,
	// so scan them; only live (unexpired, unused) ones are listed.
	items, err := s.cfg.Backend.List(ctx, signupPrefix, 0)
	if err != nil {
		return trace.Wrap(err)
	}
	for _, item := range items {
		var st signupToken
		if err := json.Unmarshal(item.Value, &st); err != nil || st.User != name {
			continue
		}
		if err := s.cfg.Backend.Delete(ctx, item.Key); err != nil && !trace.IsNotFound(err) {
			return trace.Wrap(err)
		}
	}
	return nil
}

// HasUsers reports whether at least one user exists.
func (s *Service) HasUsers(ctx context.Context) (bool, error) {
	items, err := s.cfg.Backend.List(ctx, resources.KindPrefix(types.KindUser), 1)
	if err != nil {
		return false, trace.Wrap(err)
	}
	return len(items) > 0, nil
}

// PendingSignup reports whether name exists but has not set a password yet.
func (s *Service) PendingSignup(ctx context.Context, name string) (bool, error) {
	if _, err := s.Get(ctx, name); err != nil {
		if trace.IsNotFound(err) {
			return false, nil
		}
		return false, trace.Wrap(err)
	}
	_, err := s.cfg.Backend.Get(ctx, credentialsPrefix+name)
	if trace.IsNotFound(err) {
		return true, nil
	}
	return false, trace.Wrap(err)
}

// Reset removes name's credentials and issues a new signup token: the old
// password stops working at once.
func (s *Service) Reset(ctx context.Context, name string) (string, time.Time, error) {
	if _, err := s.Get(ctx, name); err != nil {
		return "", time.Time{}, trace.Wrap(err)
	}
	if err := s.cfg.Backend.Delete(ctx, credentialsPrefix+name); err != nil && !trace.IsNotFound(err) {
		return "", time.Time{}, trace.Wrap(err)
	}
	return s.NewSignupToken(ctx, name)
}
