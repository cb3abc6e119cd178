package mfa

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"sort"
	"time"

	"github.com/go-webauthn/webauthn/webauthn"
	"github.com/google/uuid"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/services/storage"
)

// Device types.
const (
	TypeTOTP     = "totp"
	TypeWebAuthn = "webauthn"
)

// Storage keys. Challenges and registrations are keyed by the SHA-256 of
// their id, so a storage dump holds no usable link.
const (
	devicePrefix       = "/mfa/devices/"
	handlePrefix       = "/mfa/handles/"
	challengePrefix    = "/mfa/challenges/"
	registrationPrefix = "/mfa/registrations/"
)

const (
	// ChallengeTTL is how long a challenge can be solved.
	ChallengeTTL = 60 * time.Second
	// RegistrationTTL is how long a device registration may take.
	RegistrationTTL = 5 * time.Minute
	// MaxDevices bounds the devices of one user.
	MaxDevices = 20
	// keepAfterExpiry keeps a dead challenge a little longer, so that a
	// late attempt hears "expired" or "already used" rather than "unknown".
	keepAfterExpiry = 5 * time.Minute
)

// Config configures the service.
type Config struct {
	Backend storage.Backend
	// Sealer encrypts TOTP secrets at rest.
	Sealer ca.Sealer
	// WebAuthn is the relying party; nil disables security keys (the
	// gateway's public address is an IP address).
	WebAuthn *authn.WebAuthn
	// Issuer names the cluster in authenticator apps.
	Issuer string
	Clock  func() time.Time
	Logger *slog.Logger
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	switch {
	case c.Backend == nil:
		return trace.BadParameter("mfa: missing Backend")
	case c.Sealer == nil:
		return trace.BadParameter("mfa: missing Sealer")
	}
	if c.Issuer == "" {
		c.Issuer = "Sigil"
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Service manages MFA devices and challenges.
type Service struct {
	cfg Config
}

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return &Service{cfg: cfg}, nil
}

// WebAuthn is the relying party, nil when security keys are unavailable.
func (s *Service) WebAuthn() *authn.WebAuthn { return s.cfg.WebAuthn }

// Device is one registered second factor of a user.
type Device struct {
	ID       string    `json:"id"`
	User     string    `json:"user"`
	Name     string    `json:"name"`
	Type     string    `json:"type"`
	AddedAt  time.Time `json:"added_at"`
	LastUsed time.Time `json:"last_used,omitempty"`
	// TOTPSecret is sealed; TOTPLastStep is the newest time step accepted,
	// so a code cannot be used twice (nor an older one).
	TOTPSecret   []byte `json:"totp_secret,omitempty"`
	TOTPLastStep uint64 `json:"totp_last_step,omitempty"`
	// Credential is the WebAuthn public key with its sign counter.
	Credential *webauthn.Credential `json:"credential,omitempty"`

	revision int64
}

// Public is the device without secrets, for listing.
func (d *Device) Public() *Device {
	return &Device{ID: d.ID, User: d.User, Name: d.Name, Type: d.Type, AddedAt: d.AddedAt, LastUsed: d.LastUsed}
}

func deviceKey(user, id string) string { return devicePrefix + user + "/" + id }

func hashID(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])
}

func totpAAD(user, id string) []byte { return []byte("sigil-mfa-totp:" + user + "/" + id) }

// checkUser refuses names that could not be users (they become key parts).
func checkUser(user string) error {
	return trace.Wrap(types.ValidateName("user", user))
}

