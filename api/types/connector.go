package types

import (
	"net"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/gravitational/trace"
)

// AuthLocal is the --auth value of password login; no connector may take
// this name.
const AuthLocal = "local"

// Limits on connector specs: they are read on every SSO login.
const (
	maxMappings       = 256
	maxMappingRoles   = 64
	maxConnectorTrait = 64
	maxScopes         = 32
	// MaxIDPMetadataSize bounds inline and fetched SAML IdP metadata.
	MaxIDPMetadataSize = 256 << 10
	maxSecretLen       = 4096
)

// ClaimMapping grants roles to OIDC users whose claim has a matching value.
type ClaimMapping struct {
	// Claim names the claim, e.g. groups. A list claim matches when any of
	// its values does.
	Claim string `json:"claim" yaml:"claim"`
	// Value is an exact string, a glob using * (db-*), or a regular
	// expression written as ^...$. Each * of a glob and each group of a
	// regular expression is a capture that roles can use as $1, ${2}, ...
	Value string `json:"value" yaml:"value"`
	// Roles are granted on a match; $N is replaced by capture N.
	Roles []string `json:"roles" yaml:"roles"`
}

// AttributeMapping grants roles to SAML users whose attribute has a
// matching value; Value and Roles work as in ClaimMapping.
type AttributeMapping struct {
	// Name is the attribute's Name or FriendlyName, e.g. groups or
	// urn:oid:1.3.6.1.4.1.5923.1.1.1.1.
	Name  string   `json:"name" yaml:"name"`
	Value string   `json:"value" yaml:"value"`
	Roles []string `json:"roles" yaml:"roles"`
}

// OIDCConnector logs users in through an OpenID Connect provider.
type OIDCConnector struct {
	Kind     string            `json:"kind" yaml:"kind"`
	Version  string            `json:"version" yaml:"version"`
	Metadata Metadata          `json:"metadata" yaml:"metadata"`
	Spec     OIDCConnectorSpec `json:"spec" yaml:"spec"`
}

// OIDCConnectorSpec is the body of an oidc_connector.
type OIDCConnectorSpec struct {
	// DisplayName labels the login button; default: the connector name.
	DisplayName string `json:"display_name,omitempty" yaml:"display_name,omitempty"`
	IssuerURL   string `json:"issuer_url" yaml:"issuer_url"`
	ClientID    string `json:"client_id" yaml:"client_id"`
	// ClientSecret is write-only: the server seals it apart from the
	// resource, so it is empty whenever a connector is read back. Leaving
	// it empty on an update keeps the stored secret.
	ClientSecret string `json:"client_secret,omitempty" yaml:"client_secret,omitempty"`
	// RedirectURL defaults to https://<gateway public address>/web/sso/oidc/callback.
	RedirectURL string   `json:"redirect_url,omitempty" yaml:"redirect_url,omitempty"`
	Scopes      []string `json:"scopes,omitempty" yaml:"scopes,omitempty"`
	// UsernameClaim names the claim that becomes the Sigil user name
	// (default email).
	UsernameClaim string `json:"username_claim,omitempty" yaml:"username_claim,omitempty"`
	// UserInfo also reads claims from the provider's userinfo endpoint
	// (the ID token's claims win on conflicts).
	UserInfo      bool           `json:"userinfo,omitempty" yaml:"userinfo,omitempty"`
	ClaimsToRoles []ClaimMapping `json:"claims_to_roles" yaml:"claims_to_roles"`
	// Traits maps a trait name to the claim holding its values, e.g.
	// {db_users: preferred_username}; roles read them as {{external.db_users}}.
	Traits map[string]string `json:"traits,omitempty" yaml:"traits,omitempty"`
}

// SAMLConnector logs users in through a SAML 2.0 identity provider.
type SAMLConnector struct {
	Kind     string            `json:"kind" yaml:"kind"`
	Version  string            `json:"version" yaml:"version"`
	Metadata Metadata          `json:"metadata" yaml:"metadata"`
	Spec     SAMLConnectorSpec `json:"spec" yaml:"spec"`
}

