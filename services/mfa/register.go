package mfa

import (
	"context"
	"encoding/json"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/services/storage"
)

// Registration states.
const (
	regPending = "pending"
	regDone    = "done"
)

// Registration is a device being added.
type Registration struct {
	User    string    `json:"user"`
	Name    string    `json:"name"`
	Type    string    `json:"type"`
	Expires time.Time `json:"expires"`
	// TOTPSecret is sealed; TOTPURL is the otpauth:// URL to show (it
	// holds the secret, so it is only returned to the user adding it).
	TOTPSecret []byte `json:"totp_secret,omitempty"`
	TOTPURL    string `json:"-"`
	// WebAuthnOptions go to credentials.create; WebAuthnState stays here.
	WebAuthnOptions []byte `json:"webauthn_options,omitempty"`
	WebAuthnState   []byte `json:"webauthn_state,omitempty"`
	State           string `json:"state"`
	DeviceID        string `json:"device_id"`

	revision int64
}

// Done says whether the device was added.
func (r *Registration) Done() bool { return r.State == regDone }

// RegistrationRequest asks to add a device.
type RegistrationRequest struct {
	User string
	Name string
	Type string
	// Proven must be true when the user already has a device: the caller
	// checked one (Redeem of a TargetDevice challenge, or CheckTOTP), so
	// that a stolen login alone cannot add a device of the thief's.
	Proven bool
}

// BeginRegistration starts adding a device and returns the registration
// id with what the user needs (TOTP secret URL, or WebAuthn options).
func (s *Service) BeginRegistration(ctx context.Context, req RegistrationRequest) (string, *Registration, error) {
	if err := checkUser(req.User); err != nil {
		return "", nil, trace.Wrap(err)
	}
	if err := types.ValidateName("--name", req.Name); err != nil {
		return "", nil, trace.Wrap(err)
	}
	devs, err := s.Devices(ctx, req.User)
	if err != nil {
		return "", nil, trace.Wrap(err)
	}
	if len(devs) > 0 && !req.Proven {
		return "", nil, trace.AccessDenied("you already have an MFA device: adding another needs a check with an existing one")
	}
	for _, d := range devs {
		if d.Name == req.Name {
			return "", nil, trace.AlreadyExists("you already have an MFA device named %q; choose another --name", req.Name)
		}
	}
	if len(devs) >= MaxDevices {
		return "", nil, trace.LimitExceeded("you have %d MFA devices, the most allowed; remove one first", len(devs))
	}
	id, err := newID()
	if err != nil {
		return "", nil, trace.Wrap(err)
	}
	r := &Registration{
		User: req.User, Name: req.Name, Type: req.Type,
		Expires:  s.cfg.Clock().Add(RegistrationTTL).UTC(),
		State:    regPending,
		DeviceID: newDeviceID(),
	}
	switch req.Type {
	case TypeTOTP:
		secret, url, err := authn.NewTOTP(s.cfg.Issuer, req.User)
		if err != nil {
			return "", nil, trace.Wrap(err)
		}
		if r.TOTPSecret, err = s.cfg.Sealer.Seal([]byte(secret), totpAAD(req.User, r.DeviceID)); err != nil {
			return "", nil, trace.Wrap(err)
		}
		r.TOTPURL = url
	case TypeWebAuthn:
		if s.cfg.WebAuthn == nil {
			return "", nil, trace.BadParameter("security keys need the gateway's public address to be a DNS name (public_addr); use --type totp")
		}
		u, err := s.webAuthnUser(ctx, req.User, devs)
		if err != nil {
			return "", nil, trace.Wrap(err)
		}
		if r.WebAuthnOptions, r.WebAuthnState, err = s.cfg.WebAuthn.BeginRegistration(u); err != nil {
			return "", nil, trace.Wrap(err)
		}
	default:
		return "", nil, trace.BadParameter("--type: %q is not one of totp, webauthn", req.Type)
	}
	data, err := json.Marshal(r)
	if err != nil {
		return "", nil, trace.Wrap(err)
	}
	if _, err := s.cfg.Backend.Create(ctx, storage.Item{Key: registrationPrefix + hashID(id), Value: data, Expires: r.Expires.Add(keepAfterExpiry)}); err != nil {
		return "", nil, trace.Wrap(err)
	}
	return id, r, nil
}

// Registration returns user's registration id.
func (s *Service) Registration(ctx context.Context, user, id string) (*Registration, error) {
	if len(id) == 0 || len(id) > 128 {
		return nil, trace.NotFound("unknown device registration")
	}
	it, err := s.cfg.Backend.Get(ctx, registrationPrefix+hashID(id))
	if trace.IsNotFound(err) {
		return nil, trace.NotFound("unknown or expired device registration; start again with \"sigil mfa add\"")
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}
	r := &Registration{}
	if err := json.Unmarshal(it.Value, r); err != nil {
		return nil, trace.Wrap(err, "corrupt device registration")
	}
	r.revision = it.Revision
	if r.User != user {
		return nil, trace.AccessDenied("this device registration belongs to another user; sign in as %q", r.User)
	}
	if r.State == regPending && !s.cfg.Clock().Before(r.Expires) {
		return nil, trace.AccessDenied("this device registration expired at %s; start again", r.Expires.Format(time.RFC3339))
	}
	return r, nil
}

// FinishRegistration completes user's registration id with a TOTP code
// from the new app, or the browser's WebAuthn attestation, and stores the
// device.
func (s *Service) FinishRegistration(ctx context.Context, user, id, totpCode string, webAuthnResponse []byte) (*Device, error) {
	r, err := s.Registration(ctx, user, id)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if r.State != regPending {
		return nil, trace.AlreadyExists("MFA device %q was already added", r.Name)
	}
	now := s.cfg.Clock().UTC()
	d := &Device{ID: r.DeviceID, User: r.User, Name: r.Name, Type: r.Type, AddedAt: now}
	switch r.Type {
	case TypeTOTP:
		secret, err := s.cfg.Sealer.Open(r.TOTPSecret, totpAAD(r.User, r.DeviceID))
		if err != nil {
			return nil, trace.Wrap(err)
		}
		step, err := authn.ValidateTOTPStep(string(secret), totpCode, now)
		if err != nil {
			return nil, trace.AccessDenied("the one-time code does not match the new device: check the app's clock and enter the current code")
		}
		d.TOTPSecret = r.TOTPSecret
		// The code that proved the app is spent too.
		d.TOTPLastStep = step
	case TypeWebAuthn:
		if s.cfg.WebAuthn == nil {
			return nil, trace.BadParameter("security keys are not available on this gateway")
		}
		devs, err := s.Devices(ctx, user)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		u, err := s.webAuthnUser(ctx, user, devs)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		cred, err := s.cfg.WebAuthn.FinishRegistration(u, r.WebAuthnState, webAuthnResponse)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		d.Credential = cred
	}
	// Claim the registration first: two finishing requests add one device.
	r.State = regDone
	r.WebAuthnState = nil
	data, err := json.Marshal(r)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if _, err := s.cfg.Backend.CompareAndSwap(ctx, r.revision, storage.Item{Key: registrationPrefix + hashID(id), Value: data, Expires: r.Expires.Add(keepAfterExpiry)}); err != nil {
		if trace.IsCompareFailed(err) {
			return nil, trace.AlreadyExists("MFA device %q is being added by another request", r.Name)
		}
		return nil, trace.Wrap(err)
	}
	if err := s.createDevice(ctx, d); err != nil {
		return nil, trace.Wrap(err)
	}
	return d.Public(), nil
}
