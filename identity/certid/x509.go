package certid

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/gravitational/trace"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

// ExtensionUUID names the Sigil identity extension. DESIGN.md asks for the
// OID 2.25.<this UUID as an integer>, but Go's crypto/x509 refuses to parse
// any certificate whose extension OID has an arc of 2^31 or more ("x509:
// malformed extension OID field"), and every RFC 4122 UUID is above 2^63.
// So the UUID is spread over eight 16-bit arcs below 1.3.9999 (an
// unassigned arc commonly used for private extensions); the UUID still makes
// collisions with anyone else's private OIDs practically impossible.
const ExtensionUUID = "ec6613a5-771b-4e01-901b-3e7cc2b876d2"

// ExtensionOID is the OID of the X.509 extension holding the identity:
// 1.3.9999 followed by ExtensionUUID in 16-bit groups.
var ExtensionOID = asn1.ObjectIdentifier{1, 3, 9999, 60518, 5029, 30491, 19969, 36891, 15996, 49848, 30418}

// ExtensionVersion is the only encoding version this package reads and writes.
const ExtensionVersion = 1

// MaxExtensionSize bounds what the decoder accepts, so a certificate cannot
// make us allocate or process unbounded data.
const MaxExtensionSize = 64 << 10

var kindToProto = map[Kind]sigilv1.IdentityKind{
	KindHuman: sigilv1.IdentityKind_IDENTITY_KIND_HUMAN,
	KindBot:   sigilv1.IdentityKind_IDENTITY_KIND_BOT,
	KindAgent: sigilv1.IdentityKind_IDENTITY_KIND_AGENT,
}

func kindFromProto(k sigilv1.IdentityKind) (Kind, error) {
	for kind, pk := range kindToProto {
		if pk == k {
			return kind, nil
		}
	}
	return "", trace.BadParameter("identity extension has unknown kind %d", int32(k))
}

// Extension encodes the identity as the Sigil X.509 extension.
//
// The extension is non-critical: stock TLS stacks (Go, OpenSSL, PostgreSQL,
// MariaDB) reject certificates with critical extensions they do not
// understand, and our certificates must pass through them. Safety does not
// depend on criticality: only Sigil reads the identity, and ExtKeyUsage
// plus the issuing CA already restrict where the certificate is accepted.
func (i *Identity) Extension() (pkix.Extension, error) {
	if err := i.CheckAndSetDefaults(); err != nil {
		return pkix.Extension{}, trace.Wrap(err)
	}
	value, err := proto.MarshalOptions{Deterministic: true}.Marshal(i.ToProto())
	if err != nil {
		return pkix.Extension{}, trace.Wrap(err, "encoding identity")
	}
	if len(value) > MaxExtensionSize {
		return pkix.Extension{}, trace.BadParameter("identity %q encodes to %d bytes, more than the %d allowed", i.Name, len(value), MaxExtensionSize)
	}
	return pkix.Extension{Id: ExtensionOID, Critical: false, Value: value}, nil
}

// Subject is the certificate subject for the identity. Only the extension is
// authoritative; CN and O make the certificate readable in logs and tools
// (openssl, database server logs) that know nothing about Sigil.
func (i *Identity) Subject() pkix.Name {
	return pkix.Name{CommonName: i.Name, Organization: cloneStrings(i.Roles)}
}

// ApplyTo writes the identity into a certificate template: the subject and
// the extension. It replaces any earlier Sigil extension on the template.
func (i *Identity) ApplyTo(tmpl *x509.Certificate) error {
	ext, err := i.Extension()
	if err != nil {
		return trace.Wrap(err)
	}
	tmpl.Subject = i.Subject()
	tmpl.ExtraExtensions = slices.DeleteFunc(tmpl.ExtraExtensions, func(e pkix.Extension) bool {
		return e.Id.Equal(ExtensionOID)
	})
	tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, ext)
	return nil
}

func (i *Identity) ToProto() *sigilv1.Identity {
	p := &sigilv1.Identity{
		Version:        ExtensionVersion,
		Name:           i.Name,
		Kind:           kindToProto[i.Kind],
		Roles:          i.Roles,
		OnBehalfOf:     i.OnBehalfOf,
		AccessRequests: i.AccessRequests,
		MfaDevice:      i.MFADevice,
		ClientIp:       i.ClientIP,
		Generation:     i.Generation,
	}
	if len(i.Traits) > 0 {
		p.Traits = make(map[string]*sigilv1.TraitValues, len(i.Traits))
		for k, vals := range i.Traits {
			p.Traits[k] = &sigilv1.TraitValues{Values: vals}
		}
	}
	if !i.Route.IsZero() {
		p.Route = &sigilv1.Route{
			ResourceKind: i.Route.ResourceKind,
			ResourceName: i.Route.ResourceName,
			DbUser:       i.Route.DBUser,
			DbName:       i.Route.DBName,
			Login:        i.Route.Login,
		}
	}
	return p
}

