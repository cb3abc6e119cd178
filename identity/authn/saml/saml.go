package saml

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/xml"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"time"

	crewsaml "github.com/crewjam/saml"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/identity/authn/sso"
)

// MaxResponseSize bounds the SAMLResponse form value (base64) the ACS
// accepts.
const MaxResponseSize = 512 << 10

// Config describes Sigil as a service provider for one connector.
type Config struct {
	// EntityID is Sigil's entity id: the audience assertions must name.
	EntityID string
	// ACSURL is where the IdP posts responses; assertions must name it as
	// their recipient.
	ACSURL string
	// MetadataURL is where Sigil publishes this SP's metadata.
	MetadataURL string
	// IDPMetadata is the IdP's metadata XML (an EntityDescriptor, or an
	// EntitiesDescriptor holding one IdP); New requires it.
	IDPMetadata []byte
	// Key decrypts encrypted assertions and signs AuthnRequests;
	// Certificate is its public half, published in the metadata.
	Key         *rsa.PrivateKey
	Certificate *x509.Certificate
}

// CheckAndSetDefaults validates the config.
func (c *Config) CheckAndSetDefaults() error {
	switch {
	case c.EntityID == "":
		return trace.BadParameter("saml: missing EntityID")
	case c.ACSURL == "":
		return trace.BadParameter("saml: missing ACSURL")
	case c.Key == nil || c.Certificate == nil:
		return trace.BadParameter("saml: missing Key or Certificate")
	}
	return nil
}

// SP is one connector's service provider.
type SP struct {
	sp  crewsaml.ServiceProvider
	cfg Config
}

// New builds the service provider.
func New(cfg Config) (*SP, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	if len(cfg.IDPMetadata) == 0 {
		return nil, trace.BadParameter("saml: missing IDPMetadata")
	}
	idp, err := ParseIDPMetadata(cfg.IDPMetadata)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	sp, err := serviceProvider(cfg)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	sp.IDPMetadata = idp
	s := &SP{sp: *sp, cfg: cfg}
	if s.sp.GetSSOBindingLocation(crewsaml.HTTPRedirectBinding) == "" {
		return nil, trace.BadParameter("the IdP metadata has no SingleSignOnService with the HTTP-Redirect binding")
	}
	return s, nil
}

// serviceProvider is the library's SP for cfg, without the IdP's side.
func serviceProvider(cfg Config) (*crewsaml.ServiceProvider, error) {
	acs, err := url.Parse(cfg.ACSURL)
	if err != nil {
		return nil, trace.BadParameter("saml: ACS URL %q: %v", cfg.ACSURL, err)
	}
	md, err := url.Parse(cfg.MetadataURL)
	if err != nil {
		return nil, trace.BadParameter("saml: metadata URL %q: %v", cfg.MetadataURL, err)
	}
	entityID := cfg.EntityID
	return &crewsaml.ServiceProvider{
		EntityID:          entityID,
		Key:               cfg.Key,
		Certificate:       cfg.Certificate,
		MetadataURL:       *md,
		AcsURL:            *acs,
		AuthnNameIDFormat: crewsaml.UnspecifiedNameIDFormat,
		// Signed AuthnRequests let an IdP that insists on them work; the
		// metadata announces it.
		SignatureMethod: "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
		// The library accepts an assertion with no AudienceRestriction at
		// all; Sigil requires one naming it.
		ValidateAudienceRestriction: func(a *crewsaml.Assertion) error {
			if a.Conditions != nil {
				for _, ar := range a.Conditions.AudienceRestrictions {
					if ar.Audience.Value == entityID {
						return nil
					}
				}
			}
			return fmt.Errorf("the assertion's audience is not %q (check the SP entity id registered at the IdP)", entityID)
		},
	}, nil
}

// ParseIDPMetadata reads IdP metadata: an EntityDescriptor with an
// IDPSSODescriptor, or the first such one in an EntitiesDescriptor.
func ParseIDPMetadata(data []byte) (*crewsaml.EntityDescriptor, error) {
	if len(data) > types.MaxIDPMetadataSize {
		return nil, trace.BadParameter("the IdP metadata is larger than %d bytes", types.MaxIDPMetadataSize)
	}
	var ed crewsaml.EntityDescriptor
	if err := xml.Unmarshal(data, &ed); err == nil {
		if len(ed.IDPSSODescriptors) == 0 {
			return nil, trace.BadParameter("the IdP metadata (entity %q) has no IDPSSODescriptor: is it an IdP's metadata?", ed.EntityID)
		}
		return &ed, nil
	}
	var eds crewsaml.EntitiesDescriptor
	if err := xml.Unmarshal(data, &eds); err != nil {
		return nil, trace.BadParameter("the IdP metadata is not a SAML EntityDescriptor or EntitiesDescriptor: %v", err)
	}
	for i := range eds.EntityDescriptors {
		if len(eds.EntityDescriptors[i].IDPSSODescriptors) > 0 {
			return &eds.EntityDescriptors[i], nil
		}
	}
	return nil, trace.BadParameter("the IdP metadata holds no entity with an IDPSSODescriptor")
}

// IDPEntityID is the IdP's entity id, the issuer its assertions must name.
func (s *SP) IDPEntityID() string { return s.sp.IDPMetadata.EntityID }

// AuthnRequestURL returns the IdP URL (HTTP-Redirect binding) carrying a
// new AuthnRequest, and the request's id, which the response must answer.
func (s *SP) AuthnRequestURL(relayState string) (*url.URL, string, error) {
	req, err := s.sp.MakeAuthenticationRequest(s.sp.GetSSOBindingLocation(crewsaml.HTTPRedirectBinding), crewsaml.HTTPRedirectBinding, crewsaml.HTTPPostBinding)
	if err != nil {
		return nil, "", trace.Wrap(err, "building the SAML AuthnRequest")
	}
	u, err := req.Redirect(url.QueryEscape(relayState), &s.sp)
	if err != nil {
		return nil, "", trace.Wrap(err, "encoding the SAML AuthnRequest")
	}
	return u, req.ID, nil
}

