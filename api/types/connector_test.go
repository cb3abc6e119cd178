package types

import (
	"slices"
	"strings"
	"testing"
)

const oidcYAML = `kind: oidc_connector
version: v1
metadata: {name: okta}
spec:
  issuer_url: https://example.okta.com
  client_id: sigil
  client_secret: s3cret
  scopes: [email, groups]
  claims_to_roles:
    - {claim: groups, value: "^db-(.*)$", roles: ["$1-reader"]}
    - {claim: groups, value: "sre-*", roles: ["sre-${1}"]}
  traits: {db_users: preferred_username}
`

const samlYAML = `kind: saml_connector
version: v1
metadata: {name: corp}
spec:
  idp_metadata_url: https://idp.example.com/metadata
  attributes_to_roles:
    - {name: groups, value: admins, roles: [admin]}
`

func TestParseConnectors(t *testing.T) {
	rs, err := ParseYAML([]byte(oidcYAML + "---\n" + samlYAML))
	if err != nil {
		t.Fatal(err)
	}
	o, ok := rs[0].(*OIDCConnector)
	if !ok {
		t.Fatalf("got %T", rs[0])
	}
	// openid is added: without it there is no ID token.
	if !slices.Equal(o.Spec.Scopes, []string{"openid", "email", "groups"}) || o.Spec.UsernameClaim != "email" || o.Spec.ClientSecret != "s3cret" {
		t.Fatalf("spec = %+v", o.Spec)
	}
	if s, ok := rs[1].(*SAMLConnector); !ok || s.Spec.AttributesToRoles[0].Roles[0] != "admin" {
		t.Fatalf("got %#v", rs[1])
	}
	// The JSON wire form round-trips.
	data, err := MarshalResource(o)
	if err != nil {
		t.Fatal(err)
	}
	back, err := UnmarshalResource(KindOIDCConnector, data)
	if err != nil || back.(*OIDCConnector).Spec.IssuerURL != o.Spec.IssuerURL {
		t.Fatalf("round trip: %v, %v", back, err)
	}
}

func TestConnectorErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"http issuer", strings.Replace(oidcYAML, "https://example.okta.com", "http://example.okta.com", 1), "must use https (plain http is only accepted for a provider on localhost)"},
		{"missing client id", strings.Replace(oidcYAML, "  client_id: sigil\n", "", 1), "spec.client_id: required"},
		{"bad regexp", strings.Replace(oidcYAML, `"^db-(.*)$"`, `"^db-(.*$"`, 1), "spec.claims_to_roles[0].value: invalid regular expression"},
		{"capture out of range", strings.Replace(oidcYAML, `"$1-reader"`, `"$2-reader"`, 1), "refers to capture $2, but the value has 1 capture(s)"},
		{"invalid role", strings.Replace(oidcYAML, `"$1-reader"`, `"$1 reader"`, 1), "may only contain letters"},
		{"no mappings", strings.Replace(samlYAML, "    - {name: groups, value: admins, roles: [admin]}\n", "", 1) + "", "spec.attributes_to_roles: needs at least one mapping"},
		{"unknown field", strings.Replace(oidcYAML, "client_id:", "clientid:", 1), "spec.clientid: unknown field"},
		{"reserved name", strings.Replace(samlYAML, "name: corp", "name: local", 1), `"local" is reserved`},
		{"both metadata sources", strings.Replace(samlYAML, "  attributes_to_roles:", "  idp_metadata: <EntityDescriptor/>\n  attributes_to_roles:", 1), "set only one of idp_metadata_url and idp_metadata"},
		{"http redirect", strings.Replace(oidcYAML, "  scopes:", "  redirect_url: http://127.0.0.1:3443/cb\n  scopes:", 1), "spec.redirect_url: \"http://127.0.0.1:3443/cb\" must use https"},
		{"bad trait name", strings.Replace(oidcYAML, "db_users:", "\"db users\":", 1), "spec.traits"},
	} {
		_, err := ParseYAML([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
	// A provider on this host may use plain http.
	if _, err := ParseYAML([]byte(strings.Replace(oidcYAML, "https://example.okta.com", "http://127.0.0.1:5556/dex", 1))); err != nil {
		t.Errorf("loopback http issuer: %v", err)
	}
}

func TestExpandRoleTemplate(t *testing.T) {
	for _, tc := range []struct {
		tpl  string
		caps []string
		want string
	}{
		{"$1-reader", []string{"db-pay", "pay"}, "pay-reader"},
		{"${1}reader", []string{"x", "pay"}, "payreader"},
		{"$1reader", []string{"x", "pay"}, "payreader"},
		{"$2-$1", []string{"x", "a", "b"}, "b-a"},
		{"admin", []string{"x"}, "admin"},
		{"$3", []string{"x"}, ""},
	} {
		if got := ExpandRoleTemplate(tc.tpl, tc.caps); got != tc.want {
			t.Errorf("ExpandRoleTemplate(%q, %q) = %q, want %q", tc.tpl, tc.caps, got, tc.want)
		}
	}
}
