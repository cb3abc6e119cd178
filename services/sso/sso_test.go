package sso

import (
	"bytes"
	"context"
	"crypto/sha256"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gravitational/trace"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/storage/badger"
)

func newTestService(t *testing.T) (*Service, *resources.Store) {
	t.Helper()
	ctx := context.Background()
	backend, err := badger.New(ctx, badger.Config{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	store, err := resources.New(backend)
	if err != nil {
		t.Fatal(err)
	}
	sealer, err := ca.NewFileSealer(filepath.Join(t.TempDir(), "seal.key"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Backend: backend, Resources: store, Sealer: sealer, PublicAddr: "gw.example.com:3443", Emitter: audit.DiscardEmitter{}})
	if err != nil {
		t.Fatal(err)
	}
	return s, store
}

func oidcConnector(t *testing.T, name, secret string) *types.OIDCConnector {
	t.Helper()
	c := &types.OIDCConnector{
		Metadata: types.Metadata{Name: name},
		Spec: types.OIDCConnectorSpec{
			IssuerURL:     "https://idp.example.com",
			ClientID:      "sigil",
			ClientSecret:  secret,
			ClaimsToRoles: []types.ClaimMapping{{Claim: "groups", Value: "admins", Roles: []string{"admin"}}},
		},
	}
	if err := c.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCheckClientCallback(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want string
	}{
		{"http://127.0.0.1:53211/callback", ""},
		{"http://localhost:4000/cb?x=1", ""},
		{"http://[::1]:4000/", ""},
		{"", "missing"},
		{"https://127.0.0.1:53211/callback", "must be http://127.0.0.1"},
		{"http://127.0.0.1/callback", "explicit port"},
		{"http://127.0.0.1:0/callback", "explicit port"},
		{"http://evil.example.com:80/callback", "not a loopback address"},
		{"http://10.0.0.1:80/callback", "not a loopback address"},
		{"http://user:pw@127.0.0.1:80/callback", "must be http://127.0.0.1"},
		{"http://127.0.0.1:80/callback#frag", "must be http://127.0.0.1"},
		{"javascript:alert(1)", "must be http://127.0.0.1"},
	} {
		err := CheckClientCallback(tc.url)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.url, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q: err = %v, want %q", tc.url, err, tc.want)
		}
	}
}

func TestClientSecretSealedApart(t *testing.T) {
	ctx := context.Background()
	s, store := newTestService(t)
	c := oidcConnector(t, "okta", "")
	if _, err := store.Create(ctx, c); err != nil {
		t.Fatal(err)
	}
	if err := s.ConnectorStored(ctx, c, "hunter2-client-secret"); err != nil {
		t.Fatal(err)
	}
	item, err := s.cfg.Backend.Get(ctx, oidcSecretPrefix+"okta")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(item.Value, []byte("hunter2")) {
		t.Fatal("the client secret is stored in the clear")
	}
	if got, err := s.clientSecret(ctx, "okta"); err != nil || got != "hunter2-client-secret" {
		t.Fatalf("clientSecret = %q, %v", got, err)
	}
	// An update without a secret keeps the stored one.
	if err := s.ConnectorStored(ctx, c, ""); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.clientSecret(ctx, "okta"); got != "hunter2-client-secret" {
		t.Fatalf("secret after an update without one = %q", got)
	}
	// A sealed secret does not open under another connector's name.
	if _, err := s.cfg.Sealer.Open(item.Value, secretAAD("other")); err == nil {
		t.Fatal("a sealed secret opened for another connector")
	}
	if err := s.ConnectorDeleted(ctx, types.KindOIDCConnector, "okta"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.clientSecret(ctx, "okta"); err != nil || got != "" {
		t.Fatalf("secret after delete = %q, %v", got, err)
	}
}

func TestConnectorNamesShared(t *testing.T) {
	ctx := context.Background()
	s, store := newTestService(t)
	if _, err := store.Create(ctx, oidcConnector(t, "corp", "")); err != nil {
		t.Fatal(err)
	}
	sc := &types.SAMLConnector{
		Metadata: types.Metadata{Name: "corp"},
		Spec: types.SAMLConnectorSpec{
			IDPMetadataURL:    "https://idp.example.com/metadata",
			AttributesToRoles: []types.AttributeMapping{{Name: "groups", Value: "x", Roles: []string{"x"}}},
		},
	}
	if err := sc.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckConnector(ctx, sc); !trace.IsAlreadyExists(err) || !strings.Contains(err.Error(), "shared by both kinds") {
		t.Fatalf("CheckConnector = %v", err)
	}
}

func TestSAMLKeyAndMetadata(t *testing.T) {
	ctx := context.Background()
	s, store := newTestService(t)
	sc := &types.SAMLConnector{
		Metadata: types.Metadata{Name: "corp-saml"},
		Spec: types.SAMLConnectorSpec{
			IDPMetadataURL:    "https://idp.example.com/metadata",
			AttributesToRoles: []types.AttributeMapping{{Name: "groups", Value: "x", Roles: []string{"x"}}},
		},
	}
	if _, err := store.Create(ctx, sc); err != nil {
		t.Fatal(err)
	}
	if err := s.ConnectorStored(ctx, sc, ""); err != nil {
		t.Fatal(err)
	}
	md1, err := s.SPMetadata(ctx, "corp-saml")
	if err != nil {
		t.Fatal(err)
	}
	md2, err := s.SPMetadata(ctx, "corp-saml")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`entityID="https://gw.example.com:3443/web/sso/saml/metadata/corp-saml"`,
		`Location="https://gw.example.com:3443/web/sso/saml/acs"`,
		"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST",
		`WantAssertionsSigned="true"`,
	} {
		if !strings.Contains(string(md1), want) {
			t.Errorf("SP metadata lacks %s:\n%s", want, md1)
		}
	}
	if strings.Contains(string(md1), "HTTP-Artifact") {
		t.Errorf("SP metadata announces the artifact binding:\n%s", md1)
	}
	// The key is made once and kept.
	certRe := regexp.MustCompile(`<X509Certificate[^>]*>([^<]+)<`)
	cert := func(md []byte) string {
		if m := certRe.FindSubmatch(md); m != nil {
			return string(m[1])
		}
		return ""
	}
	if cert(md1) == "" || cert(md1) != cert(md2) {
		t.Fatal("the SP certificate changed between two reads")
	}
	item, err := s.cfg.Backend.Get(ctx, samlKeyPrefix+"corp-saml")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(item.Value, []byte("PRIVATE KEY")) {
		t.Fatal("the SP key is stored in the clear")
	}
}

func TestLoginRequestLifecycle(t *testing.T) {
	ctx := context.Background()
	s, store := newTestService(t)
	if _, err := store.Create(ctx, oidcConnector(t, "okta", "")); err != nil {
		t.Fatal(err)
	}
	secret := []byte("0123456789abcdef0123456789abcdef")
	sum := sha256.Sum256(secret)
	begin := BeginRequest{
		Connector:         "okta",
		TLSPublicKey:      []byte("key"),
		ClientCallbackURL: "http://127.0.0.1:5000/callback",
		SecretHash:        sum[:],
		ClientAddr:        "127.0.0.1:1234",
	}
	b, err := s.Begin(ctx, begin)
	if err != nil {
		t.Fatal(err)
	}
	if b.AuthURL != "https://gw.example.com:3443/web/sso/start/"+b.ID {
		t.Fatalf("AuthURL = %s", b.AuthURL)
	}
	if _, err := s.Begin(ctx, BeginRequest{Connector: "nope", ClientCallbackURL: begin.ClientCallbackURL, SecretHash: sum[:], TLSPublicKey: []byte("k")}); !trace.IsNotFound(err) {
		t.Fatalf("Begin with an unknown connector: %v", err)
	}
	res, err := s.Result(ctx, b.ID, secret)
	if err != nil || !res.Pending {
		t.Fatalf("Result before the login finished = %+v, %v", res, err)
	}
	if _, err := s.Result(ctx, b.ID, []byte("wrong")); !trace.IsAccessDenied(err) {
		t.Fatalf("Result with a wrong secret: %v", err)
	}
	// Finish it as the callback would.
	req, err := s.get(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	data, err := proto.Marshal(&sigilv1.LoginResponse{TlsCertPem: []byte("cert")})
	if err != nil {
		t.Fatal(err)
	}
	req.Stage, req.Result = stageDone, data
	if err := s.update(ctx, req); err != nil {
		t.Fatal(err)
	}
	res, err = s.Result(ctx, b.ID, secret)
	if err != nil || res.Pending || string(res.Login.TlsCertPem) != "cert" || res.Connector != "okta" {
		t.Fatalf("Result = %+v, %v", res, err)
	}
	if _, err := s.Result(ctx, b.ID, secret); !trace.IsNotFound(err) {
		t.Fatalf("second Result: %v", err)
	}
	if _, err := s.byState(ctx, req.State); !trace.IsAccessDenied(err) || !strings.Contains(err.Error(), "state mismatch") {
		t.Fatalf("state of a fetched login: %v", err)
	}
	// A start page works once.
	b2, err := s.Begin(ctx, begin)
	if err != nil {
		t.Fatal(err)
	}
	req2, err := s.get(ctx, b2.ID)
	if err != nil {
		t.Fatal(err)
	}
	req2.Stage = stageStarted
	if err := s.update(ctx, req2); err != nil {
		t.Fatal(err)
	}
	if out := s.Start(ctx, b2.ID); out.Err == nil || !strings.Contains(out.Err.Error(), "already opened") {
		t.Fatalf("second Start: %+v", out)
	}
}
