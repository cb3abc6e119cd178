package session

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/client"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/locks"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/storage/badger"
)

type memEmitter struct {
	mu     sync.Mutex
	events []*audit.Event
	fail   error
}

func (m *memEmitter) Emit(ctx context.Context, ev *audit.Event) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	m.events = append(m.events, audit.Clone(ev))
	return nil
}

func (m *memEmitter) ofType(typ string) []*audit.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*audit.Event
	for _, ev := range m.events {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

type env struct {
	auth    *ca.Authority
	store   *resources.Store
	locks   *locks.Service
	emitter *memEmitter
	now     time.Time
	mu      sync.Mutex
}

func (e *env) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func newEnv(t *testing.T) (*env, *Manager) {
	t.Helper()
	ctx := context.Background()
	backend, err := badger.New(ctx, badger.Config{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	sealer, err := ca.NewFileSealer(filepath.Join(t.TempDir(), "seal.key"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	auth, err := ca.New(ctx, ca.Config{Backend: backend, Sealer: sealer, ClusterName: "test", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	store, err := resources.New(backend)
	if err != nil {
		t.Fatal(err)
	}
	lockSvc, err := locks.New(store, nil)
	if err != nil {
		t.Fatal(err)
	}
	db, err := types.NewDatabase("pg1", map[string]string{"env": "dev"}, types.DatabaseSpec{Protocol: types.ProtocolPostgres, URI: "db.example.com:5432"})
	if err != nil {
		t.Fatal(err)
	}
	role, err := types.NewRole("dev", types.RoleSpec{Allow: types.RoleConditions{Databases: &types.DatabaseConditions{
		Labels: types.Labels{"env": {"dev"}}, DBUsers: []string{"{{internal.db_users}}"}, DBNames: []string{"*"}, Statements: types.StatementsRead,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []types.Resource{db, role} {
		if _, err := store.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	e := &env{auth: auth, store: store, locks: lockSvc, emitter: &memEmitter{}, now: time.Now()}
	m, err := New(Config{Authority: auth, Resources: store, Locks: lockSvc, Emitter: e.emitter, Clock: e.clock, Logger: log, LockRecheck: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return e, m
}

func (e *env) cert(t *testing.T, route certid.Route) []*x509.Certificate {
	t.Helper()
	key, err := client.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	id := &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"dev"}, Traits: map[string][]string{"db_users": {"reader"}}, Route: route}
	certPEM, err := e.auth.SignUserCert(id, &key.PublicKey, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return []*x509.Certificate{c}
}

var pgRoute = certid.Route{ResourceKind: types.KindDatabase, ResourceName: "pg1", DBUser: "reader", DBName: "app"}

func TestStart(t *testing.T) {
	e, m := newEnv(t)
	ctx := context.Background()
	s, err := m.Start(ctx, e.cert(t, pgRoute), "10.0.0.1:5555", "postgres", RouteRequest{DBUser: "reader", DBName: "app"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.End(ctx, Stats{})
	if s.Decision.Statements != "read" || s.Decision.Role != "dev" || s.DBUser != "reader" || s.DBName != "app" || s.ID == "" {
		t.Fatalf("session = %+v, decision %+v", s, s.Decision)
	}
	starts := e.emitter.ofType(audit.EventDBSessionStart)
	if len(starts) != 1 {
		t.Fatalf("session start events = %v", starts)
	}
	ev := starts[0]
	if ev.SessionId != s.ID || ev.Identity.User != "alice" || ev.Resource.Name != "pg1" || ev.Resource.DbUser != "reader" || ev.ClientAddr != "10.0.0.1:5555" {
		t.Fatalf("start event = %v", ev)
	}
	if err := s.End(ctx, Stats{BytesIn: 10, BytesOut: 20, Statements: 3}); err != nil {
		t.Fatal(err)
	}
	s.End(ctx, Stats{})
	ends := e.emitter.ofType(audit.EventDBSessionEnd)
	if len(ends) != 1 || ends[0].Details["statements"] != "3" || ends[0].Details["bytes_in"] != "10" || ends[0].Details["bytes_out"] != "20" {
		t.Fatalf("end events = %v", ends)
	}
}

func TestStartRefusals(t *testing.T) {
	tests := []struct {
		name    string
		route   certid.Route
		req     RouteRequest
		advance time.Duration
		want    string
	}{
		{name: "login certificate", route: certid.Route{}, want: `this certificate is not for a database; run "sigil db login NAME"`},
		{name: "node route", route: certid.Route{ResourceKind: "node", ResourceName: "n1", Login: "root"}, want: "not for a database"},
		{name: "other db user", route: pgRoute, req: RouteRequest{DBUser: "writer"}, want: `this certificate is for db user "reader", not "writer"`},
		{name: "other db name", route: pgRoute, req: RouteRequest{DBName: "other"}, want: `database name "app", not "other"`},
		{name: "expired", route: pgRoute, advance: 2 * time.Hour, want: "certificate expired at"},
		{name: "unknown database", route: certid.Route{ResourceKind: types.KindDatabase, ResourceName: "nope", DBUser: "reader"}, want: `database "nope" is not registered`},
		{name: "db user not allowed", route: certid.Route{ResourceKind: types.KindDatabase, ResourceName: "pg1", DBUser: "admin"}, want: `no role allows db user "admin" (roles: dev)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, m := newEnv(t)
			certs := e.cert(t, tt.route)
			e.mu.Lock()
			e.now = e.now.Add(tt.advance)
			e.mu.Unlock()
			_, err := m.Start(context.Background(), certs, "10.0.0.1:1", "postgres", tt.req)
			if !IsWhoError(err) || !strings.Contains(Message(err), tt.want) {
				t.Fatalf("err = %v, want a who error containing %q", err, tt.want)
			}
			if len(e.emitter.ofType(audit.EventDBSessionStart)) != 0 {
				t.Fatal("a refused session was recorded as started")
			}
		})
	}
}

func TestStartRecordsDenial(t *testing.T) {
	e, m := newEnv(t)
	_, err := m.Start(context.Background(), e.cert(t, certid.Route{ResourceKind: types.KindDatabase, ResourceName: "pg1", DBUser: "admin"}), "10.0.0.1:1", "postgres", RouteRequest{})
	if !IsWhoError(err) {
		t.Fatal(err)
	}
	denied := e.emitter.ofType(audit.EventDBDenied)
	if len(denied) != 1 || denied[0].Identity.User != "alice" || !strings.Contains(denied[0].Error, "no role allows") {
		t.Fatalf("denied events = %v", denied)
	}
}

func TestStartFailsClosedWithoutAudit(t *testing.T) {
	e, m := newEnv(t)
	e.emitter.fail = errors.New("disk full")
	_, err := m.Start(context.Background(), e.cert(t, pgRoute), "10.0.0.1:1", "postgres", RouteRequest{})
	if err == nil || IsWhoError(err) || !trace.IsConnectionProblem(err) || !strings.Contains(Message(err), "audit log is unavailable") {
		t.Fatalf("err = %v", err)
	}
}

func TestLockEndsSession(t *testing.T) {
	e, m := newEnv(t)
	ctx := context.Background()
	s, err := m.Start(ctx, e.cert(t, pgRoute), "10.0.0.1:1", "postgres", RouteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.End(ctx, Stats{})
	if _, err := e.locks.Add(ctx, types.LockTarget{User: "alice"}, 0, "laptop stolen", "admin"); err != nil {
		t.Fatal(err)
	}
	locked := time.Now()
	select {
	case <-s.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("session not ended within 2s of the lock")
	}
	if d := time.Since(locked); d > time.Second {
		t.Errorf("session ended %v after the lock", d)
	}
	if err := s.Err(); !IsWhoError(err) || !strings.Contains(Message(err), "laptop stolen") {
		t.Fatalf("Err() = %v", err)
	}
	// A new session is refused too.
	if _, err := m.Start(ctx, e.cert(t, pgRoute), "10.0.0.1:1", "postgres", RouteRequest{}); !IsWhoError(err) || !strings.Contains(Message(err), "laptop stolen") {
		t.Fatalf("start while locked: %v", err)
	}
}

func TestUpstreamTLS(t *testing.T) {
	e, m := newEnv(t)
	db, err := resources.Get[*types.Database](context.Background(), e.store, types.KindDatabase, "pg1")
	if err != nil {
		t.Fatal(err)
	}
	c1, err := m.UpstreamTLS(db, "reader")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := m.UpstreamTLS(db, "reader")
	if err != nil {
		t.Fatal(err)
	}
	leaf := c1.Certificates[0].Leaf
	if leaf.Subject.CommonName != "reader" || c1.ServerName != "db.example.com" || c1.MinVersion != 0x0304 {
		t.Fatalf("config: CN %q, server name %q", leaf.Subject.CommonName, c1.ServerName)
	}
	if &c1.Certificates[0].Certificate[0][0] != &c2.Certificates[0].Certificate[0][0] {
		t.Error("upstream certificate not cached")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: e.auth.CertPool(ca.DBCA), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("upstream cert not from the DB CA: %v", err)
	}
	c3, err := m.UpstreamTLS(db, "writer")
	if err != nil || c3.Certificates[0].Leaf.Subject.CommonName != "writer" {
		t.Fatalf("writer cert: %v", err)
	}
}

func TestProtocolMismatchAndDBNameRecheck(t *testing.T) {
	e, m := newEnv(t)
	ctx := context.Background()
	_, err := m.Start(ctx, e.cert(t, pgRoute), "10.0.0.1:1", types.ProtocolMySQL, RouteRequest{})
	if !IsWhoError(err) || !strings.Contains(Message(err), `database "pg1" speaks postgres, not mysql`) {
		t.Fatalf("mysql client to a postgres database: %v", err)
	}
	// A route with a database name pins it; one without re-checks policy.
	s, err := m.Start(ctx, e.cert(t, pgRoute), "10.0.0.1:1", types.ProtocolPostgres, RouteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.End(ctx, Stats{})
	if err := s.CheckDBName(ctx, "app"); err != nil {
		t.Fatalf("same database name: %v", err)
	}
	if err := s.CheckDBName(ctx, "other"); !IsWhoError(err) || !strings.Contains(Message(err), `this certificate is for database name "app", not "other"`) {
		t.Fatalf("other database name: %v", err)
	}
	open := pgRoute
	open.DBName = ""
	s2, err := m.Start(ctx, e.cert(t, open), "10.0.0.1:1", types.ProtocolPostgres, RouteRequest{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.End(ctx, Stats{})
	if err := s2.CheckDBName(ctx, "anything"); err != nil {
		t.Fatalf("db_names * allows any name: %v", err)
	}
}

// owningEmitter keeps the events handed over by EmitOwned as they are.
type owningEmitter struct {
	memEmitter
	owned []*audit.Event
}

func (o *owningEmitter) EmitOwned(ctx context.Context, ev *audit.Event) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.owned = append(o.owned, ev)
	return nil
}

func TestEmitOwnedSharesSessionMessages(t *testing.T) {
	e, m := newEnv(t)
	ctx := context.Background()
	s, err := m.Start(ctx, e.cert(t, pgRoute), "10.0.0.1:5555", "postgres", RouteRequest{DBUser: "reader", DBName: "app"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.End(ctx, Stats{})

	// An emitter that cannot take events over gets Emit (a copy).
	if err := s.EmitOwned(ctx, &audit.Event{Type: audit.EventDBQuery, Statement: "select 1"}); err != nil {
		t.Fatal(err)
	}
	if got := e.emitter.ofType(audit.EventDBQuery); len(got) != 1 || got[0].Statement != "select 1" || got[0].SessionId != s.ID {
		t.Fatalf("fallback to Emit: %v", got)
	}

	o := &owningEmitter{}
	m.cfg.Emitter = o
	a, b := &audit.Event{Type: audit.EventDBQuery}, &audit.Event{Type: audit.EventDBQuery}
	for _, ev := range []*audit.Event{a, b} {
		if err := s.EmitOwned(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if len(o.owned) != 2 || o.owned[0] != a || o.owned[1] != b || len(o.events) != 0 {
		t.Fatalf("EmitOwned did not hand the events over: owned %v, copied %v", o.owned, o.events)
	}
	if a.Identity != b.Identity || a.Resource != b.Resource {
		t.Fatal("identity and resource must be one shared instance per session")
	}
	if a.SessionId != s.ID || a.ClientAddr != "10.0.0.1:5555" || a.Identity.User != "alice" ||
		a.Resource.Name != "pg1" || a.Resource.DbUser != "reader" || a.Resource.DbName != "app" || a.Resource.Kind != types.KindDatabase {
		t.Fatalf("stamped event = %v", a)
	}
}

// A role with require_session_mfa gets no session from a certificate
// without a verified MFA check; one signed by our user CA with an MFA
// device passes.
func TestSessionMFARequired(t *testing.T) {
	e, m := newEnv(t)
	ctx := context.Background()
	role, err := types.NewRole("dev", types.RoleSpec{
		Options: types.RoleOptions{RequireSessionMFA: true},
		Allow: types.RoleConditions{Databases: &types.DatabaseConditions{
			Labels: types.Labels{"env": {"dev"}}, DBUsers: []string{"reader"}, DBNames: []string{"*"}, Statements: types.StatementsRead,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Upsert(ctx, role); err != nil {
		t.Fatal(err)
	}
	_, err = m.Start(ctx, e.cert(t, pgRoute), "10.0.0.1:1", "postgres", RouteRequest{})
	if !IsWhoError(err) || !strings.Contains(Message(err), `role "dev" requires a per-session MFA check`) {
		t.Fatalf("err = %v, want a who error naming the MFA requirement", err)
	}

	key, err := client.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	id := &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"dev"}, MFADevice: "yubikey", Route: pgRoute}
	certPEM, err := e.auth.SignUserCert(id, &key.PublicKey, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.Start(ctx, []*x509.Certificate{c}, "10.0.0.1:1", "postgres", RouteRequest{})
	if err != nil {
		t.Fatalf("session with a verified MFA device refused: %v", err)
	}
	defer s.End(ctx, Stats{})
	if got := e.emitter.ofType(audit.EventDBSessionStart); len(got) != 1 || got[0].Identity.MfaDevice != "yubikey" {
		t.Fatalf("session start events %v, want one naming the MFA device", got)
	}
}
