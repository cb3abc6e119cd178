package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

func TestIdentityDirRoundTrip(t *testing.T) {
	ca := newTestCA(t, "user-ca")
	notAfter := time.Now().Add(2 * time.Hour).Truncate(time.Second)
	certPEM, keyPEM := ca.issue(t, "alice", false, notAfter)
	id := &Identity{Proxy: "127.0.0.1:3443", CertPEM: certPEM, KeyPEM: keyPEM, TLSCAPEM: ca.pem}

	dir := filepath.Join(t.TempDir(), "nested", "id")
	if err := WriteIdentityDir(dir, id); err != nil {
		t.Fatal(err)
	}
	// Rewriting over an existing directory must work too (renewal).
	if err := WriteIdentityDir(dir, id); err != nil {
		t.Fatal(err)
	}
	got, err := LoadIdentityDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Proxy != id.Proxy || !bytes.Equal(got.CertPEM, certPEM) || !bytes.Equal(got.KeyPEM, keyPEM) || !bytes.Equal(got.TLSCAPEM, ca.pem) {
		t.Fatalf("round trip mismatch: %+v", got)
	}
	for name, want := range map[string]os.FileMode{".": 0o700, KeyFile: 0o600} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode = %v, want %v", name, st.Mode().Perm(), want)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 {
		t.Errorf("expected exactly 4 files (no temp leftovers), got %d", len(entries))
	}
	if !got.Expires().Equal(notAfter) {
		t.Errorf("Expires = %v, want %v", got.Expires(), notAfter)
	}
	cert, err := got.Certificate()
	if err != nil || cert.Subject.CommonName != "alice" {
		t.Fatalf("Certificate = %v, %v", cert, err)
	}
	conf, err := got.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	if conf.ServerName != "127.0.0.1" || conf.MinVersion != tls.VersionTLS13 || len(conf.Certificates) != 1 || conf.RootCAs == nil {
		t.Errorf("unexpected TLS config: server=%q min=%x certs=%d", conf.ServerName, conf.MinVersion, len(conf.Certificates))
	}
}

func TestLoadIdentityDirMissingFile(t *testing.T) {
	ca := newTestCA(t, "user-ca")
	certPEM, keyPEM := ca.issue(t, "alice", false, time.Now().Add(time.Hour))
	for _, missing := range []string{CertFile, KeyFile, CAFile, ProxyFile} {
		t.Run(missing, func(t *testing.T) {
			dir := t.TempDir()
			if err := WriteIdentityDir(dir, &Identity{Proxy: "localhost:3443", CertPEM: certPEM, KeyPEM: keyPEM, TLSCAPEM: ca.pem}); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(filepath.Join(dir, missing)); err != nil {
				t.Fatal(err)
			}
			_, err := LoadIdentityDir(dir)
			if !trace.IsNotFound(err) {
				t.Fatalf("want NotFound, got %v", err)
			}
			want := "identity directory " + dir + " has no " + missing + " file"
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not contain %q", err, want)
			}
		})
	}
}

func TestWriteIdentityDirRejectsIncomplete(t *testing.T) {
	err := WriteIdentityDir(t.TempDir(), &Identity{Proxy: "localhost:1", CertPEM: []byte("x"), TLSCAPEM: []byte("x")})
	if err == nil || !strings.Contains(err.Error(), "no private key") {
		t.Fatalf("got %v", err)
	}
}

func TestTLSConfigMismatchedKey(t *testing.T) {
	ca := newTestCA(t, "user-ca")
	certPEM, _ := ca.issue(t, "alice", false, time.Now().Add(time.Hour))
	_, otherKey := ca.issue(t, "bob", false, time.Now().Add(time.Hour))
	_, err := (&Identity{Proxy: "localhost:3443", CertPEM: certPEM, KeyPEM: otherKey, TLSCAPEM: ca.pem}).TLSConfig()
	if err == nil || !strings.Contains(err.Error(), "do not form a valid pair") {
		t.Fatalf("got %v", err)
	}
}

func TestFingerprintFormat(t *testing.T) {
	fp := Fingerprint([]byte("hello"))
	re := regexp.MustCompile(`^sha256:([0-9A-F]{2}:){31}[0-9A-F]{2}$`)
	if !re.MatchString(fp) {
		t.Fatalf("bad fingerprint format %q", fp)
	}
	// sha256("hello") = 2cf24dba...
	if !strings.HasPrefix(fp, "sha256:2C:F2:4D:BA:") {
		t.Fatalf("wrong digest %q", fp)
	}
}

