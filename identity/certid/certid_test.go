package certid

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gravitational/trace"
	"golang.org/x/crypto/ssh"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

func fullIdentity() *Identity {
	return &Identity{
		Name:           "agent-7",
		Kind:           KindAgent,
		Roles:          []string{"dev", "readonly"},
		Traits:         map[string][]string{"logins": {"alice", "root"}, "db_users": {"app"}, "empty": nil},
		OnBehalfOf:     "alice",
		AccessRequests: []string{"req-1", "req-2"},
		Route:          Route{ResourceKind: "db", ResourceName: "orders", DBUser: "app", DBName: "shop", Login: ""},
		MFADevice:      "yubikey-5",
		ClientIP:       "2001:db8::1",
		Generation:     42,
	}
}

// testCA is a throwaway CA; certid cannot import identity/ca (which imports it).
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T, cn string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

type leafOpts struct {
	notBefore, notAfter time.Time
	usage               []x509.ExtKeyUsage
	extraExt            []pkix.Extension
}

func (ca *testCA) issue(t *testing.T, id *Identity, o leafOpts) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if o.notBefore.IsZero() {
		o.notBefore = time.Now().Add(-time.Minute)
	}
	if o.notAfter.IsZero() {
		o.notAfter = time.Now().Add(time.Hour)
	}
	if o.usage == nil {
		o.usage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(424242),
		NotBefore:    o.notBefore,
		NotAfter:     o.notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  o.usage,
	}
	if id != nil {
		if err := id.ApplyTo(tmpl); err != nil {
			t.Fatal(err)
		}
	}
	tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, o.extraExt...)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// withoutCertFields drops what comes from the certificate, not the identity.
func withoutCertFields(id *Identity) *Identity {
	c := *id
	c.Expires, c.Serial = time.Time{}, ""
	return &c
}

func TestX509RoundTrip(t *testing.T) {
	ca := newTestCA(t, "user CA")
	cases := map[string]*Identity{
		"all fields":    fullIdentity(),
		"only required": {Name: "bob", Kind: KindHuman},
		"unicode": {
			Name: "Zoë 山田 🚀", Kind: KindBot, Roles: []string{"rôle-é"},
			Traits: map[string][]string{"groupes": {"équipe", "チーム"}},
		},
		"route with login": {Name: "alice", Kind: KindHuman, Route: Route{ResourceKind: "node", ResourceName: "web-1", Login: "root"}},
	}
	for name, want := range cases {
		t.Run(name, func(t *testing.T) {
			cert := ca.issue(t, want, leafOpts{})
			if cert.Subject.CommonName != want.Name {
				t.Errorf("CN = %q, want %q", cert.Subject.CommonName, want.Name)
			}
			if !reflect.DeepEqual(cert.Subject.Organization, want.Roles) && len(want.Roles) > 0 {
				t.Errorf("O = %q, want roles %q", cert.Subject.Organization, want.Roles)
			}
			for _, e := range cert.Extensions {
				if e.Id.Equal(ExtensionOID) && e.Critical {
					t.Error("identity extension must be non-critical")
				}
			}
			got, err := Verify(cert, nil, ca.pool, time.Now())
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if got.Serial != "424242" {
				t.Errorf("Serial = %q, want 424242", got.Serial)
			}
			if !got.Expires.Equal(cert.NotAfter) {
				t.Errorf("Expires = %v, want %v", got.Expires, cert.NotAfter)
			}
			if !reflect.DeepEqual(withoutCertFields(got), want) {
				t.Errorf("round trip mismatch:\n got %#v\nwant %#v", withoutCertFields(got), want)
			}
		})
	}
}

func TestVerifyRefusals(t *testing.T) {
	ca := newTestCA(t, "user CA")
	foreign := newTestCA(t, "foreign CA")
	id := &Identity{Name: "alice", Kind: KindHuman}
	now := time.Now()
	cases := []struct {
		name    string
		cert    *x509.Certificate
		wantMsg string
	}{
		{"foreign CA", foreign.issue(t, id, leafOpts{}), "not issued by a trusted Sigil CA"},
		{"expired", ca.issue(t, id, leafOpts{notBefore: now.Add(-2 * time.Hour), notAfter: now.Add(-time.Hour)}), "certificate expired at"},
		{"not yet valid", ca.issue(t, id, leafOpts{notBefore: now.Add(time.Hour), notAfter: now.Add(2 * time.Hour)}), "not valid before"},
		{"server auth only", ca.issue(t, id, leafOpts{usage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}), "wrong key usage"},
		{"no identity", ca.issue(t, nil, leafOpts{}), "carries no Sigil identity"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Verify(tc.cert, nil, ca.pool, now)
			if err == nil {
				t.Fatal("Verify accepted the certificate")
			}
			if !trace.IsAccessDenied(err) {
				t.Errorf("want AccessDenied, got %T: %v", trace.Unwrap(err), err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not say %q", err, tc.wantMsg)
			}
		})
	}
}