// SAMLConnectorSpec is the body of a saml_connector.
type SAMLConnectorSpec struct {
	DisplayName string `json:"display_name,omitempty" yaml:"display_name,omitempty"`
	// IDPMetadataURL or IDPMetadata (the XML itself): exactly one is set.
	IDPMetadataURL string `json:"idp_metadata_url,omitempty" yaml:"idp_metadata_url,omitempty"`
	IDPMetadata    string `json:"idp_metadata,omitempty" yaml:"idp_metadata,omitempty"`
	// EntityID is Sigil's SAML entity id, the audience assertions must
	// name; default https://<gateway>/web/sso/saml/metadata/<name>.
	EntityID string `json:"entity_id,omitempty" yaml:"entity_id,omitempty"`
	// ACSURL defaults to https://<gateway>/web/sso/saml/acs.
	ACSURL string `json:"acs_url,omitempty" yaml:"acs_url,omitempty"`
	// UsernameAttribute names the attribute that becomes the Sigil user
	// name; default: the assertion's NameID.
	UsernameAttribute string             `json:"username_attribute,omitempty" yaml:"username_attribute,omitempty"`
	AttributesToRoles []AttributeMapping `json:"attributes_to_roles" yaml:"attributes_to_roles"`
	// Traits maps a trait name to the attribute holding its values.
	Traits map[string]string `json:"traits,omitempty" yaml:"traits,omitempty"`
}

// IsConnectorKind reports whether kind is an SSO connector kind.
func IsConnectorKind(kind string) bool {
	return kind == KindOIDCConnector || kind == KindSAMLConnector
}

func (r *OIDCConnector) GetKind() string        { return r.Kind }
func (r *OIDCConnector) GetVersion() string     { return r.Version }
func (r *OIDCConnector) GetMetadata() *Metadata { return &r.Metadata }
func (r *SAMLConnector) GetKind() string        { return r.Kind }
func (r *SAMLConnector) GetVersion() string     { return r.Version }
func (r *SAMLConnector) GetMetadata() *Metadata { return &r.Metadata }

// DefaultOIDCScopes are requested when a connector lists none.
func DefaultOIDCScopes() []string { return []string{"openid", "email", "profile"} }

// CheckAndSetDefaults validates the connector and fills defaults (those
// that depend on the gateway address are filled by the server).
func (c *OIDCConnector) CheckAndSetDefaults() error {
	if err := checkHeader(&c.Kind, &c.Version, &c.Metadata, KindOIDCConnector); err != nil {
		return trace.Wrap(err)
	}
	if err := checkConnectorName(c.Metadata.Name); err != nil {
		return trace.Wrap(err)
	}
	s := &c.Spec
	if err := checkSSOURL("spec.issuer_url", s.IssuerURL, true); err != nil {
		return trace.Wrap(err)
	}
	if s.ClientID == "" {
		return trace.BadParameter("spec.client_id: required (the client id registered at the provider)")
	}
	if err := checkPrintable("spec.client_id", s.ClientID, 1024); err != nil {
		return trace.Wrap(err)
	}
	if len(s.ClientSecret) > maxSecretLen {
		return trace.BadParameter("spec.client_secret: longer than %d characters", maxSecretLen)
	}
	if s.RedirectURL != "" {
		if err := checkSSOURL("spec.redirect_url", s.RedirectURL, false); err != nil {
			return trace.Wrap(err)
		}
	}
	if len(s.Scopes) == 0 {
		s.Scopes = DefaultOIDCScopes()
	}
	if len(s.Scopes) > maxScopes {
		return trace.BadParameter("spec.scopes: at most %d scopes", maxScopes)
	}
	hasOpenID := false
	for _, sc := range s.Scopes {
		if sc == "" || strings.ContainsAny(sc, " \t\r\n\"\\") || len(sc) > 256 {
			return trace.BadParameter("spec.scopes: %q is not a valid scope", truncate(sc, 40))
		}
		hasOpenID = hasOpenID || sc == "openid"
	}
	if !hasOpenID {
		// Without it the provider returns no ID token at all.
		s.Scopes = append([]string{"openid"}, s.Scopes...)
	}
	if s.UsernameClaim == "" {
		s.UsernameClaim = "email"
	}
	if err := checkPrintable("spec.username_claim", s.UsernameClaim, 256); err != nil {
		return trace.Wrap(err)
	}
	if err := checkDisplayName(s.DisplayName); err != nil {
		return trace.Wrap(err)
	}
	if len(s.ClaimsToRoles) == 0 {
		return trace.BadParameter("spec.claims_to_roles: needs at least one mapping, e.g. {claim: groups, value: admins, roles: [admin]}")
	}
	if len(s.ClaimsToRoles) > maxMappings {
		return trace.BadParameter("spec.claims_to_roles: at most %d mappings", maxMappings)
	}
	for i, m := range s.ClaimsToRoles {
		p := "spec.claims_to_roles[" + strconv.Itoa(i) + "]"
		if err := checkPrintable(p+".claim", m.Claim, 256); err != nil {
			return trace.Wrap(err)
		}
		if err := checkMapping(p, m.Value, m.Roles); err != nil {
			return trace.Wrap(err)
		}
	}
	return trace.Wrap(checkConnectorTraits(s.Traits))
}

