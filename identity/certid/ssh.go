package certid

import (
	"encoding/json"
	"math"
	"strconv"
	"time"

	"github.com/gravitational/trace"
	"golang.org/x/crypto/ssh"
)

// SSH certificate extension keys. The identity goes into extensions, not
// critical options: OpenSSH refuses certificates with critical options it
// does not know, while it ignores unknown extensions.
const (
	SSHExtVersion        = "sigil-version@sigil"
	SSHExtKind           = "sigil-kind@sigil"
	SSHExtRoles          = "sigil-roles@sigil"
	SSHExtTraits         = "sigil-traits@sigil"
	SSHExtOnBehalfOf     = "sigil-on-behalf-of@sigil"
	SSHExtAccessRequests = "sigil-access-requests@sigil"
	SSHExtRoute          = "sigil-route@sigil"
	SSHExtMFADevice      = "sigil-mfa-device@sigil"
	SSHExtClientIP       = "sigil-client-ip@sigil"
	SSHExtGeneration     = "sigil-generation@sigil"
)

// NoLoginPrincipal is the only principal of an SSH certificate for an
// identity without logins. An empty principal list would make the
// certificate valid for every login; the colon keeps it from ever being a
// Unix user name.
const NoLoginPrincipal = "sigil:no-login"

// standardSSHExtensions are granted to every user certificate; what a
// session may really do is decided by the gateway's policy check. X11
// forwarding and user rc files are left out as rarely needed and risky.
var standardSSHExtensions = []string{"permit-pty", "permit-port-forwarding", "permit-agent-forwarding"}

type sshRoute struct {
	ResourceKind string `json:"resource_kind,omitempty"`
	ResourceName string `json:"resource_name,omitempty"`
	DBUser       string `json:"db_user,omitempty"`
	DBName       string `json:"db_name,omitempty"`
	Login        string `json:"login,omitempty"`
}

// ToSSHCert writes the identity into an SSH user certificate before it is
// signed: KeyId, ValidPrincipals and the sigil-* extensions.
func (i *Identity) ToSSHCert(cert *ssh.Certificate) error {
	if cert == nil {
		return trace.BadParameter("no SSH certificate")
	}
	if err := i.CheckAndSetDefaults(); err != nil {
		return trace.Wrap(err)
	}
	cert.KeyId = i.Name
	switch {
	case i.Route.Login != "":
		cert.ValidPrincipals = []string{i.Route.Login}
	case len(i.Logins()) > 0:
		cert.ValidPrincipals = cloneStrings(i.Logins())
	default:
		cert.ValidPrincipals = []string{NoLoginPrincipal}
	}
	ext := make(map[string]string, len(standardSSHExtensions)+9)
	for _, e := range standardSSHExtensions {
		ext[e] = ""
	}
	ext[SSHExtVersion] = strconv.Itoa(ExtensionVersion)
	ext[SSHExtKind] = string(i.Kind)
	setJSON := func(key string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return trace.Wrap(err, "encoding %s", key)
		}
		ext[key] = string(b)
		return nil
	}
	if len(i.Roles) > 0 {
		if err := setJSON(SSHExtRoles, i.Roles); err != nil {
			return err
		}
	}
	if len(i.Traits) > 0 {
		if err := setJSON(SSHExtTraits, i.Traits); err != nil {
			return err
		}
	}
	if len(i.AccessRequests) > 0 {
		if err := setJSON(SSHExtAccessRequests, i.AccessRequests); err != nil {
			return err
		}
	}
	if !i.Route.IsZero() {
		if err := setJSON(SSHExtRoute, sshRoute(i.Route)); err != nil {
			return err
		}
	}
	if i.Generation != 0 {
		ext[SSHExtGeneration] = strconv.FormatUint(i.Generation, 10)
	}
	for key, val := range map[string]string{
		SSHExtOnBehalfOf: i.OnBehalfOf,
		SSHExtMFADevice:  i.MFADevice,
		SSHExtClientIP:   i.ClientIP,
	} {
		if val != "" {
			ext[key] = val
		}
	}
	total := 0
	for k, val := range ext {
		total += len(k) + len(val)
	}
	if total > MaxExtensionSize {
		return trace.BadParameter("identity %q encodes to %d bytes of SSH extensions, more than the %d allowed", i.Name, total, MaxExtensionSize)
	}
	cert.Permissions.Extensions = ext
	return nil
}

// FromSSHCert decodes the identity of an SSH user certificate. It does not
// check the signature or validity period; use ssh.CertChecker for that.
func FromSSHCert(cert *ssh.Certificate) (*Identity, error) {
	if cert == nil {
		return nil, trace.BadParameter("no SSH certificate")
	}
	if cert.CertType != ssh.UserCert {
		return nil, trace.BadParameter("SSH certificate %q is not a user certificate", cert.KeyId)
	}
	ext := cert.Permissions.Extensions
	total := 0
	for k, val := range ext {
		total += len(k) + len(val)
	}
	if total > MaxExtensionSize {
		return nil, trace.BadParameter("SSH certificate extensions are %d bytes, more than the %d allowed", total, MaxExtensionSize)
	}
	version, ok := ext[SSHExtVersion]
	if !ok {
		return nil, trace.BadParameter("SSH certificate %q carries no Sigil identity", cert.KeyId)
	}
	if version != strconv.Itoa(ExtensionVersion) {
		return nil, trace.BadParameter("SSH identity has version %q, this build reads only version %d", version, ExtensionVersion)
	}
	kind, err := ParseKind(ext[SSHExtKind])
	if err != nil {
		return nil, trace.Wrap(err)
	}
	id := &Identity{
		Name:       cert.KeyId,
		Kind:       kind,
		OnBehalfOf: ext[SSHExtOnBehalfOf],
		MFADevice:  ext[SSHExtMFADevice],
		ClientIP:   ext[SSHExtClientIP],
		Serial:     strconv.FormatUint(cert.Serial, 10),
	}
	if g, ok := ext[SSHExtGeneration]; ok {
		if id.Generation, err = strconv.ParseUint(g, 10, 64); err != nil {
			return nil, trace.BadParameter("malformed %s in SSH certificate: %q", SSHExtGeneration, g)
		}
	}
	getJSON := func(key string, v any) error {
		raw, ok := ext[key]
		if !ok {
			return nil
		}
		if err := json.Unmarshal([]byte(raw), v); err != nil {
			return trace.BadParameter("malformed %s in SSH certificate: %v", key, err)
		}
		return nil
	}
	var route sshRoute
	for key, dst := range map[string]any{
		SSHExtRoles:          &id.Roles,
		SSHExtTraits:         &id.Traits,
		SSHExtAccessRequests: &id.AccessRequests,
		SSHExtRoute:          &route,
	} {
		if err := getJSON(key, dst); err != nil {
			return nil, err
		}
	}
	id.Route = Route(route)
	if len(id.Roles) == 0 {
		id.Roles = nil
	}
	if len(id.AccessRequests) == 0 {
		id.AccessRequests = nil
	}
	if len(id.Traits) == 0 {
		id.Traits = nil
	}
	for k, vals := range id.Traits {
		if len(vals) == 0 {
			id.Traits[k] = nil
		}
	}
	if cert.ValidBefore != ssh.CertTimeInfinity && cert.ValidBefore <= math.MaxInt64 {
		id.Expires = time.Unix(int64(cert.ValidBefore), 0)
	}
	if err := id.CheckAndSetDefaults(); err != nil {
		return nil, trace.BadParameter("invalid identity in SSH certificate: %v", err)
	}
	return id, nil
}