func TestFromExtensionRefusals(t *testing.T) {
	marshal := func(p *sigilv1.Identity) []byte {
		b, err := proto.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	valid := (&Identity{Name: "a", Kind: KindHuman}).ToProto()
	v2 := proto.Clone(valid).(*sigilv1.Identity)
	v2.Version = 2
	noKind := proto.Clone(valid).(*sigilv1.Identity)
	noKind.Kind = sigilv1.IdentityKind_IDENTITY_KIND_UNSPECIFIED
	ctrl := proto.Clone(valid).(*sigilv1.Identity)
	ctrl.Name = "alice\nFAKE LOG LINE"
	behalf := proto.Clone(valid).(*sigilv1.Identity)
	behalf.OnBehalfOf = "root"
	big := proto.Clone(valid).(*sigilv1.Identity)
	big.Traits = map[string]*sigilv1.TraitValues{"x": {Values: []string{strings.Repeat("a", 1000)}}}
	for n := 0; n < 70; n++ {
		big.Traits["x"].Values = append(big.Traits["x"].Values, strings.Repeat("b", 1000))
	}
	cases := []struct {
		name    string
		ext     pkix.Extension
		wantMsg string
	}{
		{"unknown version", pkix.Extension{Id: ExtensionOID, Value: marshal(v2)}, "version 2"},
		{"oversized", pkix.Extension{Id: ExtensionOID, Value: marshal(big)}, "more than the 65536 allowed"},
		{"garbage", pkix.Extension{Id: ExtensionOID, Value: []byte{0xff, 0xff, 0xff}}, "malformed identity extension"},
		{"unspecified kind", pkix.Extension{Id: ExtensionOID, Value: marshal(noKind)}, "unknown kind"},
		{"control characters", pkix.Extension{Id: ExtensionOID, Value: marshal(ctrl)}, "control characters"},
		{"on behalf of for a human", pkix.Extension{Id: ExtensionOID, Value: marshal(behalf)}, "only valid for agents"},
		{"wrong OID", pkix.Extension{Id: []int{1, 2, 3}, Value: marshal(valid)}, "not a Sigil identity"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := FromExtension(tc.ext)
			if !trace.IsBadParameter(err) {
				t.Fatalf("want BadParameter, got %v", err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not say %q", err, tc.wantMsg)
			}
		})
	}
	if _, err := FromExtension(pkix.Extension{Id: ExtensionOID, Value: marshal(valid)}); err != nil {
		t.Fatalf("the valid control case was refused: %v", err)
	}
}

func TestExtensionRefusesOversizedIdentity(t *testing.T) {
	id := &Identity{Name: "a", Kind: KindHuman}
	for n := 0; n < 100; n++ {
		id.Roles = append(id.Roles, strings.Repeat("r", 1000))
	}
	if _, err := id.Extension(); err == nil || !strings.Contains(err.Error(), "more than the 65536 allowed") {
		t.Fatalf("want size refusal, got %v", err)
	}
}

func TestCheckAndSetDefaults(t *testing.T) {
	cases := []struct {
		name    string
		id      Identity
		wantErr string
	}{
		{"ok", Identity{Name: "a", Kind: KindBot}, ""},
		{"no name", Identity{Kind: KindBot}, "name is required"},
		{"no kind", Identity{Name: "a"}, "unknown identity kind"},
		{"bad kind", Identity{Name: "a", Kind: "robot"}, "unknown identity kind"},
		{"bad ip", Identity{Name: "a", Kind: KindHuman, ClientIP: "nope"}, "not an IP address"},
		{"empty role", Identity{Name: "a", Kind: KindHuman, Roles: []string{""}}, "empty entry"},
		{"half route", Identity{Name: "a", Kind: KindHuman, Route: Route{DBUser: "x"}}, "resource_kind and resource_name"},
		{"self on behalf", Identity{Name: "a", Kind: KindAgent, OnBehalfOf: "a"}, "itself"},
		{"human generation", Identity{Name: "a", Kind: KindHuman, Generation: 3}, "only valid for bots and agents"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.id.CheckAndSetDefaults()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("want error containing %q, got %v", tc.wantErr, err)
			}
		})
	}
	if k, err := ParseKind("agent"); err != nil || k != KindAgent {
		t.Errorf("ParseKind(agent) = %q, %v", k, err)
	}
}

func newSSHKey(t *testing.T) (ssh.PublicKey, ssh.Signer) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromSigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	return sshPub, signer
}