// CheckAndSetDefaults validates the connector.
func (c *SAMLConnector) CheckAndSetDefaults() error {
	if err := checkHeader(&c.Kind, &c.Version, &c.Metadata, KindSAMLConnector); err != nil {
		return trace.Wrap(err)
	}
	if err := checkConnectorName(c.Metadata.Name); err != nil {
		return trace.Wrap(err)
	}
	s := &c.Spec
	switch {
	case s.IDPMetadataURL == "" && s.IDPMetadata == "":
		return trace.BadParameter("spec: set idp_metadata_url (where the IdP publishes its metadata) or idp_metadata (the XML itself)")
	case s.IDPMetadataURL != "" && s.IDPMetadata != "":
		return trace.BadParameter("spec: set only one of idp_metadata_url and idp_metadata")
	case s.IDPMetadataURL != "":
		if err := checkSSOURL("spec.idp_metadata_url", s.IDPMetadataURL, true); err != nil {
			return trace.Wrap(err)
		}
	case len(s.IDPMetadata) > MaxIDPMetadataSize:
		return trace.BadParameter("spec.idp_metadata: larger than %d bytes", MaxIDPMetadataSize)
	case !strings.Contains(s.IDPMetadata, "EntityDescriptor"):
		return trace.BadParameter("spec.idp_metadata: not SAML metadata (no EntityDescriptor element)")
	}
	if s.EntityID != "" {
		if err := checkPrintable("spec.entity_id", s.EntityID, 1024); err != nil {
			return trace.Wrap(err)
		}
	}
	if s.ACSURL != "" {
		if err := checkSSOURL("spec.acs_url", s.ACSURL, false); err != nil {
			return trace.Wrap(err)
		}
	}
	if s.UsernameAttribute != "" {
		if err := checkPrintable("spec.username_attribute", s.UsernameAttribute, 256); err != nil {
			return trace.Wrap(err)
		}
	}
	if err := checkDisplayName(s.DisplayName); err != nil {
		return trace.Wrap(err)
	}
	if len(s.AttributesToRoles) == 0 {
		return trace.BadParameter("spec.attributes_to_roles: needs at least one mapping, e.g. {name: groups, value: admins, roles: [admin]}")
	}
	if len(s.AttributesToRoles) > maxMappings {
		return trace.BadParameter("spec.attributes_to_roles: at most %d mappings", maxMappings)
	}
	for i, m := range s.AttributesToRoles {
		p := "spec.attributes_to_roles[" + strconv.Itoa(i) + "]"
		if err := checkPrintable(p+".name", m.Name, 256); err != nil {
			return trace.Wrap(err)
		}
		if err := checkMapping(p, m.Value, m.Roles); err != nil {
			return trace.Wrap(err)
		}
	}
	return trace.Wrap(checkConnectorTraits(s.Traits))
}

func checkConnectorName(name string) error {
	if name == AuthLocal {
		return trace.BadParameter("metadata.name: %q is reserved for password login (sigil login --auth local); choose another name", name)
	}
	return nil
}

func checkDisplayName(s string) error {
	if s == "" {
		return nil
	}
	return trace.Wrap(checkPrintable("spec.display_name", s, 128))
}

// checkPrintable requires a non-empty value of printable characters.
func checkPrintable(field, v string, max int) error {
	if v == "" {
		return trace.BadParameter("%s: required", field)
	}
	if len(v) > max {
		return trace.BadParameter("%s: longer than %d characters", field, max)
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return trace.BadParameter("%s: contains a control character", field)
		}
	}
	return nil
}