// Devices returns user's devices sorted by name, secrets included: callers
// must show only Public().
func (s *Service) Devices(ctx context.Context, user string) ([]*Device, error) {
	if err := checkUser(user); err != nil {
		return nil, trace.Wrap(err)
	}
	items, err := s.cfg.Backend.List(ctx, devicePrefix+user+"/", 0)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	out := make([]*Device, 0, len(items))
	for _, it := range items {
		d := &Device{}
		if err := json.Unmarshal(it.Value, d); err != nil {
			return nil, trace.Wrap(err, "corrupt MFA device %s", it.Key)
		}
		d.revision = it.Revision
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// HasDevices says which device types user has.
func (s *Service) HasDevices(ctx context.Context, user string) (totp, webAuthn bool, err error) {
	devs, err := s.Devices(ctx, user)
	if err != nil {
		return false, false, trace.Wrap(err)
	}
	for _, d := range devs {
		switch d.Type {
		case TypeTOTP:
			totp = true
		case TypeWebAuthn:
			webAuthn = s.cfg.WebAuthn != nil
		}
	}
	return totp, webAuthn, nil
}

// RemoveDevice deletes user's device named name.
func (s *Service) RemoveDevice(ctx context.Context, user, name string) (*Device, error) {
	devs, err := s.Devices(ctx, user)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	for _, d := range devs {
		if d.Name == name {
			if err := s.cfg.Backend.Delete(ctx, deviceKey(user, d.ID)); err != nil {
				return nil, trace.Wrap(err)
			}
			return d.Public(), nil
		}
	}
	return nil, trace.NotFound("you have no MFA device named %q; see \"sigil mfa ls\"", name)
}

// DeleteUser removes every device of user (the user was deleted).
func (s *Service) DeleteUser(ctx context.Context, user string) error {
	devs, err := s.Devices(ctx, user)
	if err != nil {
		return trace.Wrap(err)
	}
	for _, d := range devs {
		if err := s.cfg.Backend.Delete(ctx, deviceKey(user, d.ID)); err != nil && !trace.IsNotFound(err) {
			return trace.Wrap(err)
		}
	}
	if err := s.cfg.Backend.Delete(ctx, handlePrefix+user); err != nil && !trace.IsNotFound(err) {
		return trace.Wrap(err)
	}
	return nil
}

// updateDevice writes d if nobody changed it since it was read: a sign
// counter or TOTP step must never move backwards through a race.
func (s *Service) updateDevice(ctx context.Context, d *Device) error {
	data, err := json.Marshal(d)
	if err != nil {
		return trace.Wrap(err)
	}
	_, err = s.cfg.Backend.CompareAndSwap(ctx, d.revision, storage.Item{Key: deviceKey(d.User, d.ID), Value: data})
	if trace.IsCompareFailed(err) {
		return trace.AccessDenied("the MFA device %q was used by another request at the same time; try again", d.Name)
	}
	return trace.Wrap(err)
}

func (s *Service) createDevice(ctx context.Context, d *Device) error {
	devs, err := s.Devices(ctx, d.User)
	if err != nil {
		return trace.Wrap(err)
	}
	if len(devs) >= MaxDevices {
		return trace.LimitExceeded("you have %d MFA devices, the most allowed; remove one first (sigil mfa rm NAME)", len(devs))
	}
	for _, o := range devs {
		if o.Name == d.Name {
			return trace.AlreadyExists("you already have an MFA device named %q; choose another --name", d.Name)
		}
	}
	data, err := json.Marshal(d)
	if err != nil {
		return trace.Wrap(err)
	}
	_, err = s.cfg.Backend.Create(ctx, storage.Item{Key: deviceKey(d.User, d.ID), Value: data})
	return trace.Wrap(err)
}

// userHandle returns user's WebAuthn user handle, creating a random one on
// first use: names must not be the handle, since a later user of the same
// name must not match an earlier user's keys.
func (s *Service) userHandle(ctx context.Context, user string) ([]byte, error) {
	it, err := s.cfg.Backend.Get(ctx, handlePrefix+user)
	if err == nil {
		return it.Value, nil
	}
	if !trace.IsNotFound(err) {
		return nil, trace.Wrap(err)
	}
	h := make([]byte, 32)
	if _, err := rand.Read(h); err != nil {
		return nil, trace.Wrap(err)
	}
	if _, err := s.cfg.Backend.Create(ctx, storage.Item{Key: handlePrefix + user, Value: h}); err != nil {
		if trace.IsAlreadyExists(err) {
			return s.userHandle(ctx, user)
		}
		return nil, trace.Wrap(err)
	}
	return h, nil
}

// webAuthnUser is user as the relying party sees them: the handle and
// every registered key.
func (s *Service) webAuthnUser(ctx context.Context, user string, devs []*Device) (*authn.WebAuthnUser, error) {
	h, err := s.userHandle(ctx, user)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	u := &authn.WebAuthnUser{Handle: h, Name: user}
	for _, d := range devs {
		if d.Type == TypeWebAuthn && d.Credential != nil {
			u.Credentials = append(u.Credentials, *d.Credential)
		}
	}
	return u, nil
}

// Used is a device that just passed a check.
type Used struct {
	DeviceID string
	Name     string
	Type     string
}

// CheckTOTP accepts code from any of user's TOTP devices, once: the step
// it matched is stored, and that step or an older one is refused after.
func (s *Service) CheckTOTP(ctx context.Context, user, code string) (*Used, error) {
	devs, err := s.Devices(ctx, user)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	now := s.cfg.Clock()
	found := false
	for _, d := range devs {
		if d.Type != TypeTOTP {
			continue
		}
		found = true
		secret, err := s.cfg.Sealer.Open(d.TOTPSecret, totpAAD(d.User, d.ID))
		if err != nil {
			return nil, trace.Wrap(err, "unsealing the TOTP secret of device %q", d.Name)
		}
		step, err := authn.ValidateTOTPStep(string(secret), code, now)
		if err != nil {
			continue
		}
		if step <= d.TOTPLastStep {
			return nil, trace.AccessDenied("this one-time code was already used; wait for the next one")
		}
		d.TOTPLastStep = step
		d.LastUsed = now.UTC()
		if err := s.updateDevice(ctx, d); err != nil {
			return nil, trace.Wrap(err)
		}
		return &Used{DeviceID: d.ID, Name: d.Name, Type: TypeTOTP}, nil
	}
	if !found {
		return nil, trace.AccessDenied("you have no one-time code (TOTP) device; add one with \"sigil mfa add --type totp --name NAME\"")
	}
	return nil, trace.AccessDenied("invalid one-time code")
}

// newID returns a random id for a challenge or registration.
func newID() (string, error) {
	id, err := authn.NewToken()
	return id, trace.Wrap(err)
}

func newDeviceID() string { return uuid.NewString() }
