package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sigilhq/sigil/api/client"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/integration/testenv"
)

// pgEnv is a daemon with a registered PostgreSQL server and users.
type pgEnv struct {
	t    *testing.T
	d    *testenv.Daemon
	pg   *testenv.Postgres
	host string
	port string
	ca   string
}

func (e *pgEnv) ctl(args ...string) testenv.Result {
	e.t.Helper()
	return testenv.Run(e.t, nil, "", "sigilctl", append([]string{"--data-dir", e.d.DataDir}, args...)...)
}

func (e *pgEnv) mustCtl(args ...string) testenv.Result {
	e.t.Helper()
	r := e.ctl(args...)
	if r.ExitCode != 0 {
		e.t.Fatalf("sigilctl %v: exit %d\nstdout: %s\nstderr: %s", args, r.ExitCode, r.Stdout, r.Stderr)
	}
	return r
}

// addUser creates, signs up and logs in a user; it returns the SIGIL_HOME.
func (e *pgEnv) addUser(name, roles string) string {
	e.t.Helper()
	home := e.t.TempDir()
	env := []string{"SIGIL_HOME=" + home}
	add := e.mustCtl("users", "add", name, "--roles", roles, "--format", "json")
	var signup struct{ Token string }
	if err := json.Unmarshal([]byte(add.Stdout), &signup); err != nil {
		e.t.Fatal(err)
	}
	for _, args := range [][]string{
		{"signup", signup.Token, "--proxy", e.d.Addr, "--ca-file", e.ca, "--password-stdin"},
		{"login", "--proxy", e.d.Addr, "--user", name, "--ca-file", e.ca, "--password-stdin"},
	} {
		if r := testenv.Run(e.t, env, alicePassword+"\n", "sigil", args...); r.ExitCode != 0 {
			e.t.Fatalf("sigil %s: %s", args[0], r.Stderr)
		}
	}
	return home
}

// dbCert gets a routed database certificate for the user of home and
// writes it with its key and the gateway CA into a directory.
type dbCert struct{ cert, key, ca string }

func (e *pgEnv) dbCert(home, dbUser string, ttl time.Duration) dbCert {
	e.t.Helper()
	c, err := testenv.IssueDBCert(context.Background(), home, "pg1", dbUser, "app", ttl)
	if err != nil {
		e.t.Fatalf("GenerateDatabaseCert: %v", err)
	}
	return writeCertFiles(e.t, c.CertPEM, c.KeyPEM, c.CAPEM)
}

func writeCertFiles(t *testing.T, certPEM, keyPEM, caPEM []byte) dbCert {
	t.Helper()
	dir := t.TempDir()
	c := dbCert{cert: filepath.Join(dir, "cert.pem"), key: filepath.Join(dir, "key.pem"), ca: filepath.Join(dir, "ca.pem")}
	for path, data := range map[string][]byte{c.cert: certPEM, c.key: keyPEM, c.ca: caPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (e *pgEnv) dsn(c dbCert, dbUser string) string {
	return fmt.Sprintf("host=%s port=%s sslmode=verify-full sslcert=%s sslkey=%s sslrootcert=%s user=%s dbname=app connect_timeout=10",
		e.host, e.port, c.cert, c.key, c.ca, dbUser)
}

// psql runs psql through the gateway; it returns stdout, stderr and
// whether it succeeded.
func (e *pgEnv) psql(c dbCert, dbUser, input string, args ...string) (string, string, bool) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", append([]string{e.dsn(c, dbUser), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"}, args...)...)
	cmd.Stdin = strings.NewReader(input)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return strings.TrimSpace(out.String()), errb.String(), err == nil
}

