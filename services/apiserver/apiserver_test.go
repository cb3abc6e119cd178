package apiserver_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	auditbadger "github.com/sigilhq/sigil/audit/store/badger"
	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/apiserver"
	"github.com/sigilhq/sigil/services/locks"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/storage"
	"github.com/sigilhq/sigil/services/storage/badger"
	"github.com/sigilhq/sigil/services/users"
)

// testPassword satisfies the password policy.
const testPassword = "correct horse battery staple"

// cheapParams keep argon2id fast in tests; the cost is irrelevant here.
var cheapParams = authn.Params{Memory: 64, Time: 1, Threads: 1}

// fakeClock is the injectable clock shared by every component of a test
// server, so expiry can be tested without sleeping.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// testEnv is an API server wired like process.Start, served over real TLS.
type testEnv struct {
	t          *testing.T
	clock      *fakeClock
	backend    storage.Backend
	authority  *ca.Authority
	store      *resources.Store
	users      *users.Service
	auditStore *auditbadger.Store
	srv        *httptest.Server
	addr       string
	tlsCAPool  *x509.CertPool
}

type envOption func(*apiserver.Config)

func withLimiter(l *authn.RateLimiter) envOption {
	return func(c *apiserver.Config) { c.Limiter = l }
}

func newEnv(t *testing.T, opts ...envOption) *testEnv {
	t.Helper()
	ctx := context.Background()
	clock := &fakeClock{now: time.Now().UTC()}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))

	backend, err := badger.New(ctx, badger.Config{InMemory: true, Logger: log})
	must(t, err)
	t.Cleanup(func() { backend.Close() })
	sealer, err := ca.NewFileSealer(filepath.Join(t.TempDir(), "k"))
	must(t, err)
	authority, err := ca.New(ctx, ca.Config{Backend: backend, Sealer: sealer, ClusterName: "test.sigil", Clock: clock.Now, Logger: log})
	must(t, err)
	_, auditKey, err := ed25519.GenerateKey(rand.Reader)
	must(t, err)
	auditStore, err := auditbadger.New(ctx, auditbadger.Config{InMemory: true, Signer: auditKey, Logger: log, Clock: clock.Now})
	must(t, err)
	t.Cleanup(func() { auditStore.Close() })
	emitter := audit.NewStoreEmitter(auditStore)
	store, err := resources.New(backend)
	must(t, err)
	userSvc, err := users.New(users.Config{Backend: backend, Resources: store, PasswordParams: cheapParams, Clock: clock.Now, Logger: log})
	must(t, err)
	lockSvc, err := locks.New(store, clock.Now)
	must(t, err)
	// Generous limits: every test client shares 127.0.0.1. The rate limit
	// test installs its own.
	limiter, err := authn.NewRateLimiter(authn.RateLimiterConfig{
		PerUser: authn.Limit{Attempts: 1000, Per: time.Minute},
		PerAddr: authn.Limit{Attempts: 1000, Per: time.Minute},
		Clock:   clock.Now,
	})
	must(t, err)

	cfg := apiserver.Config{
		Authority:   authority,
		Resources:   store,
		Users:       userSvc,
		Locks:       lockSvc,
		Emitter:     emitter,
		AuditStore:  auditStore,
		Limiter:     limiter,
		ClusterName: "test.sigil",
		PublicAddr:  "sigil.example.com:3443",
		Version:     "test",
		Clock:       clock.Now,
		Logger:      log,
	}
	for _, o := range opts {
		o(&cfg)
	}
	api, err := apiserver.New(cfg)
	must(t, err)

	key, err := client.GenerateKey()
	must(t, err)
	certPEM, err := authority.SignServerCert(&key.PublicKey, []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour*24*30)
	must(t, err)
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("server certificate is not PEM")
	}
	srv := httptest.NewUnstartedServer(api.Handler())
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    authority.CertPool(ca.UserCA),
		Certificates: []tls.Certificate{{Certificate: [][]byte{block.Bytes}, PrivateKey: key}},
		// Client certificates are signed on the fake clock.
		Time: clock.Now,
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	return &testEnv{
		t:          t,
		clock:      clock,
		backend:    backend,
		authority:  authority,
		store:      store,
		users:      userSvc,
		auditStore: auditStore,
		srv:        srv,
		addr:       srv.Listener.Addr().String(),
		tlsCAPool:  authority.CertPool(ca.TLSCA),
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
}

func (e *testEnv) newClient(certs ...tls.Certificate) *client.Client {
	e.t.Helper()
	c, err := client.New(client.Config{
		Addr:    e.addr,
		TLS:     &tls.Config{RootCAs: e.tlsCAPool, Certificates: certs},
		Timeout: 10 * time.Second,
	})
	must(e.t, err)
	e.t.Cleanup(c.Close)
	return c
}

// anon is a client without a certificate.
func (e *testEnv) anon() *client.Client { return e.newClient() }