func TestSSHRoundTrip(t *testing.T) {
	userPub, _ := newSSHKey(t)
	_, caSigner := newSSHKey(t)
	cases := []struct {
		name           string
		id             *Identity
		wantPrincipals []string
	}{
		{"all fields", fullIdentity(), []string{"alice", "root"}},
		{"route login wins", &Identity{Name: "bob", Kind: KindHuman, Traits: map[string][]string{"logins": {"bob"}}, Route: Route{ResourceKind: "node", ResourceName: "n1", Login: "deploy"}}, []string{"deploy"}},
		{"no logins", &Identity{Name: "bot-1", Kind: KindBot}, []string{NoLoginPrincipal}},
		{"unicode", &Identity{Name: "Zoë 山田", Kind: KindHuman, Roles: []string{"équipe"}}, []string{NoLoginPrincipal}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cert := &ssh.Certificate{Key: userPub, CertType: ssh.UserCert, Serial: 77, ValidAfter: 1, ValidBefore: 2_000_000_000}
			if err := tc.id.ToSSHCert(cert); err != nil {
				t.Fatal(err)
			}
			if err := cert.SignCert(rand.Reader, caSigner); err != nil {
				t.Fatal(err)
			}
			// Through the wire format, as a server would see it.
			parsed, err := ssh.ParsePublicKey(cert.Marshal())
			if err != nil {
				t.Fatal(err)
			}
			cert = parsed.(*ssh.Certificate)
			if !reflect.DeepEqual(cert.ValidPrincipals, tc.wantPrincipals) {
				t.Errorf("principals = %q, want %q", cert.ValidPrincipals, tc.wantPrincipals)
			}
			if _, ok := cert.Permissions.Extensions["permit-pty"]; !ok {
				t.Error("permit-pty missing")
			}
			if len(cert.Permissions.CriticalOptions) != 0 {
				t.Errorf("unexpected critical options %v: OpenSSH would refuse the cert", cert.Permissions.CriticalOptions)
			}
			got, err := FromSSHCert(cert)
			if err != nil {
				t.Fatal(err)
			}
			if got.Serial != "77" || got.Expires.Unix() != 2_000_000_000 {
				t.Errorf("serial/expires = %q/%v", got.Serial, got.Expires)
			}
			if !reflect.DeepEqual(withoutCertFields(got), tc.id) {
				t.Errorf("round trip mismatch:\n got %#v\nwant %#v", withoutCertFields(got), tc.id)
			}
		})
	}
}

func TestFromSSHCertRefusals(t *testing.T) {
	base := func() *ssh.Certificate {
		c := &ssh.Certificate{CertType: ssh.UserCert}
		if err := (&Identity{Name: "a", Kind: KindHuman}).ToSSHCert(c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	cases := []struct {
		name    string
		mutate  func(*ssh.Certificate)
		wantMsg string
	}{
		{"no identity", func(c *ssh.Certificate) { delete(c.Permissions.Extensions, SSHExtVersion) }, "carries no Sigil identity"},
		{"version", func(c *ssh.Certificate) { c.Permissions.Extensions[SSHExtVersion] = "9" }, "version \"9\""},
		{"host cert", func(c *ssh.Certificate) { c.CertType = ssh.HostCert }, "not a user certificate"},
		{"bad roles", func(c *ssh.Certificate) { c.Permissions.Extensions[SSHExtRoles] = "{" }, "malformed"},
		{"bad kind", func(c *ssh.Certificate) { c.Permissions.Extensions[SSHExtKind] = "root" }, "unknown identity kind"},
		{"oversized", func(c *ssh.Certificate) { c.Permissions.Extensions["x"] = strings.Repeat("a", MaxExtensionSize) }, "more than the"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mutate(c)
			_, err := FromSSHCert(c)
			if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("want error containing %q, got %v", tc.wantMsg, err)
			}
		})
	}
}

func FuzzFromExtension(f *testing.F) {
	for _, id := range []*Identity{fullIdentity(), {Name: "x", Kind: KindHuman}} {
		ext, err := id.Extension()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(ext.Value)
	}
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x02})
	f.Fuzz(func(t *testing.T, data []byte) {
		id, err := FromExtension(pkix.Extension{Id: ExtensionOID, Value: data})
		if err != nil {
			return
		}
		ext, err := id.Extension()
		if err != nil {
			t.Fatalf("accepted identity does not re-encode: %v (%#v)", err, id)
		}
		again, err := FromExtension(ext)
		if err != nil {
			t.Fatalf("re-encoded identity does not decode: %v", err)
		}
		if !reflect.DeepEqual(id, again) {
			t.Fatalf("re-encode changed the identity:\n%#v\n%#v", id, again)
		}
	})
}