// FromExtension decodes and validates the identity in a Sigil extension.
// It neither checks the certificate's signature nor fills Expires/Serial;
// use Verify for certificates presented by peers.
func FromExtension(ext pkix.Extension) (*Identity, error) {
	if !ext.Id.Equal(ExtensionOID) {
		return nil, trace.BadParameter("extension %v is not a Sigil identity (want %v)", ext.Id, ExtensionOID)
	}
	if len(ext.Value) > MaxExtensionSize {
		return nil, trace.BadParameter("identity extension is %d bytes, more than the %d allowed", len(ext.Value), MaxExtensionSize)
	}
	var p sigilv1.Identity
	if err := proto.Unmarshal(ext.Value, &p); err != nil {
		return nil, trace.BadParameter("malformed identity extension: %v", err)
	}
	if p.GetVersion() != ExtensionVersion {
		return nil, trace.BadParameter("identity extension has version %d, this build reads only version %d", p.GetVersion(), ExtensionVersion)
	}
	kind, err := kindFromProto(p.GetKind())
	if err != nil {
		return nil, trace.Wrap(err)
	}
	id := &Identity{
		Name:           p.GetName(),
		Kind:           kind,
		Roles:          cloneStrings(p.GetRoles()),
		OnBehalfOf:     p.GetOnBehalfOf(),
		AccessRequests: cloneStrings(p.GetAccessRequests()),
		MFADevice:      p.GetMfaDevice(),
		ClientIP:       p.GetClientIp(),
		Generation:     p.GetGeneration(),
	}
	if len(p.GetTraits()) > 0 {
		id.Traits = make(map[string][]string, len(p.GetTraits()))
		for k, vals := range p.GetTraits() {
			id.Traits[k] = cloneStrings(vals.GetValues())
		}
	}
	if r := p.GetRoute(); r != nil {
		id.Route = Route{
			ResourceKind: r.GetResourceKind(),
			ResourceName: r.GetResourceName(),
			DBUser:       r.GetDbUser(),
			DBName:       r.GetDbName(),
			Login:        r.GetLogin(),
		}
	}
	if err := id.CheckAndSetDefaults(); err != nil {
		return nil, trace.BadParameter("invalid identity in certificate: %v", err)
	}
	return id, nil
}

// FromCertificate decodes the identity of a certificate without verifying
// it. Only use it on certificates whose chain was already verified (for
// example by the TLS handshake) or that we just issued ourselves.
func FromCertificate(cert *x509.Certificate) (*Identity, error) {
	if cert == nil {
		return nil, trace.BadParameter("no certificate")
	}
	var found *pkix.Extension
	for n := range cert.Extensions {
		if cert.Extensions[n].Id.Equal(ExtensionOID) {
			if found != nil {
				// Two identities in one certificate: refuse rather than
				// guess which one the issuer meant.
				return nil, trace.BadParameter("certificate carries more than one Sigil identity extension")
			}
			found = &cert.Extensions[n]
		}
	}
	if found == nil {
		return nil, trace.BadParameter("certificate %q carries no Sigil identity", cert.Subject.CommonName)
	}
	id, err := FromExtension(*found)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	id.Expires = cert.NotAfter
	if cert.SerialNumber != nil {
		id.Serial = cert.SerialNumber.String()
	}
	return id, nil
}

// Verify checks that cert was issued for client authentication by one of
// roots and is valid at now, then decodes its identity.
func Verify(cert *x509.Certificate, intermediates []*x509.Certificate, roots *x509.CertPool, now time.Time) (*Identity, error) {
	if cert == nil {
		return nil, trace.AccessDenied("no client certificate")
	}
	if roots == nil {
		return nil, trace.BadParameter("no trusted CA given to verify the certificate against")
	}
	// Checked here first so the refusal says exactly what is wrong; the
	// chain verification below checks the same again.
	if now.After(cert.NotAfter) {
		return nil, trace.AccessDenied("certificate expired at %v (now %v)", cert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if now.Before(cert.NotBefore) {
		return nil, trace.AccessDenied("certificate is not valid before %v (now %v)", cert.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return nil, trace.AccessDenied("certificate %q is not valid for client authentication (wrong key usage)", cert.Subject.CommonName)
	}
	pool := x509.NewCertPool()
	for _, c := range intermediates {
		pool.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: pool,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, trace.AccessDenied("certificate %q was not issued by a trusted Sigil CA: %v", cert.Subject.CommonName, describeVerifyError(err))
	}
	id, err := FromCertificate(cert)
	if err != nil {
		return nil, trace.AccessDenied("certificate %q: %v", cert.Subject.CommonName, err)
	}
	return id, nil
}

func describeVerifyError(err error) string {
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return "unknown certificate authority"
	}
	return fmt.Sprint(err)
}
