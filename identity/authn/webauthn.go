package authn

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"
	"github.com/gravitational/trace"
)

// MaxWebAuthnResponse bounds a browser's attestation or assertion JSON.
// Real ones are a few KiB; attestation certificate chains stay far below.
const MaxWebAuthnResponse = 64 << 10

// webAuthnTimeout is what the browser is told to wait for a touch; the
// server-side lifetime of a ceremony is its caller's (a challenge's 60 s).
const webAuthnTimeout = 60 * time.Second

// WebAuthnConfig configures the relying party.
type WebAuthnConfig struct {
	// PublicAddr is the gateway's host:port as users open it. An IP
	// address cannot be a WebAuthn relying party ID, so a loopback IP
	// becomes "localhost" (open the console as https://localhost:PORT).
	PublicAddr string
	// RPID overrides the relying party ID derived from PublicAddr.
	RPID string
	// DisplayName is shown by browsers and authenticators.
	DisplayName string
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *WebAuthnConfig) CheckAndSetDefaults() error {
	host, port, err := net.SplitHostPort(c.PublicAddr)
	if err != nil || host == "" {
		return trace.BadParameter("webauthn: public address %q is not HOST:PORT", c.PublicAddr)
	}
	if c.RPID == "" {
		c.RPID = host
		if ip := net.ParseIP(host); ip != nil {
			if !ip.IsLoopback() {
				return trace.BadParameter("webauthn: the public address %q is an IP address, which cannot be a WebAuthn relying party; set public_addr to a DNS name", c.PublicAddr)
			}
			c.RPID = "localhost"
		}
	}
	if err := protocol.ValidateRPID(c.RPID); err != nil {
		return trace.BadParameter("webauthn: relying party ID %q: %v", c.RPID, err)
	}
	if _, err := strconv.Atoi(port); err != nil {
		return trace.BadParameter("webauthn: public address %q has no numeric port", c.PublicAddr)
	}
	if c.DisplayName == "" {
		c.DisplayName = "Sigil"
	}
	return nil
}

// WebAuthn runs registration and assertion ceremonies for one relying
// party (the gateway's web origin).
type WebAuthn struct {
	cfg    WebAuthnConfig
	origin string
	wa     *webauthn.WebAuthn
}

// NewWebAuthn returns the relying party.
func NewWebAuthn(cfg WebAuthnConfig) (*WebAuthn, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	_, port, _ := net.SplitHostPort(cfg.PublicAddr)
	origin := "https://" + net.JoinHostPort(cfg.RPID, port)
	if port == "443" {
		origin = "https://" + cfg.RPID
	}
	wa, err := webauthn.New(&webauthn.Config{
		RPID:          cfg.RPID,
		RPDisplayName: cfg.DisplayName,
		RPOrigins:     []string{origin},
		// Security keys need not prove their make: attestation would only
		// restrict which keys people may buy.
		AttestationPreference: protocol.PreferNoAttestation,
		AuthenticatorSelection: protocol.AuthenticatorSelection{
			UserVerification: protocol.VerificationDiscouraged,
		},
		Timeouts: webauthn.TimeoutsConfig{
			Login:        webauthn.TimeoutConfig{Timeout: webAuthnTimeout, TimeoutUVD: webAuthnTimeout},
			Registration: webauthn.TimeoutConfig{Timeout: webAuthnTimeout, TimeoutUVD: webAuthnTimeout},
		},
	})
	if err != nil {
		return nil, trace.Wrap(err, "configuring WebAuthn")
	}
	return &WebAuthn{cfg: cfg, origin: origin, wa: wa}, nil
}

// Origin is the web origin browsers must use for ceremonies, e.g.
// https://localhost:3443.
func (w *WebAuthn) Origin() string { return w.origin }

// RPID is the relying party ID.
func (w *WebAuthn) RPID() string { return w.cfg.RPID }

// WebAuthnUser is the account a ceremony is for.
type WebAuthnUser struct {
	// Handle is the opaque, random user handle (at most 64 bytes).
	Handle []byte
	Name   string
	// Credentials are the user's registered keys.
	Credentials []webauthn.Credential
}

func (u *WebAuthnUser) WebAuthnID() []byte                         { return u.Handle }
func (u *WebAuthnUser) WebAuthnName() string                       { return u.Name }
func (u *WebAuthnUser) WebAuthnDisplayName() string                { return u.Name }
func (u *WebAuthnUser) WebAuthnCredentials() []webauthn.Credential { return u.Credentials }

// WebAuthnSession is the server-side state between the two halves of a
// ceremony. It must stay on the server.
type WebAuthnSession []byte

