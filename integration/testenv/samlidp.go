package testenv

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/crewjam/saml"
	"github.com/crewjam/saml/logger"
	"github.com/crewjam/saml/samlidp"
)

// SAMLUser is a user of the test SAML IdP.
type SAMLUser struct {
	// Name is the login name; it is also the uid attribute.
	Name     string
	Password string
	// Email is the NameID and the mail attribute.
	Email string
	// Groups become the eduPersonAffiliation attribute
	// (urn:oid:1.3.6.1.4.1.5923.1.1.1.1).
	Groups []string
}

// SAMLIdP is a real SAML identity provider on a loopback port: the IdP
// that ships with github.com/crewjam/saml (samlidp), with its REST API
// for users and service providers.
type SAMLIdP struct {
	// URL is http://127.0.0.1:PORT.
	URL string
	// MetadataURL is where the IdP publishes its metadata.
	MetadataURL string
	srv         *httptest.Server
	t           testing.TB

	mu   sync.Mutex
	hook func(*saml.Assertion)
}

// SetAssertionHook changes every assertion the IdP makes before it signs
// it (nil stops): a misconfigured IdP, e.g. naming another audience.
func (p *SAMLIdP) SetAssertionHook(fn func(*saml.Assertion)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hook = fn
}

// MakeAssertion is the IdP's stock assertion, changed by the hook.
func (p *SAMLIdP) MakeAssertion(req *saml.IdpAuthnRequest, session *saml.Session) error {
	if err := (saml.DefaultAssertionMaker{}).MakeAssertion(req, session); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hook != nil {
		p.hook(req.Assertion)
	}
	return nil
}

// StartSAMLIdP starts the IdP; it stops at the end of the test.
func StartSAMLIdP(t testing.TB, users ...SAMLUser) *SAMLIdP {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base, _ := url.Parse("http://" + ln.Addr().String())
	key, cert := selfSignedRSA(t, "test saml idp")
	idp, err := samlidp.New(samlidp.Options{
		URL:         *base,
		Key:         key,
		Signer:      key,
		Certificate: cert,
		Store:       &samlidp.MemoryStore{},
		Logger:      logger.DefaultLogger,
	})
	if err != nil {
		t.Fatal(err)
	}
	// The stock login form posts to /login, which only opens a session;
	// posting back to /sso logs in and answers the AuthnRequest in one go.
	idp.IDP.LoginURL = idp.IDP.SSOURL
	p := &SAMLIdP{URL: base.String(), MetadataURL: base.String() + "/metadata", t: t}
	idp.IDP.AssertionMaker = p
	p.srv = &httptest.Server{Listener: ln, Config: &http.Server{Handler: idp, ReadHeaderTimeout: 10 * time.Second}}
	p.srv.Start()
	t.Cleanup(p.srv.Close)
	for _, u := range users {
		p.PutUser(u)
	}
	return p
}

// PutUser creates or replaces a user (through the IdP's REST API).
func (p *SAMLIdP) PutUser(u SAMLUser) {
	p.t.Helper()
	body := map[string]any{"name": u.Name, "email": u.Email, "groups": u.Groups, "common_name": u.Name}
	if u.Password != "" {
		body["password"] = u.Password
	}
	data, err := json.Marshal(body)
	if err != nil {
		p.t.Fatal(err)
	}
	p.put("/users/"+url.PathEscape(u.Name), "application/json", data)
}

// AddServiceProvider registers a service provider from its metadata XML.
func (p *SAMLIdP) AddServiceProvider(name string, metadata []byte) {
	p.t.Helper()
	p.put("/services/"+url.PathEscape(name), "application/samlmetadata+xml", metadata)
}

func (p *SAMLIdP) put(path, contentType string, body []byte) {
	p.t.Helper()
	req, err := http.NewRequest(http.MethodPut, p.URL+path, bytes.NewReader(body))
	if err != nil {
		p.t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(resp.Body)
		p.t.Fatalf("PUT %s at the SAML IdP: %s %s", path, resp.Status, msg)
	}
}

func selfSignedRSA(t testing.TB, cn string) (*rsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert
}
