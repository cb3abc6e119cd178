package saml

import (
	"strings"
	"testing"
)

const idpEntity = `<EntityDescriptor xmlns="urn:oasis:names:tc:SAML:2.0:metadata" entityID="https://idp.example.com/metadata">
  <IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://idp.example.com/sso"/>
  </IDPSSODescriptor>
</EntityDescriptor>`

func TestParseIDPMetadata(t *testing.T) {
	ed, err := ParseIDPMetadata([]byte(idpEntity))
	if err != nil || ed.EntityID != "https://idp.example.com/metadata" {
		t.Fatalf("EntityDescriptor: %v, %v", ed, err)
	}
	// A federation file: the first entity that is an IdP.
	fed := `<EntitiesDescriptor xmlns="urn:oasis:names:tc:SAML:2.0:metadata">
<EntityDescriptor entityID="https://sp.example.com"><SPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol"/></EntityDescriptor>
` + strings.Replace(idpEntity, ` xmlns="urn:oasis:names:tc:SAML:2.0:metadata"`, "", 1) + `
</EntitiesDescriptor>`
	ed, err = ParseIDPMetadata([]byte(fed))
	if err != nil || ed.EntityID != "https://idp.example.com/metadata" {
		t.Fatalf("EntitiesDescriptor: %v, %v", ed, err)
	}
	for _, tc := range []struct{ name, xml, want string }{
		{"SP metadata", `<EntityDescriptor xmlns="urn:oasis:names:tc:SAML:2.0:metadata" entityID="sp"><SPSSODescriptor protocolSupportEnumeration="x"/></EntityDescriptor>`, "has no IDPSSODescriptor"},
		{"not metadata", `<html><body>login</body></html>`, "not a SAML EntityDescriptor"},
		{"too large", strings.Repeat(" ", 300<<10) + idpEntity, "larger than"},
	} {
		if _, err := ParseIDPMetadata([]byte(tc.xml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}