// BeginRegistration returns the options for navigator.credentials.create
// (JSON, {"publicKey": ...}) and the state to keep. Keys the user already
// has are excluded, so one key is not registered twice.
func (w *WebAuthn) BeginRegistration(u *WebAuthnUser) ([]byte, WebAuthnSession, error) {
	excl := make([]protocol.CredentialDescriptor, 0, len(u.Credentials))
	for _, c := range u.Credentials {
		excl = append(excl, c.Descriptor())
	}
	creation, session, err := w.wa.BeginRegistration(u, webauthn.WithExclusions(excl),
		webauthn.WithResidentKeyRequirement(protocol.ResidentKeyRequirementDiscouraged))
	if err != nil {
		return nil, nil, trace.Wrap(err, "starting WebAuthn registration")
	}
	return marshalCeremony(creation, session)
}

// FinishRegistration checks the browser's attestation response against
// the state from BeginRegistration and returns the new credential.
func (w *WebAuthn) FinishRegistration(u *WebAuthnUser, state WebAuthnSession, response []byte) (*webauthn.Credential, error) {
	session, err := unmarshalSession(state)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if len(response) > MaxWebAuthnResponse {
		return nil, trace.LimitExceeded("WebAuthn response larger than %d bytes", MaxWebAuthnResponse)
	}
	parsed, err := protocol.ParseCredentialCreationResponseBody(bytes.NewReader(response))
	if err != nil {
		return nil, trace.BadParameter("the security key's registration answer is malformed: %v", protocolMessage(err))
	}
	cred, err := w.wa.CreateCredential(u, *session, parsed)
	if err != nil {
		return nil, trace.AccessDenied("the security key's registration was refused: %v", protocolMessage(err))
	}
	return cred, nil
}

// BeginAssertion returns the options for navigator.credentials.get (JSON,
// {"publicKey": ...}) allowing only u's keys, and the state to keep.
func (w *WebAuthn) BeginAssertion(u *WebAuthnUser) ([]byte, WebAuthnSession, error) {
	if len(u.Credentials) == 0 {
		return nil, nil, trace.NotFound("user %q has no security key registered; add one with \"sigil mfa add --type webauthn\" or in the web console", u.Name)
	}
	assertion, session, err := w.wa.BeginLogin(u)
	if err != nil {
		return nil, nil, trace.Wrap(err, "starting WebAuthn assertion")
	}
	return marshalCeremony(assertion, session)
}

// FinishAssertion checks the browser's assertion response and returns the
// credential used, with its sign counter updated. A counter that did not
// move forward means the key may have been cloned: refused.
func (w *WebAuthn) FinishAssertion(u *WebAuthnUser, state WebAuthnSession, response []byte) (*webauthn.Credential, error) {
	session, err := unmarshalSession(state)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if len(response) > MaxWebAuthnResponse {
		return nil, trace.LimitExceeded("WebAuthn response larger than %d bytes", MaxWebAuthnResponse)
	}
	parsed, err := protocol.ParseCredentialRequestResponseBody(bytes.NewReader(response))
	if err != nil {
		return nil, trace.BadParameter("the security key's answer is malformed: %v", protocolMessage(err))
	}
	cred, err := w.wa.ValidateLogin(u, *session, parsed)
	if err != nil {
		return nil, trace.AccessDenied("the security key's answer was refused: %v", protocolMessage(err))
	}
	if cred.Authenticator.CloneWarning {
		return nil, trace.AccessDenied("the security key's signature counter went back (stored %d, got %d): the key may have been cloned, so it is refused; remove it and register a new one", storedCount(u, cred.ID), parsed.Response.AuthenticatorData.Counter)
	}
	return cred, nil
}

func storedCount(u *WebAuthnUser, id []byte) uint32 {
	for _, c := range u.Credentials {
		if bytes.Equal(c.ID, id) {
			return c.Authenticator.SignCount
		}
	}
	return 0
}

func marshalCeremony(options any, session *webauthn.SessionData) ([]byte, WebAuthnSession, error) {
	opts, err := json.Marshal(options)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	state, err := json.Marshal(session)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	return opts, state, nil
}

func unmarshalSession(state WebAuthnSession) (*webauthn.SessionData, error) {
	if len(state) == 0 {
		return nil, trace.BadParameter("no WebAuthn ceremony was started")
	}
	s := &webauthn.SessionData{}
	if err := json.Unmarshal(state, s); err != nil {
		return nil, trace.Wrap(err, "corrupt WebAuthn ceremony state")
	}
	return s, nil
}

// protocolMessage renders the library's error with its details, which say
// what was wrong (origin, challenge, signature), without internals.
func protocolMessage(err error) string {
	var perr *protocol.Error
	if errors.As(err, &perr) {
		if perr.Details != "" {
			return perr.Details
		}
		return perr.Type
	}
	return err.Error()
}
