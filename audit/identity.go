package audit

import "github.com/sigilhq/sigil/identity/certid"

// IdentityOf is how a certificate identity appears in audit events; nil
// gives an empty identity.
func IdentityOf(id *certid.Identity) *Identity {
	if id == nil {
		return &Identity{}
	}
	return &Identity{
		User:       id.Name,
		Kind:       string(id.Kind),
		Roles:      id.Roles,
		OnBehalfOf: id.OnBehalfOf,
		Requests:   id.AccessRequests,
		MfaDevice:  id.MFADevice,
		CertSerial: id.Serial,
	}
}
