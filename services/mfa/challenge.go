package mfa

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/services/storage"
)

// Target kinds: what a challenge unlocks.
const (
	// TargetDatabase is a per-session MFA check before a database session.
	TargetDatabase = "db"
	// TargetLogin is the second factor of a password login.
	TargetLogin = "login"
	// TargetDevice proves an existing device before another is added.
	TargetDevice = "mfa_device"
	// TargetReview is a review of one access request in the console, by
	// a reviewer whose role requires MFA.
	TargetReview = "review"
)

// Challenge states.
const (
	statePending  = "pending"
	stateVerified = "verified"
	stateRedeemed = "redeemed"
)

// Target is what a challenge is for. A challenge solved for one target is
// refused for any other.
type Target struct {
	Kind     string `json:"kind"`
	Database string `json:"database,omitempty"`
	DBUser   string `json:"db_user,omitempty"`
	DBName   string `json:"db_name,omitempty"`
	// Request is the access request of a TargetReview.
	Request string `json:"request,omitempty"`
}

// String describes the target for people.
func (t Target) String() string {
	switch t.Kind {
	case TargetDatabase:
		s := fmt.Sprintf("database %s as db user %s", t.Database, t.DBUser)
		if t.DBName != "" {
			s += fmt.Sprintf(" (db name %s)", t.DBName)
		}
		return s
	case TargetLogin:
		return "a login"
	case TargetDevice:
		return "adding an MFA device"
	case TargetReview:
		// Access requests and agents' write approvals share this target.
		return "reviewing request " + t.Request
	}
	return t.Kind
}

// Challenge is a pending MFA check.
type Challenge struct {
	User   string `json:"user"`
	Target Target `json:"target"`
	// BindingHash is the SHA-256 of what the client binds the challenge
	// to: the public key to be signed, the login certificate's key, or a
	// web session; only the same client can redeem it.
	BindingHash []byte    `json:"binding_hash"`
	ClientAddr  string    `json:"client_addr,omitempty"`
	Created     time.Time `json:"created"`
	Expires     time.Time `json:"expires"`
	AllowTOTP   bool      `json:"allow_totp,omitempty"`
	// WebAuthnOptions is what the browser passes to credentials.get;
	// WebAuthnState stays on the server. Empty when the user has no key.
	WebAuthnOptions []byte `json:"webauthn_options,omitempty"`
	WebAuthnState   []byte `json:"webauthn_state,omitempty"`
	State           string `json:"state"`
	// Device is the one that solved the challenge.
	Device *Used `json:"device,omitempty"`

	// Ref is the stored name (see Ref), filled on read.
	Ref      string `json:"-"`
	revision int64
}

// Methods names how the challenge can be solved: "totp", "webauthn".
func (c *Challenge) Methods() []string {
	var m []string
	if c.AllowTOTP {
		m = append(m, TypeTOTP)
	}
	if len(c.WebAuthnOptions) > 0 {
		m = append(m, TypeWebAuthn)
	}
	return m
}

// Pending says whether the challenge still waits for a device.
func (c *Challenge) Pending() bool { return c.State == statePending }

// ChallengeRequest asks for a challenge.
type ChallengeRequest struct {
	User       string
	Target     Target
	Binding    []byte
	ClientAddr string
	// AllowTOTP and AllowWebAuthn restrict the device types (a login's
	// second factor may be limited by auth.second_factor).
	AllowTOTP, AllowWebAuthn bool
}

// CreateChallenge stores a challenge for req and returns its id. It fails
// when the user has no device of an allowed type.
func (s *Service) CreateChallenge(ctx context.Context, req ChallengeRequest) (string, *Challenge, error) {
	if err := checkUser(req.User); err != nil {
		return "", nil, trace.Wrap(err)
	}
	if len(req.Binding) == 0 {
		return "", nil, trace.BadParameter("an MFA challenge needs a client binding")
	}
	switch req.Target.Kind {
	case TargetDatabase, TargetLogin, TargetDevice, TargetReview:
	default:
		return "", nil, trace.BadParameter("unknown MFA target kind %q", req.Target.Kind)
	}
	devs, err := s.Devices(ctx, req.User)
	if err != nil {
		return "", nil, trace.Wrap(err)
	}
	now := s.cfg.Clock()
	sum := sha256.Sum256(req.Binding)
	c := &Challenge{
		User:        req.User,
		Target:      req.Target,
		BindingHash: sum[:],
		ClientAddr:  req.ClientAddr,
		Created:     now.UTC(),
		Expires:     now.Add(ChallengeTTL).UTC(),
		State:       statePending,
	}
	hasKey := false
	for _, d := range devs {
		switch d.Type {
		case TypeTOTP:
			c.AllowTOTP = c.AllowTOTP || req.AllowTOTP
		case TypeWebAuthn:
			hasKey = true
		}
	}
	if hasKey && req.AllowWebAuthn && s.cfg.WebAuthn != nil {
		u, err := s.webAuthnUser(ctx, req.User, devs)
		if err != nil {
			return "", nil, trace.Wrap(err)
		}
		if c.WebAuthnOptions, c.WebAuthnState, err = s.cfg.WebAuthn.BeginAssertion(u); err != nil {
			return "", nil, trace.Wrap(err)
		}
	}
	if len(c.Methods()) == 0 {
		return "", nil, trace.AccessDenied("%s needs an MFA check, and user %q has no %s; add one with \"sigil mfa add --type totp|webauthn --name NAME\" or in the web console", req.Target, req.User, describeAllowed(req.AllowTOTP, req.AllowWebAuthn))
	}
	id, err := newID()
	if err != nil {
		return "", nil, trace.Wrap(err)
	}
	c.Ref = hashID(id)
	data, err := json.Marshal(c)
	if err != nil {
		return "", nil, trace.Wrap(err)
	}
	if _, err := s.cfg.Backend.Create(ctx, storage.Item{Key: challengePrefix + c.Ref, Value: data, Expires: c.Expires.Add(keepAfterExpiry)}); err != nil {
		return "", nil, trace.Wrap(err)
	}
	return id, c, nil
}