// clientFor signs a certificate for id directly with the user CA.
func (e *testEnv) clientFor(id *certid.Identity) *client.Client {
	e.t.Helper()
	key, err := client.GenerateKey()
	must(e.t, err)
	certPEM, err := e.authority.SignUserCert(id, &key.PublicKey, time.Hour)
	must(e.t, err)
	return e.newClient(pair(e.t, certPEM, key))
}

// admin is the local sigilctl bot identity, as process.writeAdminIdentity makes it.
func (e *testEnv) admin() *client.Client {
	return e.clientFor(&certid.Identity{Name: "sigilctl", Kind: certid.KindBot, Roles: []string{types.RoleAdmin}})
}

func pair(t *testing.T, certPEM []byte, key *ecdsa.PrivateKey) tls.Certificate {
	t.Helper()
	keyPEM, err := client.MarshalPrivateKeyPEM(key)
	must(t, err)
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	must(t, err)
	return c
}

// addUser creates a user through the API and completes its signup.
func (e *testEnv) addUser(admin *client.Client, name string, roles []string, traits map[string]string) {
	e.t.Helper()
	ctx := context.Background()
	resp, err := admin.Users.AddUser(ctx, connect.NewRequest(&sigilv1.AddUserRequest{Name: name, Roles: roles, Traits: traits}))
	must(e.t, err)
	if !strings.HasSuffix(resp.Msg.SignupUrl, "/web/signup/"+resp.Msg.Token) {
		e.t.Fatalf("signup URL %q does not carry the token", resp.Msg.SignupUrl)
	}
	_, err = e.anon().Auth.Signup(ctx, connect.NewRequest(&sigilv1.SignupRequest{Token: resp.Msg.Token, Password: testPassword}))
	must(e.t, err)
}

// login logs in through the API with a fresh key.
func (e *testEnv) login(user, password string, ttlSeconds int64) (*sigilv1.LoginResponse, *ecdsa.PrivateKey, error) {
	e.t.Helper()
	key, err := client.GenerateKey()
	must(e.t, err)
	der, err := client.MarshalPublicKeyDER(key)
	must(e.t, err)
	resp, err := e.anon().Auth.Login(context.Background(), connect.NewRequest(&sigilv1.LoginRequest{
		User: user, Password: password, TlsPublicKey: der, TtlSeconds: ttlSeconds,
	}))
	if err != nil {
		return nil, nil, err
	}
	return resp.Msg, key, nil
}

// loginClient logs user in and returns a client presenting the new certificate.
func (e *testEnv) loginClient(user string) *client.Client {
	e.t.Helper()
	resp, key, err := e.login(user, testPassword, 0)
	must(e.t, err)
	return e.newClient(pair(e.t, resp.TlsCertPem, key))
}

func (e *testEnv) auditEvents() []*audit.Event {
	e.t.Helper()
	ctx := context.Background()
	must(e.t, e.auditStore.Flush(ctx))
	var evs []*audit.Event
	for from := uint64(1); ; {
		page, err := e.auditStore.Range(ctx, from, 0)
		must(e.t, err)
		if len(page) == 0 {
			return evs
		}
		evs = append(evs, page...)
		from = page[len(page)-1].Seq + 1
	}
}

// auditRaw is the whole log as JSON lines, for checks that no secret was stored.
func (e *testEnv) auditRaw() []byte {
	e.t.Helper()
	var out []byte
	for _, ev := range e.auditEvents() {
		line, err := audit.MarshalJSONLine(ev)
		must(e.t, err)
		out = append(append(out, line...), '\n')
	}
	return out
}

// requireCode asserts a Connect error code and that its message contains
// every one of want.
func requireCode(t *testing.T, err error, code connect.Code, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("expected %v error, got success", code)
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("expected a connect error, got %T: %v", err, err)
	}
	if ce.Code() != code {
		t.Fatalf("code = %v, want %v (message %q)", ce.Code(), code, ce.Message())
	}
	for _, w := range want {
		if !strings.Contains(ce.Message(), w) {
			t.Fatalf("message %q does not contain %q", ce.Message(), w)
		}
	}
}

func resourceJSON(t *testing.T, r types.Resource) []byte {
	t.Helper()
	data, err := types.MarshalResource(r)
	must(t, err)
	return data
}

func createRole(t *testing.T, c *client.Client, name string, spec types.RoleSpec) {
	t.Helper()
	role, err := types.NewRole(name, spec)
	must(t, err)
	_, err = c.Resources.CreateResource(context.Background(), connect.NewRequest(&sigilv1.CreateResourceRequest{
		Resource: &sigilv1.Resource{Kind: types.KindRole, Name: name, Json: resourceJSON(t, role)},
	}))
	must(t, err)
}

func containsBytes(haystack []byte, needle string) bool {
	return bytes.Contains(haystack, []byte(needle))
}