// Metadata is this SP's metadata XML, to register at the IdP.
func (s *SP) Metadata() ([]byte, error) { return SPMetadata(s.cfg) }

// SPMetadata is the metadata XML of the SP cfg describes; it needs no IdP
// metadata, since registering Sigil at the IdP may come first.
func SPMetadata(cfg Config) ([]byte, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	sp, err := serviceProvider(cfg)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	md := sp.Metadata()
	// Only HTTP-POST responses are accepted: drop the artifact endpoint
	// the library announces by default.
	for i := range md.SPSSODescriptors {
		acs := md.SPSSODescriptors[i].AssertionConsumerServices[:0]
		for _, e := range md.SPSSODescriptors[i].AssertionConsumerServices {
			if e.Binding == crewsaml.HTTPPostBinding {
				acs = append(acs, e)
			}
		}
		md.SPSSODescriptors[i].AssertionConsumerServices = acs
	}
	out, err := xml.MarshalIndent(md, "", "  ")
	return out, trace.Wrap(err)
}

// Assertion is what a verified response says.
type Assertion struct {
	// ID identifies the assertion, for replay protection.
	ID string
	// NameID is the subject's name id.
	NameID string
	// Attributes holds each attribute's values under its Name and, when
	// set, its FriendlyName.
	Attributes sso.Claims
	// NotOnOrAfter is when the assertion stops being usable (the latest
	// of its conditions and subject confirmations, with the allowed clock
	// skew): the replay cache must remember its id until then.
	NotOnOrAfter time.Time
}

// ParseResponse verifies the HTTP-POST response in r (whose form must be
// parsed) as the answer to requestID: signature by the IdP's metadata key,
// a signed assertion, issuer, destination, InResponseTo, recipient,
// audience and validity.
func (s *SP) ParseResponse(r *http.Request, requestID string) (a *Assertion, err error) {
	if r.PostForm.Get("SAMLart") != "" {
		return nil, trace.BadParameter("SAML artifact responses are not accepted; configure the IdP to use the HTTP-POST binding")
	}
	raw := r.PostForm.Get("SAMLResponse")
	switch {
	case raw == "":
		return nil, trace.BadParameter("the request carries no SAMLResponse")
	case len(raw) > MaxResponseSize:
		return nil, trace.BadParameter("the SAMLResponse is larger than %d bytes", MaxResponseSize)
	}
	defer func() {
		// The library dereferences optional elements of verified
		// assertions; a malformed one must not take the gateway down.
		if p := recover(); p != nil {
			a, err = nil, trace.AccessDenied("the SAML response is malformed")
		}
	}()
	as, err := s.sp.ParseResponse(r, []string{requestID})
	if err != nil {
		return nil, trace.AccessDenied("the SAML response from %s was refused: %s", s.IDPEntityID(), responseError(err))
	}
	if as.Signature == nil {
		// The library accepts an unsigned assertion inside a signed
		// response; Sigil's metadata says it wants assertions signed.
		return nil, trace.AccessDenied("the SAML response from %s was refused: the assertion is not signed (configure the IdP to sign assertions)", s.IDPEntityID())
	}
	if as.ID == "" {
		return nil, trace.AccessDenied("the SAML response from %s was refused: the assertion has no ID", s.IDPEntityID())
	}
	out := &Assertion{ID: as.ID, Attributes: sso.Claims{}}
	if as.Subject != nil && as.Subject.NameID != nil {
		out.NameID = as.Subject.NameID.Value
	}
	for _, st := range as.AttributeStatements {
		for _, attr := range st.Attributes {
			vals := make([]string, 0, len(attr.Values))
			for _, v := range attr.Values {
				vals = append(vals, v.Value)
			}
			if attr.Name != "" {
				out.Attributes.Add(attr.Name, vals...)
			}
			if attr.FriendlyName != "" && attr.FriendlyName != attr.Name {
				out.Attributes.Add(attr.FriendlyName, vals...)
			}
		}
	}
	until := as.IssueInstant.Add(crewsaml.MaxIssueDelay)
	if as.Conditions != nil && as.Conditions.NotOnOrAfter.After(until) {
		until = as.Conditions.NotOnOrAfter
	}
	if as.Subject != nil {
		for _, sc := range as.Subject.SubjectConfirmations {
			if d := sc.SubjectConfirmationData; d != nil && d.NotOnOrAfter.After(until) {
				until = d.NotOnOrAfter
			}
		}
	}
	out.NotOnOrAfter = until.Add(crewsaml.MaxClockSkew)
	return out, nil
}

// responseError digs the reason out of the library's deliberately vague
// "Authentication failed": Sigil's users need to know what to fix, and
// none of it is secret.
func responseError(err error) string {
	var ire *crewsaml.InvalidResponseError
	if errors.As(err, &ire) && ire.PrivateErr != nil {
		return ire.PrivateErr.Error()
	}
	var bs crewsaml.ErrBadStatus
	if errors.As(err, &bs) {
		return "the IdP answered with status " + bs.Status
	}
	return err.Error()
}

// GenerateKey makes a service provider key and a self-signed certificate
// for it (what IdPs expect in SP metadata).
func GenerateKey(commonName string, now time.Time) (*rsa.PrivateKey, *x509.Certificate, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	if len(commonName) > 64 {
		commonName = commonName[:64]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName, Organization: []string{"Sigil"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	return key, cert, nil
}