func (e *pgEnv) pgx(ctx context.Context, c dbCert, dbUser string) *pgx.Conn {
	e.t.Helper()
	cfg, err := pgx.ParseConfig(e.dsn(c, dbUser))
	if err != nil {
		e.t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		e.t.Fatalf("pgx connect through the gateway: %v\nsigild log:\n%s", err, e.d.Stderr())
	}
	e.t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// refusedWho asserts that connecting with c as dbUser fails with SQLSTATE
// 28000 and a message containing want (psql does not print the SQLSTATE
// of connection errors, so pgx checks it).
func (e *pgEnv) refusedWho(t *testing.T, c dbCert, dbUser, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(e.dsn(c, dbUser))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err == nil {
		conn.Close(ctx)
		t.Fatalf("connecting as %s was not refused (want %q)", dbUser, want)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28000" || pgErr.Severity != "FATAL" || !strings.Contains(pgErr.Message, want) {
		t.Fatalf("connecting as %s: %v, want FATAL 28000 containing %q", dbUser, err, want)
	}
}

// events returns the audit events of a type for a user.
func (e *pgEnv) events(typ, user string) []*audit.Event {
	e.t.Helper()
	r := e.mustCtl("audit", "search", "--type", typ, "--user", user, "--since", "1h", "--limit", "1000", "--format", "json")
	var raw []json.RawMessage
	if err := json.Unmarshal([]byte(r.Stdout), &raw); err != nil {
		e.t.Fatalf("audit search output: %v\n%s", err, r.Stdout)
	}
	out := make([]*audit.Event, 0, len(raw))
	for _, m := range raw {
		ev, err := audit.UnmarshalJSONLine(m)
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func findEvent(evs []*audit.Event, fn func(*audit.Event) bool) *audit.Event {
	for _, ev := range evs {
		if fn(ev) {
			return ev
		}
	}
	return nil
}

func startPgEnv(t *testing.T) *pgEnv {
	d := testenv.StartDaemon(t, "")
	e := &pgEnv{t: t, d: d}
	e.host, e.port, _ = strings.Cut(d.Addr, ":")
	e.addDatabase("postgres", "pg1", pgRoles, func(certDir string) string {
		e.pg = testenv.StartPostgres(t, testenv.PostgresConfig{CertDir: certDir})
		return e.pg.Addr
	})
	return e
}

// addDatabase saves the gateway's TLS CA for clients, signs a server
// certificate in format ("postgres" or "mysql") for the server that start
// runs with it, registers that server as name (labels env=dev) and creates
// the roles in rolesYAML.
func (e *pgEnv) addDatabase(format, name, rolesYAML string, start func(certDir string) (addr string)) {
	t := e.t
	e.ca = filepath.Join(t.TempDir(), "tls-ca.pem")
	if err := os.WriteFile(e.ca, []byte(e.mustCtl("auth", "export", "--type", "tls-ca").Stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	certDir := t.TempDir()
	e.mustCtl("auth", "sign", "--format", format, "--host", "localhost,127.0.0.1", "--out", certDir)
	addr := start(certDir)
	e.mustCtl("db", "add", name, "--protocol", format, "--uri", addr, "--labels", "env=dev")
	roles := filepath.Join(t.TempDir(), "roles.yaml")
	if err := os.WriteFile(roles, []byte(rolesYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	e.mustCtl("create", "-f", roles)
}

// pgRoles are the roles of the PostgreSQL tests.
const pgRoles = `kind: role
version: v1
metadata: {name: pg-read}
spec:
  allow:
    databases:
      labels: {env: [dev]}
      db_users: [reader]
      db_names: ["*"]
      statements: read
---
kind: role
version: v1
metadata: {name: pg-write}
spec:
  allow:
    databases:
      labels: {env: [dev]}
      db_users: [writer]
      db_names: [app]
      statements: write
---
kind: role
version: v1
metadata: {name: pg-temp}
spec:
  allow:
    databases:
      labels: {env: [dev]}
      db_users: [reader]
      db_names: ["*"]
      statements: read
`

// TestPostgresGateway runs psql and pgx through the gateway against a real
// PostgreSQL server.
func TestPostgresGateway(t *testing.T) {
	e := startPgEnv(t)
	aliceHome := e.addUser("alice", "pg-read")
	bobHome := e.addUser("bob", "pg-write")
	carolHome := e.addUser("carol", "pg-temp")
	alice := e.dbCert(aliceHome, "reader", 0)
	bob := e.dbCert(bobHome, "writer", 0)
	// The shortest certificate the API issues (10s); checked at the end,
	// once it has expired.
	shortLived := e.dbCert(bobHome, "writer", 10*time.Second)
	shortIssued := time.Now()
	carol := e.dbCert(carolHome, "reader", 0)

	t.Run("select as alice is audited with her name", func(t *testing.T) {
		out, stderr, ok := e.psql(alice, "reader", "", "-c", "select name from items order by id")
		if !ok || out != "alpha\nbeta\ngamma" {
			t.Fatalf("psql select: ok=%v out=%q stderr=%s\nsigild:\n%s", ok, out, stderr, e.d.Stderr())
		}
		out, stderr, ok = e.psql(alice, "reader", "", "-c", "select current_setting('sigil.identity')", "-c", "show application_name")
		lines := strings.Split(out, "\n")
		if !ok || len(lines) != 2 || !strings.HasPrefix(lines[0], "alice/human/") || lines[1] != "sigil:alice" {
			t.Fatalf("identity settings: ok=%v out=%q stderr=%s", ok, out, stderr)
		}
		sessionID := strings.TrimPrefix(lines[0], "alice/human/")
		if !strings.Contains(e.pg.Log(t), "sigil:alice reader@app") {
			t.Errorf("PostgreSQL log does not name sigil:alice:\n%s", e.pg.Log(t))
		}
		q := findEvent(e.events(audit.EventDBQuery, "alice"), func(ev *audit.Event) bool {
			return ev.Statement == "select name from items order by id"
		})
		if q == nil {
			t.Fatalf("no db.query event for alice's select")
		}
		if q.Classification != "read" || q.Resource.GetName() != "pg1" || q.Resource.GetDbUser() != "reader" || q.Identity.GetKind() != "human" {
			t.Errorf("db.query event = %v", q)
		}
		start := findEvent(e.events(audit.EventDBSessionStart, "alice"), func(ev *audit.Event) bool { return ev.SessionId == sessionID })
		if start == nil {
			t.Errorf("no db.session.start for session %s", sessionID)
		}
		testenv.Eventually(t, 10*time.Second, func() error {
			end := findEvent(e.events(audit.EventDBSessionEnd, "alice"), func(ev *audit.Event) bool { return ev.SessionId == sessionID })
			if end == nil {
				return errors.New("no db.session.end yet")
			}
			if end.Details["statements"] != "2" || end.Details["bytes_in"] == "0" || end.Details["bytes_out"] == "0" || end.Details["duration"] == "" {
				return testenv.Fatal(fmt.Errorf("db.session.end details = %v", end.Details))
			}
			return nil
		})
	})

	t.Run("insert refused for a read role", func(t *testing.T) {
		_, stderr, ok := e.psql(alice, "reader", "", "-c", "insert into items values (100, 'evil')")
		if ok || !strings.Contains(stderr, "42501") || !strings.Contains(stderr, `statement refused: INSERT`) || !strings.Contains(stderr, `role "pg-read" grants read`) {
			t.Fatalf("insert as reader: ok=%v stderr=%s", ok, stderr)
		}
		if got := strings.TrimSpace(e.pg.Psql(t, "app", "select count(*) from items where id = 100")); got != "0" {
			t.Fatalf("refused row was inserted: count = %s", got)
		}
		if strings.Contains(e.pg.Log(t), "evil") {
			t.Errorf("the database saw the refused statement")
		}
		if findEvent(e.events(audit.EventDBDenied, "alice"), func(ev *audit.Event) bool { return strings.Contains(ev.Statement, "evil") }) == nil {
			t.Errorf("no db.denied event for the insert")
		}
		// The session goes on after a refusal, in order.
		out, stderr, ok := e.psql(alice, "reader", "", "-v", "ON_ERROR_STOP=0", "-c", "select 1", "-c", "delete from items", "-c", "select 2")
		if out != "1\n2" || !strings.Contains(stderr, "42501") {
			t.Fatalf("session after refusal: ok=%v out=%q stderr=%s", ok, out, stderr)
		}
		// DO blocks fail closed for read-only identities.
		if _, stderr, ok := e.psql(alice, "reader", "", "-c", "do $$ begin perform 1; end $$"); ok || !strings.Contains(stderr, "42501") {
			t.Fatalf("DO block as reader: ok=%v stderr=%s", ok, stderr)
		}
	})

	t.Run("extended protocol refusal and parameters", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn := e.pgx(ctx, alice, "reader")
		var name string
		if err := conn.QueryRow(ctx, "select name from items where id = $1 and name <> $2", 2, "zzz-param").Scan(&name); err != nil || name != "beta" {
			t.Fatalf("pgx select: %q, %v", name, err)
		}
		_, err := conn.Exec(ctx, "insert into items values ($1, $2)", 101, "evil2")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Fatalf("pgx insert as reader: %v", err)
		}
		// The connection stays usable after the refusal.
		if err := conn.QueryRow(ctx, "select name from items where id = $1", 3).Scan(&name); err != nil || name != "gamma" {
			t.Fatalf("pgx select after refusal: %q, %v", name, err)
		}
		q := findEvent(e.events(audit.EventDBQuery, "alice"), func(ev *audit.Event) bool {
			return ev.Statement == "select name from items where id = $1 and name <> $2"
		})
		if q == nil || !slices.Contains(q.Parameters, "zzz-param") || len(q.Parameters) != 2 || q.Details["protocol"] != "extended" {
			t.Fatalf("extended db.query event = %v", q)
		}
	})

	t.Run("write role inserts", func(t *testing.T) {
		if _, stderr, ok := e.psql(bob, "writer", "", "-c", "insert into items values (200, 'from-bob')"); !ok {
			t.Fatalf("insert as writer: %s", stderr)
		}
		if got := strings.TrimSpace(e.pg.Psql(t, "app", "select name from items where id = 200")); got != "from-bob" {
			t.Fatalf("row 200 = %q", got)
		}
		// Write is not admin: DDL stays refused.
		if _, stderr, ok := e.psql(bob, "writer", "", "-c", "drop table items"); ok || !strings.Contains(stderr, "42501") {
			t.Fatalf("drop table as writer: ok=%v stderr=%s", ok, stderr)
		}
	})

	t.Run("copy in and out", func(t *testing.T) {
		if _, stderr, ok := e.psql(bob, "writer", "300\tcopied-a\n301\tcopied-b\n\\.\n", "-c", `\copy items(id, name) from stdin`); !ok {
			t.Fatalf("copy in: %s", stderr)
		}
		if got := strings.TrimSpace(e.pg.Psql(t, "app", "select count(*) from items where id in (300, 301)")); got != "2" {
			t.Fatalf("copied rows = %s", got)
		}
		out, stderr, ok := e.psql(alice, "reader", "", "-c", `\copy (select id, name from items where id >= 300 order by id) to stdout`)
		if !ok || out != "300\tcopied-a\n301\tcopied-b" {
			t.Fatalf("copy out: ok=%v out=%q stderr=%s", ok, out, stderr)
		}
		if _, stderr, ok := e.psql(alice, "reader", "302\tnope\n\\.\n", "-c", `\copy items(id, name) from stdin`); ok || !strings.Contains(stderr, "42501") {
			t.Fatalf("copy in as reader: ok=%v stderr=%s", ok, stderr)
		}
	})

	t.Run("direct TLS with ALPN postgresql", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cfg, err := pgx.ParseConfig(e.dsn(alice, "reader") + " sslnegotiation=direct")
		if err != nil {
			t.Fatal(err)
		}
		// A client cannot claim another identity through startup parameters.
		cfg.RuntimeParams["sigil.identity"] = "bob/human/forged"
		cfg.RuntimeParams["options"] = "-c sigil.identity=bob/human/forged"
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatalf("direct TLS connect: %v", err)
		}
		defer conn.Close(ctx)
		var who string
		if err := conn.QueryRow(ctx, "select current_setting('sigil.identity')").Scan(&who); err != nil || !strings.HasPrefix(who, "alice/human/") {
			t.Fatalf("sigil.identity over direct TLS = %q, %v", who, err)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn := e.pgx(ctx, alice, "reader")
		go func() {
			time.Sleep(500 * time.Millisecond)
			_ = conn.PgConn().CancelRequest(context.Background())
		}()
		start := time.Now()
		_, err := conn.Exec(ctx, "select pg_sleep(30)")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
			t.Fatalf("cancelled pg_sleep: %v", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("cancel took %v", d)
		}
	})

	t.Run("refusals for who", func(t *testing.T) {
		// Asking for another db user than the certificate's route.
		if _, stderr, ok := e.psql(alice, "writer", "", "-c", "select 1"); ok || !strings.Contains(stderr, `for db user "reader", not "writer"`) {
			t.Fatalf("other db user: ok=%v stderr=%s", ok, stderr)
		}
		e.refusedWho(t, alice, "writer", `for db user "reader", not "writer"`)
		// A role change takes effect on the next connection and names the rule.
		if _, _, ok := e.psql(carol, "reader", "", "-c", "select 1"); !ok {
			t.Fatal("carol could not connect before the role change")
		}
		role := filepath.Join(t.TempDir(), "pg-temp.yaml")
		os.WriteFile(role, []byte("kind: role\nversion: v1\nmetadata: {name: pg-temp}\nspec:\n  allow:\n    databases:\n      labels: {env: [dev]}\n      db_users: [writer]\n      db_names: [\"*\"]\n"), 0o600)
		e.mustCtl("create", "-f", role, "--force")
		e.refusedWho(t, carol, "reader", `no role allows db user "reader" (roles: pg-temp)`)
		if findEvent(e.events(audit.EventDBDenied, "carol"), func(ev *audit.Event) bool { return strings.Contains(ev.Error, "no role allows") }) == nil {
			t.Errorf("no db.denied event for carol")
		}
		// A certificate from another CA.
		foreign := foreignCert(t, alice.ca)
		e.refusedWho(t, foreign, "reader", "not issued by a trusted Sigil CA")
		// A login certificate without a database route.
		prof, err := client.CurrentProfile(aliceHome)
		if err != nil {
			t.Fatal(err)
		}
		login := writeCertFiles(t, prof.Identity.CertPEM, prof.Identity.KeyPEM, prof.Identity.TLSCAPEM)
		e.refusedWho(t, login, "reader", "not for a database")
		// No TLS at all.
		cmd := exec.Command("psql", fmt.Sprintf("host=%s port=%s sslmode=disable user=reader dbname=app", e.host, e.port), "-c", "select 1")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "SSL required") {
			t.Fatalf("plain connection: %v %s", err, out)
		}
	})

	t.Run("lock ends a live session", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn := e.pgx(ctx, alice, "reader")
		if _, err := conn.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
		e.mustCtl("lock", "--user", "alice", "--message", "laptop stolen")
		locked := time.Now()
		var err error
		for time.Since(locked) < 5*time.Second {
			if _, err = conn.Exec(ctx, "select 1"); err != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		elapsed := time.Since(locked)
		if err == nil || !strings.Contains(err.Error(), "laptop stolen") {
			t.Fatalf("query after lock: %v", err)
		}
		if elapsed > 1500*time.Millisecond {
			t.Fatalf("session ended %v after the lock, want about 1 s", elapsed)
		}
		e.refusedWho(t, alice, "reader", "laptop stolen")
	})

	t.Run("expired certificate", func(t *testing.T) {
		testenv.Eventually(t, time.Until(shortIssued.Add(40*time.Second)), func() error {
			_, stderr, ok := e.psql(shortLived, "writer", "", "-c", "select 1")
			if ok {
				return errors.New("short-lived certificate still accepted")
			}
			if !strings.Contains(stderr, "certificate expired at") {
				return testenv.Fatal(fmt.Errorf("expired cert refusal: %s", stderr))
			}
			return nil
		})
		e.refusedWho(t, shortLived, "writer", "certificate expired at")
	})
}

// foreignCert writes a client certificate from a CA Sigil does not know.
func foreignCert(t *testing.T, gatewayCA string) dbCert {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "evil CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "alice"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	caPEM, err := os.ReadFile(gatewayCA)
	if err != nil {
		t.Fatal(err)
	}
	return writeCertFiles(t, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), caPEM)
}