func TestKnownCAs(t *testing.T) {
	home := t.TempDir()
	k := NewKnownCAs(home)
	if _, ok, err := k.Lookup("127.0.0.1:3443"); err != nil || ok {
		t.Fatalf("empty lookup: ok=%v err=%v", ok, err)
	}
	fp1 := Fingerprint([]byte("one"))
	fp2 := Fingerprint([]byte("two"))
	if err := k.Add("127.0.0.1:3443", fp1); err != nil {
		t.Fatal(err)
	}
	if err := k.Add("localhost:3443", fp2); err != nil {
		t.Fatal(err)
	}
	got, ok, err := k.Lookup("127.0.0.1:3443")
	if err != nil || !ok || got != fp1 {
		t.Fatalf("lookup = %q %v %v", got, ok, err)
	}
	// A changed CA replaces the line instead of adding a second one.
	if err := k.Add("127.0.0.1:3443", fp2); err != nil {
		t.Fatal(err)
	}
	got, _, _ = k.Lookup("127.0.0.1:3443")
	if got != fp2 {
		t.Fatalf("after change lookup = %q", got)
	}
	data, _ := os.ReadFile(filepath.Join(home, KnownCAsFile))
	if n := strings.Count(string(data), "\n"); n != 2 {
		t.Fatalf("want 2 lines, got %d: %q", n, data)
	}
	if err := k.Add("127.0.0.1:3443", "md5:xx"); err == nil {
		t.Fatal("expected a bad fingerprint to be refused")
	}
	if err := os.WriteFile(k.Path, []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := k.Lookup("x:1"); err == nil || !strings.Contains(err.Error(), "malformed line") {
		t.Fatalf("want malformed error, got %v", err)
	}
}

func TestProfileSaveLoadDelete(t *testing.T) {
	home := t.TempDir()
	if _, err := CurrentProfile(home); !trace.IsNotFound(err) || !strings.Contains(err.Error(), `not logged in; run "sigil login --proxy HOST:PORT"`) {
		t.Fatalf("want not-logged-in error, got %v", err)
	}
	ca := newTestCA(t, "user-ca")
	certPEM, keyPEM := ca.issue(t, "alice", false, time.Now().Add(time.Hour))
	exp := time.Date(2026, 11, 23, 16, 40, 0, 0, time.UTC)
	p := &Profile{
		Proxy: "127.0.0.1:3443", User: "alice", Kind: "human", Roles: []string{"dev"},
		Traits:   map[string][]string{"logins": {"alice", "root"}},
		Expires:  exp,
		Identity: &Identity{Proxy: "127.0.0.1:3443", CertPEM: certPEM, KeyPEM: keyPEM, TLSCAPEM: ca.pem},
	}
	if err := SaveProfile(home, p); err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(home, "profiles", "127.0.0.1_3443"); p.Dir != want {
		t.Fatalf("dir = %q, want %q", p.Dir, want)
	}
	got, err := CurrentProfile(home)
	if err != nil {
		t.Fatal(err)
	}
	if got.User != "alice" || got.Kind != "human" || strings.Join(got.Roles, ",") != "dev" ||
		strings.Join(got.Traits["logins"], ",") != "alice,root" || !got.Expires.Equal(exp) || got.Identity == nil ||
		!bytes.Equal(got.Identity.KeyPEM, keyPEM) {
		t.Fatalf("loaded profile differs: %+v", got)
	}
	if err := DeleteProfile(home, "127.0.0.1:3443"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.Dir); !os.IsNotExist(err) {
		t.Fatalf("profile dir still there: %v", err)
	}
	if _, err := CurrentProfile(home); !trace.IsNotFound(err) {
		t.Fatalf("want not logged in after delete, got %v", err)
	}
}

func TestProfileDirSanitizes(t *testing.T) {
	home := "/h"
	for in, want := range map[string]string{
		"127.0.0.1:3443":  "/h/profiles/127.0.0.1_3443",
		"[::1]:3443":      "/h/profiles/___1__3443",
		"../../etc:1":     "/h/profiles/.._.._etc_1",
		"..":              "/h/profiles/_",
		"sigil.example:1": "/h/profiles/sigil.example_1",
	} {
		if got := ProfileDir(home, in); got != want {
			t.Errorf("ProfileDir(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFetchCA(t *testing.T) {
	ca := newTestCA(t, "tls-ca")
	addr := startGateway(t, ca, ca.pem, nil)
	ctx := context.Background()
	caPEM, fp, err := FetchCA(ctx, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(caPEM, ca.pem) {
		t.Fatal("returned CA differs from the advertised one")
	}
	if want := Fingerprint(ca.cert.Raw); fp != want {
		t.Fatalf("fingerprint %q, want %q", fp, want)
	}
}

func TestFetchCARefusesLeafNotChainingToAdvertisedCA(t *testing.T) {
	real := newTestCA(t, "tls-ca")
	mitm := newTestCA(t, "mitm-ca")
	// The server presents a leaf signed by mitm but advertises the real CA.
	addr := startGateway(t, mitm, real.pem, nil)
	_, _, err := FetchCA(context.Background(), addr, 5*time.Second)
	if !trace.IsAccessDenied(err) || !strings.Contains(err.Error(), "does not chain to the CA it advertises") {
		t.Fatalf("want refusal, got %v", err)
	}
}

func TestFetchCAUnreachable(t *testing.T) {
	_, _, err := FetchCA(context.Background(), "127.0.0.1:1", 2*time.Second)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the gateway at 127.0.0.1:1") {
		t.Fatalf("got %v", err)
	}
}

func TestClientMTLS(t *testing.T) {
	tlsCA := newTestCA(t, "tls-ca")
	userCA := newTestCA(t, "user-ca")
	addr := startGateway(t, tlsCA, tlsCA.pem, userCA)
	certPEM, keyPEM := userCA.issue(t, "alice", false, time.Now().Add(time.Hour))
	ctx := context.Background()

	// Without a client certificate: ClusterInfo works, WhoAmI is refused.
	pool, err := CertPoolFromPEM(tlsCA.pem)
	if err != nil {
		t.Fatal(err)
	}
	anon, err := New(Config{Addr: addr, TLS: &tls.Config{RootCAs: pool}})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	info, err := anon.Auth.ClusterInfo(ctx, connect.NewRequest(&sigilv1.ClusterInfoRequest{}))
	if err != nil || info.Msg.GetClusterName() != "test" {
		t.Fatalf("ClusterInfo = %v, %v", info, err)
	}
	if _, err := anon.Auth.WhoAmI(ctx, connect.NewRequest(&sigilv1.WhoAmIRequest{})); err == nil {
		t.Fatal("WhoAmI without a client cert must fail")
	}

	c, err := NewFromIdentity(&Identity{Proxy: addr, CertPEM: certPEM, KeyPEM: keyPEM, TLSCAPEM: tlsCA.pem}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	who, err := c.Auth.WhoAmI(ctx, connect.NewRequest(&sigilv1.WhoAmIRequest{}))
	if err != nil || who.Msg.GetCertSerial() != "ok" {
		t.Fatalf("WhoAmI = %v, %v", who, err)
	}
}

func TestConfigCheck(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{TLS: &tls.Config{}}, "missing gateway address"},
		{Config{Addr: "nohost", TLS: &tls.Config{}}, "is not HOST:PORT"},
		{Config{Addr: "h:1"}, "missing TLS config"},
	} {
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

func TestVerifyServerChain(t *testing.T) {
	ca := newTestCA(t, "tls-ca")
	other := newTestCA(t, "other")
	certPEM, _ := ca.issue(t, "gateway", true, time.Now().Add(time.Hour))
	chain, err := ParseCertificatesPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	root, err := VerifyServerChain(chain, append(append([]byte{}, other.pem...), ca.pem...), "localhost")
	if err != nil || !root.Equal(ca.cert) {
		t.Fatalf("valid chain: root=%v err=%v", root, err)
	}
	var herr x509.HostnameError
	if _, err := VerifyServerChain(chain, ca.pem, "evil.example"); !errors.As(err, &herr) {
		t.Fatalf("want a hostname error, got %v", err)
	}
	if _, err := VerifyServerChain(chain, other.pem, "localhost"); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("want unknown authority, got %v", err)
	}
}