// checkSSOURL requires https, except that a provider on a loopback address
// may use plain http (a provider on the same host; tests).
func checkSSOURL(field, raw string, allowLoopbackHTTP bool) error {
	if raw == "" {
		return trace.BadParameter("%s: required", field)
	}
	if len(raw) > 2048 {
		return trace.BadParameter("%s: longer than 2048 characters", field)
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.User != nil || u.Fragment != "" {
		return trace.BadParameter("%s: %q is not an absolute https URL", field, truncate(raw, 80))
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && allowLoopbackHTTP && IsLoopbackHost(u.Hostname()):
	case u.Scheme == "http" && allowLoopbackHTTP:
		return trace.BadParameter("%s: %q must use https (plain http is only accepted for a provider on localhost)", field, truncate(raw, 80))
	default:
		return trace.BadParameter("%s: %q must use https", field, truncate(raw, 80))
	}
	return nil
}

// IsLoopbackHost reports whether host (no port) is localhost or a
// loopback IP address.
func IsLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func checkConnectorTraits(traits map[string]string) error {
	if len(traits) > maxConnectorTrait {
		return trace.BadParameter("spec.traits: at most %d traits", maxConnectorTrait)
	}
	names := make([]string, 0, len(traits))
	for k := range traits {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if err := ValidateName("spec.traits", k); err != nil {
			return trace.Wrap(err)
		}
		if err := checkPrintable("spec.traits["+k+"]", traits[k], 256); err != nil {
			return trace.Wrap(err)
		}
	}
	return nil
}

func checkMapping(p, value string, roles []string) error {
	re, err := CompileClaimValue(value)
	if err != nil {
		return trace.BadParameter("%s.value: %v", p, err)
	}
	if len(roles) == 0 {
		return trace.BadParameter("%s.roles: needs at least one role", p)
	}
	if len(roles) > maxMappingRoles {
		return trace.BadParameter("%s.roles: at most %d roles", p, maxMappingRoles)
	}
	for _, r := range roles {
		if err := CheckRoleTemplate(p+".roles", r, re.NumSubexp()); err != nil {
			return trace.Wrap(err)
		}
	}
	return nil
}

// captureRe finds $N and ${N} references in a role template.
var captureRe = regexp.MustCompile(`\$(\d+)|\$\{(\d+)\}`)

// CheckRoleTemplate validates a role name that may refer to captures $1..$n
// of its mapping's value.
func CheckRoleTemplate(field, role string, captures int) error {
	for _, m := range captureRe.FindAllStringSubmatch(role, -1) {
		n, _ := strconv.Atoi(m[1] + m[2])
		if n < 1 || n > captures {
			return trace.BadParameter("%s: %q refers to capture $%d, but the value has %d capture(s)", field, truncate(role, 60), n, captures)
		}
	}
	// What is left once captures are filled in must be a valid name.
	return trace.Wrap(ValidateName(field, captureRe.ReplaceAllString(role, "x")))
}

// ExpandRoleTemplate fills $N and ${N} in a role template with captures
// (captures[0] is the whole match, as regexp submatches are).
func ExpandRoleTemplate(role string, captures []string) string {
	return captureRe.ReplaceAllStringFunc(role, func(ref string) string {
		m := captureRe.FindStringSubmatch(ref)
		n, _ := strconv.Atoi(m[1] + m[2])
		if n < len(captures) {
			return captures[n]
		}
		return ""
	})
}

// CompileClaimValue turns a mapping value into an anchored regular
// expression: ^...$ is taken as is; a glob's * become (.*) captures; any
// other value matches exactly.
func CompileClaimValue(v string) (*regexp.Regexp, error) {
	switch {
	case v == "":
		return nil, trace.BadParameter("must not be empty (use \"*\" to match any value)")
	case len(v) > 1024:
		return nil, trace.BadParameter("longer than 1024 characters")
	case IsRegexp(v):
		re, err := regexp.Compile(v)
		if err != nil {
			return nil, trace.BadParameter("invalid regular expression %q: %v", truncate(v, 60), err)
		}
		return re, nil
	}
	parts := strings.Split(v, "*")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return regexp.MustCompile("^" + strings.Join(parts, "(.*)") + "$"), nil
}
