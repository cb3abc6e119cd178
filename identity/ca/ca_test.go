package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gravitational/trace"
	"golang.org/x/crypto/ssh"

	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/storage"
	"github.com/sigilhq/sigil/services/storage/badger"
)

func newBackend(t testing.TB) storage.Backend {
	t.Helper()
	b, err := badger.New(context.Background(), badger.Config{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func newSealer(t testing.TB) *FileSealer {
	t.Helper()
	s, err := NewFileSealer(filepath.Join(t.TempDir(), "seal.key"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newAuthority(t testing.TB, b storage.Backend, s Sealer) *Authority {
	t.Helper()
	a, err := New(context.Background(), Config{Backend: b, Sealer: s, ClusterName: "test", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func parsePEM(t testing.TB, b []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("not PEM: %q", b)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func clientKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestCreateThenReopen(t *testing.T) {
	b := newBackend(t)
	s := newSealer(t)
	first := newAuthority(t, b, s)
	if !slices.Equal(first.Created(), Types()) {
		t.Fatalf("first start created %v, want all %v", first.Created(), Types())
	}
	second := newAuthority(t, b, s)
	if len(second.Created()) != 0 {
		t.Fatalf("restart created %v, want none", second.Created())
	}
	for _, typ := range Types() {
		if first.Fingerprint(typ) == "" || first.Fingerprint(typ) != second.Fingerprint(typ) {
			t.Errorf("%s fingerprint changed across restart: %q vs %q", typ, first.Fingerprint(typ), second.Fingerprint(typ))
		}
		if typ == AuditKey {
			pub := second.AuditPublicKey()
			if len(first.AuditSigner()) != ed25519.PrivateKeySize || !first.AuditPublicKey().Equal(pub) {
				t.Errorf("audit key changed across restart or is not Ed25519")
			}
			msg := []byte("checkpoint")
			if !ed25519.Verify(pub, msg, ed25519.Sign(first.AuditSigner(), msg)) {
				t.Error("audit signer does not match the audit public key")
			}
			if first.CertPEM(typ) != nil || first.SSHPublicKey(typ) != nil {
				t.Error("audit key exposed as a certificate or SSH CA")
			}
			continue
		}
		if typ.IsSSH() {
			if !bytes.Equal(first.SSHPublicKey(typ).Marshal(), second.SSHPublicKey(typ).Marshal()) {
				t.Errorf("%s public key changed", typ)
			}
			if first.CertPEM(typ) != nil {
				t.Errorf("%s: SSH CA has a PEM cert", typ)
			}
			continue
		}
		if !bytes.Equal(first.CertPEM(typ), second.CertPEM(typ)) {
			t.Errorf("%s CA cert changed across restart", typ)
		}
		if !first.cas[typ].key.Equal(second.cas[typ].key) {
			t.Errorf("%s CA key changed across restart", typ)
		}
		cert := parsePEM(t, first.CertPEM(typ))
		if want := "Sigil " + string(typ) + " CA test"; cert.Subject.CommonName != want {
			t.Errorf("CN = %q, want %q", cert.Subject.CommonName, want)
		}
		if !cert.IsCA || cert.CheckSignatureFrom(cert) != nil {
			t.Errorf("%s CA cert is not a self-signed CA", typ)
		}
		if d := cert.NotAfter.Sub(cert.NotBefore); d < 10*365*24*time.Hour {
			t.Errorf("%s CA valid for %v, want 10 years", typ, d)
		}
		if _, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok {
			t.Errorf("%s CA key is %T, want ECDSA", typ, cert.PublicKey)
		}
	}
	if _, ok := first.SSHPublicKey(SSHUserCA).(ssh.CryptoPublicKey).CryptoPublicKey().(ed25519.PublicKey); !ok {
		t.Error("SSH CA is not Ed25519")
	}
	if first.Fingerprint(TLSCA) == first.Fingerprint(UserCA) {
		t.Error("TLS and user CA share a key")
	}
	if !regexp.MustCompile(`^sha256:([0-9A-F]{2}:){31}[0-9A-F]{2}$`).MatchString(first.Fingerprint(TLSCA)) {
		t.Errorf("fingerprint format: %q", first.Fingerprint(TLSCA))
	}
}

func TestReopenWithOtherSealKeyFails(t *testing.T) {
	b := newBackend(t)
	newAuthority(t, b, newSealer(t))
	_, err := New(context.Background(), Config{Backend: b, Sealer: newSealer(t), ClusterName: "test", Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), "failed authentication") {
		t.Fatalf("want seal authentication failure, got %v", err)
	}
}

// racingBackend hides existing CAs from the first Get of each key, as if
// another daemon created them between our Get and our Create.
type racingBackend struct {
	storage.Backend
	seen sync.Map
}

func (r *racingBackend) Get(ctx context.Context, key string) (*storage.Item, error) {
	if _, loaded := r.seen.LoadOrStore(key, true); !loaded {
		return nil, trace.NotFound("hidden %s", key)
	}
	return r.Backend.Get(ctx, key)
}

func TestCreateRaceLoadsWinner(t *testing.T) {
	b := newBackend(t)
	s := newSealer(t)
	winner := newAuthority(t, b, s)
	// Each type does Get (hidden) then Create (AlreadyExists) then Get.
	loser := newAuthority(t, &racingBackend{Backend: b}, s)
	if len(loser.Created()) != 0 {
		t.Fatalf("loser claims to have created %v", loser.Created())
	}
	for _, typ := range Types() {
		if winner.Fingerprint(typ) != loser.Fingerprint(typ) {
			t.Errorf("%s: loser did not adopt the winner's CA", typ)
		}
	}
}

func TestSealer(t *testing.T) {
	s := newSealer(t)
	sealed, err := s.Seal([]byte("secret key"), []byte(UserCA))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("secret key")) {
		t.Fatal("sealed data contains the plaintext")
	}
	plain, err := s.Open(sealed, []byte(UserCA))
	if err != nil || string(plain) != "secret key" {
		t.Fatalf("Open = %q, %v", plain, err)
	}
	if _, err := s.Open(sealed, []byte(TLSCA)); !trace.IsAccessDenied(err) {
		t.Errorf("wrong AAD: want AccessDenied, got %v", err)
	}
	tampered := slices.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	if _, err := s.Open(tampered, []byte(UserCA)); !trace.IsAccessDenied(err) {
		t.Errorf("tampered: want AccessDenied, got %v", err)
	}
	if _, err := s.Open(sealed[:5], []byte(UserCA)); err == nil {
		t.Error("truncated data opened")
	}
}

func TestTamperedStoredKeyFails(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	s := newSealer(t)
	newAuthority(t, b, s)

	// Swap the user CA's sealed key for the TLS CA's: AAD must catch it.
	item, err := b.Get(ctx, "/cas/user")
	if err != nil {
		t.Fatal(err)
	}
	tlsItem, err := b.Get(ctx, "/cas/tls")
	if err != nil {
		t.Fatal(err)
	}
	var rec, tlsRec record
	if err := json.Unmarshal(item.Value, &rec); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(tlsItem.Value, &tlsRec); err != nil {
		t.Fatal(err)
	}
	rec.SealedKey = tlsRec.SealedKey
	item.Value, _ = json.Marshal(rec)
	if _, err := b.Put(ctx, *item); err != nil {
		t.Fatal(err)
	}
	_, err = New(ctx, Config{Backend: b, Sealer: s, ClusterName: "test", Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), "failed authentication") {
		t.Fatalf("swapped key: want authentication failure, got %v", err)
	}

	// Swap the certificate instead (sealed key intact): the key no longer
	// matches the certificate that would be handed out.
	b2 := newBackend(t)
	a2 := newAuthority(t, b2, s)
	it2, err := b2.Get(ctx, "/cas/user")
	if err != nil {
		t.Fatal(err)
	}
	var rec2 record
	if err := json.Unmarshal(it2.Value, &rec2); err != nil {
		t.Fatal(err)
	}
	rec2.CertPEM = string(a2.CertPEM(TLSCA))
	it2.Value, _ = json.Marshal(rec2)
	if _, err := b2.Put(ctx, *it2); err != nil {
		t.Fatal(err)
	}
	_, err = New(ctx, Config{Backend: b2, Sealer: s, ClusterName: "test", Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), "does not match its private key") {
		t.Fatalf("swapped cert: want key mismatch, got %v", err)
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "seal.key")
	s1, err := NewFileSealer(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Size() != 32 {
		t.Fatalf("key file mode %v size %d, want 0600 and 32", st.Mode().Perm(), st.Size())
	}
	// Reopening uses the same key.
	sealed, _ := s1.Seal([]byte("x"), nil)
	s2, err := NewFileSealer(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Open(sealed, nil); err != nil {
		t.Fatalf("reopened sealer has another key: %v", err)
	}

	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFileSealer(path); err == nil || !strings.Contains(err.Error(), "accessible by group or others") {
		t.Fatalf("group-readable key: want refusal, got %v", err)
	}

	for name, size := range map[string]int{"short": 16, "long": 64, "empty": 0} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := NewFileSealer(p); err == nil || !strings.Contains(err.Error(), "must be exactly 32 bytes") {
			t.Errorf("%s key: want size refusal, got %v", name, err)
		}
	}
}

func TestSignUserCert(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	a, err := New(context.Background(), Config{Backend: newBackend(t), Sealer: newSealer(t), ClusterName: "test", Logger: quietLogger(), Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	key := clientKey(t)
	id := &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"dev"}}
	certPEM, err := a.SignUserCert(id, key.Public(), 8*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert := parsePEM(t, certPEM)
	if !cert.NotBefore.Equal(now.Add(-time.Minute)) || !cert.NotAfter.Equal(now.Add(8*time.Hour)) {
		t.Errorf("validity %v..%v", cert.NotBefore, cert.NotAfter)
	}
	got, err := certid.Verify(cert, nil, a.CertPool(UserCA), now)
	if err != nil {
		t.Fatalf("verify against user CA: %v", err)
	}
	if got.Name != "alice" || got.Serial != id.Serial || !got.Expires.Equal(id.Expires) || id.Serial == "" {
		t.Errorf("decoded %+v, signer reported serial %q expires %v", got, id.Serial, id.Expires)
	}
	if _, err := certid.Verify(cert, nil, a.CertPool(TLSCA), now); err == nil || !trace.IsAccessDenied(err) {
		t.Errorf("verified against the TLS CA: %v", err)
	}
	// Serials are random.
	other, _ := a.SignUserCert(id, key.Public(), time.Hour)
	if parsePEM(t, other).SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Error("two certificates share a serial")
	}
	if _, err := a.SignUserCert(&certid.Identity{Kind: certid.KindHuman}, key.Public(), time.Hour); err == nil {
		t.Error("signed an identity without a name")
	}
	if _, err := a.SignUserCert(id, key.Public(), 0); err == nil {
		t.Error("signed with zero TTL")
	}
}

func TestSignServerAndDBCerts(t *testing.T) {
	a := newAuthority(t, newBackend(t), newSealer(t))
	key := clientKey(t)

	srv, err := a.SignServerCert(key.Public(), []string{"gw.example.com"}, []net.IP{net.ParseIP("10.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	verify := func(pemBytes []byte, ca Type, usage x509.ExtKeyUsage, name string) error {
		_, err := parsePEM(t, pemBytes).Verify(x509.VerifyOptions{Roots: a.CertPool(ca), DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage}})
		return err
	}
	if err := verify(srv, TLSCA, x509.ExtKeyUsageServerAuth, "gw.example.com"); err != nil {
		t.Errorf("server cert: %v", err)
	}
	if err := verify(srv, TLSCA, x509.ExtKeyUsageServerAuth, "10.0.0.1"); err != nil {
		t.Errorf("server cert IP: %v", err)
	}
	if err := verify(srv, TLSCA, x509.ExtKeyUsageClientAuth, ""); err == nil {
		t.Error("server cert usable for client auth")
	}

	db, err := a.SignDBCert(key.Public(), "app_rw", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if cn := parsePEM(t, db).Subject.CommonName; cn != "app_rw" {
		t.Errorf("DB cert CN = %q, want app_rw", cn)
	}
	if err := verify(db, DBCA, x509.ExtKeyUsageClientAuth, ""); err != nil {
		t.Errorf("DB cert: %v", err)
	}
	if err := verify(db, UserCA, x509.ExtKeyUsageClientAuth, ""); err == nil {
		t.Error("DB cert verified against the user CA")
	}

	dbSrv, err := a.SignDBServerCert(key.Public(), []string{"pg.internal", "192.168.1.5"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(dbSrv, DBCA, x509.ExtKeyUsageServerAuth, "192.168.1.5"); err != nil {
		t.Errorf("DB server cert: %v", err)
	}
	if _, err := a.SignServerCert(key.Public(), nil, nil, time.Hour); err == nil {
		t.Error("signed a server cert without names")
	}
}

func TestSignSSHCerts(t *testing.T) {
	a := newAuthority(t, newBackend(t), newSealer(t))
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	id := &certid.Identity{Name: "alice", Kind: certid.KindHuman, Traits: map[string][]string{"logins": {"alice"}}}
	cert, err := a.SignSSHUserCert(id, sshPub, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	isAuthority := func(ca Type) func(ssh.PublicKey) bool {
		return func(k ssh.PublicKey) bool { return bytes.Equal(k.Marshal(), a.SSHPublicKey(ca).Marshal()) }
	}
	checker := &ssh.CertChecker{IsUserAuthority: isAuthority(SSHUserCA)}
	if _, err := checker.Authenticate(fakeConn{user: "alice"}, cert); err != nil {
		t.Fatalf("user cert refused by its CA: %v", err)
	}
	if _, err := checker.Authenticate(fakeConn{user: "root"}, cert); err == nil {
		t.Error("user cert accepted for a login it does not have")
	}
	wrong := &ssh.CertChecker{IsUserAuthority: isAuthority(SSHHostCA)}
	if _, err := wrong.Authenticate(fakeConn{user: "alice"}, cert); err == nil {
		t.Error("user cert accepted by the host CA")
	}
	got, err := certid.FromSSHCert(cert)
	if err != nil || got.Name != "alice" || got.Serial != id.Serial || !got.Expires.Equal(id.Expires) {
		t.Errorf("decoded %+v, %v; signer set serial %q expires %v", got, err, id.Serial, id.Expires)
	}

	host, err := a.SignSSHHostCert(sshPub, "node-1", []string{"node-1.example.com"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	hc := &ssh.CertChecker{IsHostAuthority: func(k ssh.PublicKey, _ string) bool { return isAuthority(SSHHostCA)(k) }}
	if err := hc.CheckHostKey("node-1.example.com:22", &net.TCPAddr{}, host); err != nil {
		t.Errorf("host cert refused: %v", err)
	}
	if err := hc.CheckHostKey("evil.example.com:22", &net.TCPAddr{}, host); err == nil {
		t.Error("host cert accepted for another host name")
	}
}

type fakeConn struct{ user string }

func (f fakeConn) User() string          { return f.user }
func (f fakeConn) SessionID() []byte     { return nil }
func (f fakeConn) ClientVersion() []byte { return nil }
func (f fakeConn) ServerVersion() []byte { return nil }
func (f fakeConn) RemoteAddr() net.Addr  { return &net.TCPAddr{} }
func (f fakeConn) LocalAddr() net.Addr   { return &net.TCPAddr{} }

func BenchmarkSignUserCert(b *testing.B) {
	a := newAuthority(b, newBackend(b), newSealer(b))
	var pub crypto.PublicKey = clientKey(b).Public()
	id := &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"dev", "ops"}, Traits: map[string][]string{"logins": {"alice"}}}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			local := *id
			if _, err := a.SignUserCert(&local, pub, time.Hour); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}

func BenchmarkSignSSHUserCert(b *testing.B) {
	a := newAuthority(b, newBackend(b), newSealer(b))
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		b.Fatal(err)
	}
	id := &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"dev", "ops"}, Traits: map[string][]string{"logins": {"alice"}}}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			local := *id
			if _, err := a.SignSSHUserCert(&local, sshPub, time.Hour); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "certs/s")
}