func describeAllowed(totp, webAuthn bool) string {
	switch {
	case totp && webAuthn:
		return "MFA device (one-time code app or security key)"
	case totp:
		return "one-time code (TOTP) device"
	default:
		return "security key (WebAuthn)"
	}
}

// Ref is the name a challenge is stored under (the SHA-256 of its id): it
// can be shown to its signed-in user without revealing the id.
func Ref(id string) string { return hashID(id) }

// Challenge returns a challenge by id, for showing it (the approval page).
// Expired ones are NotFound.
func (s *Service) Challenge(ctx context.Context, id string) (*Challenge, error) {
	if len(id) == 0 || len(id) > 128 {
		return nil, trace.NotFound("unknown MFA challenge")
	}
	return s.ChallengeByRef(ctx, hashID(id))
}

// ChallengeByRef is Challenge by Ref: for the console's list of pending
// approvals, whose caller must check the user.
func (s *Service) ChallengeByRef(ctx context.Context, ref string) (*Challenge, error) {
	c, err := s.getChallengeRef(ctx, ref)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if !s.cfg.Clock().Before(c.Expires) {
		return nil, trace.NotFound("this MFA challenge expired at %s; run the command again", c.Expires.Format(time.RFC3339))
	}
	return c, nil
}

// Pending returns user's challenges that wait for a security key, newest
// first.
func (s *Service) Pending(ctx context.Context, user string) ([]*Challenge, error) {
	items, err := s.cfg.Backend.List(ctx, challengePrefix, 0)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	now := s.cfg.Clock()
	var out []*Challenge
	for _, it := range items {
		c := &Challenge{}
		if err := json.Unmarshal(it.Value, c); err != nil {
			continue
		}
		if c.User != user || c.State != statePending || len(c.WebAuthnOptions) == 0 || !now.Before(c.Expires) {
			continue
		}
		c.Ref = it.Key[len(challengePrefix):]
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, nil
}

func (s *Service) getChallenge(ctx context.Context, id string) (*Challenge, error) {
	if len(id) == 0 || len(id) > 128 {
		return nil, trace.NotFound("unknown MFA challenge")
	}
	return s.getChallengeRef(ctx, hashID(id))
}

func (s *Service) getChallengeRef(ctx context.Context, ref string) (*Challenge, error) {
	if len(ref) != 64 || strings.Trim(ref, "0123456789abcdef") != "" {
		return nil, trace.NotFound("unknown MFA challenge")
	}
	it, err := s.cfg.Backend.Get(ctx, challengePrefix+ref)
	if trace.IsNotFound(err) {
		return nil, trace.NotFound("unknown or expired MFA challenge; run the command again")
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}
	c := &Challenge{}
	if err := json.Unmarshal(it.Value, c); err != nil {
		return nil, trace.Wrap(err, "corrupt MFA challenge")
	}
	c.revision = it.Revision
	c.Ref = ref
	return c, nil
}

func (s *Service) putChallenge(ctx context.Context, c *Challenge) error {
	data, err := json.Marshal(c)
	if err != nil {
		return trace.Wrap(err)
	}
	_, err = s.cfg.Backend.CompareAndSwap(ctx, c.revision, storage.Item{Key: challengePrefix + c.Ref, Value: data, Expires: c.Expires.Add(keepAfterExpiry)})
	if trace.IsCompareFailed(err) {
		return trace.AccessDenied("this MFA challenge was used by another request at the same time")
	}
	return trace.Wrap(err)
}

// checkLive refuses a challenge that expired or is no longer pending.
func (s *Service) checkLive(c *Challenge) error {
	if !s.cfg.Clock().Before(c.Expires) {
		return trace.AccessDenied("this MFA challenge expired at %s (challenges last %s); run the command again", c.Expires.Format(time.RFC3339), ChallengeTTL)
	}
	if c.State == stateRedeemed {
		return trace.AccessDenied("this MFA challenge was already used; each one works once, run the command again")
	}
	return nil
}

// VerifyWebAuthn checks a browser's assertion for challenge id and marks
// it verified. Anyone holding the id may try, but only a key registered
// to the challenge's user can pass.
func (s *Service) VerifyWebAuthn(ctx context.Context, id string, response []byte) (*Challenge, error) {
	if len(id) == 0 || len(id) > 128 {
		return nil, trace.NotFound("unknown MFA challenge")
	}
	return s.VerifyWebAuthnRef(ctx, hashID(id), response)
}

// VerifyWebAuthnRef is VerifyWebAuthn by Ref.
func (s *Service) VerifyWebAuthnRef(ctx context.Context, ref string, response []byte) (*Challenge, error) {
	c, err := s.getChallengeRef(ctx, ref)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if err := s.checkLive(c); err != nil {
		return nil, trace.Wrap(err)
	}
	if c.State != statePending {
		return nil, trace.AccessDenied("this MFA challenge was already approved; return to your terminal")
	}
	if s.cfg.WebAuthn == nil || len(c.WebAuthnState) == 0 {
		return nil, trace.BadParameter("this MFA challenge cannot be solved with a security key")
	}
	devs, err := s.Devices(ctx, c.User)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	u, err := s.webAuthnUser(ctx, c.User, devs)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	cred, err := s.cfg.WebAuthn.FinishAssertion(u, c.WebAuthnState, response)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	var dev *Device
	for _, d := range devs {
		if d.Type == TypeWebAuthn && d.Credential != nil && subtle.ConstantTimeCompare(d.Credential.ID, cred.ID) == 1 {
			dev = d
		}
	}
	if dev == nil {
		return nil, trace.AccessDenied("this security key is not registered to %q", c.User)
	}
	// The new counter is stored before the challenge is marked: a
	// concurrent assertion with the same counter then fails the swap.
	dev.Credential.Authenticator = cred.Authenticator
	dev.Credential.Flags = cred.Flags
	dev.LastUsed = s.cfg.Clock().UTC()
	if err := s.updateDevice(ctx, dev); err != nil {
		return nil, trace.Wrap(err)
	}
	c.State = stateVerified
	c.Device = &Used{DeviceID: dev.ID, Name: dev.Name, Type: TypeWebAuthn}
	// The assertion state is spent: it must never verify twice.
	c.WebAuthnState = nil
	if err := s.putChallenge(ctx, c); err != nil {
		return nil, trace.Wrap(err)
	}
	return c, nil
}

// RedeemRequest is a client asking for what a challenge unlocks.
type RedeemRequest struct {
	ID      string
	User    string
	Target  Target
	Binding []byte
	// TOTPCode solves the challenge in the same call; empty to collect a
	// WebAuthn approval made in the browser.
	TOTPCode string
}

// Redeem checks that the challenge belongs to req's user, target and
// client, solves it with a TOTP code or takes its WebAuthn approval, and
// spends it: the device is returned once, never again. pending is true
// (and nothing spent) while a WebAuthn approval is still awaited.
func (s *Service) Redeem(ctx context.Context, req RedeemRequest) (used *Used, pending bool, err error) {
	c, err := s.getChallenge(ctx, req.ID)
	if err != nil {
		return nil, false, trace.Wrap(err)
	}
	if c.User != req.User {
		return nil, false, trace.AccessDenied("this MFA challenge belongs to another user")
	}
	if c.Target != req.Target {
		return nil, false, trace.AccessDenied("this MFA challenge was created for %s, not %s; run the command again", c.Target, req.Target)
	}
	sum := sha256.Sum256(req.Binding)
	if len(req.Binding) == 0 || subtle.ConstantTimeCompare(sum[:], c.BindingHash) != 1 {
		return nil, false, trace.AccessDenied("this MFA challenge was created by another client (a different key); run the command again")
	}
	if err := s.checkLive(c); err != nil {
		return nil, false, trace.Wrap(err)
	}
	switch {
	case req.TOTPCode != "":
		if !c.AllowTOTP {
			return nil, false, trace.AccessDenied("this MFA challenge cannot be solved with a one-time code; approve it with your security key")
		}
		if c.State != statePending {
			return nil, false, trace.AccessDenied("this MFA challenge was already approved")
		}
		dev, err := s.CheckTOTP(ctx, c.User, req.TOTPCode)
		if err != nil {
			return nil, false, trace.Wrap(err)
		}
		c.Device = dev
	case c.State == statePending:
		return nil, true, nil
	}
	c.State = stateRedeemed
	c.WebAuthnState = nil
	if err := s.putChallenge(ctx, c); err != nil {
		return nil, false, trace.Wrap(err)
	}
	return c.Device, false, nil
}
