package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"gopkg.in/yaml.v3"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/gen/sigil/v1/sigilv1connect"
	"github.com/sigilhq/sigil/gateway/tunnel"
)

// fakeDB is a DatabaseService with two databases; it signs routed
// certificates whose CN names the route and a sequence number.
type fakeDB struct {
	sigilv1connect.UnimplementedDatabaseServiceHandler
	userCA, tlsCA *fakeCA
	dbs           []*sigilv1.DatabaseInfo

	mu      sync.Mutex
	issued  []*sigilv1.GenerateDatabaseCertRequest
	refusal error
}

func newFakeDB(auth *fakeAuth) *fakeDB {
	return &fakeDB{userCA: auth.userCA, tlsCA: auth.tlsCA, dbs: []*sigilv1.DatabaseInfo{
		{Name: "pg1", Protocol: "postgres", Labels: map[string]string{"env": "staging", "team": "a"}, DbUsers: []string{"reader", "writer"}, DbNames: []string{"*"}},
		{Name: "pg2", Protocol: "postgres", DbUsers: []string{"reader"}, DbNames: []string{"app"}},
		{Name: "my1", Protocol: "mysql", DbUsers: []string{"reader"}, DbNames: []string{"app"}},
	}}
}

func (f *fakeDB) ListDatabases(context.Context, *connect.Request[sigilv1.ListDatabasesRequest]) (*connect.Response[sigilv1.ListDatabasesResponse], error) {
	return connect.NewResponse(&sigilv1.ListDatabasesResponse{Databases: f.dbs}), nil
}

func (f *fakeDB) GenerateDatabaseCert(_ context.Context, req *connect.Request[sigilv1.GenerateDatabaseCertRequest]) (*connect.Response[sigilv1.GenerateDatabaseCertResponse], error) {
	f.mu.Lock()
	f.issued = append(f.issued, req.Msg)
	n, refusal := len(f.issued), f.refusal
	f.mu.Unlock()
	if refusal != nil {
		return nil, refusal
	}
	var info *sigilv1.DatabaseInfo
	for _, d := range f.dbs {
		if d.GetName() == req.Msg.GetDatabase() {
			info = d
		}
	}
	if info == nil {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("database %q not found", req.Msg.GetDatabase()))
	}
	pub, err := x509.ParsePKIXPublicKey(req.Msg.GetTlsPublicKey())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	ttl := time.Hour
	if s := req.Msg.GetTtlSeconds(); s > 0 {
		ttl = time.Duration(s) * time.Second
	}
	exp := time.Now().Add(ttl)
	cn := fmt.Sprintf("%s/%s/%s#%d", req.Msg.GetDatabase(), req.Msg.GetDbUser(), req.Msg.GetDbName(), n)
	certPEM, err := f.userCA.sign(pub, cn, false, exp)
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, err)
	}
	return connect.NewResponse(&sigilv1.GenerateDatabaseCertResponse{
		TlsCertPem: certPEM, TlsCaPem: f.tlsCA.pem, Expires: timestamppb.New(exp), Database: info,
	}), nil
}

func (f *fakeDB) requests() []*sigilv1.GenerateDatabaseCertRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*sigilv1.GenerateDatabaseCertRequest(nil), f.issued...)
}

// pgSeen is what the fake gateway's sigil-postgres handler saw.
type pgSeen struct {
	cn      string
	startup []byte
}

// dbGateway serves the API and, on ALPN sigil-postgres, a fake database
// that records the client certificate and startup, then echoes.
type dbGateway struct {
	addr string
	mu   sync.Mutex
	seen []pgSeen
}

func startDBGateway(t *testing.T, auth *fakeAuth, db *fakeDB) *dbGateway {
	t.Helper()
	g := &dbGateway{}
	key, err := client.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := auth.tlsCA.sign(key.Public(), "gateway", true, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := client.MarshalPrivateKeyPEM(key)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(auth.userCA.cert)
	mux := http.NewServeMux()
	mux.Handle(sigilv1connect.NewAuthServiceHandler(auth))
	mux.Handle(sigilv1connect.NewDatabaseServiceHandler(db))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){
		tunnel.ALPNPostgres: func(_ *http.Server, c *tls.Conn, _ http.Handler) {
			st := c.ConnectionState()
			if len(st.PeerCertificates) == 0 {
				return
			}
			var hdr [4]byte
			if _, err := io.ReadFull(c, hdr[:]); err != nil {
				return
			}
			n := binary.BigEndian.Uint32(hdr[:])
			if n < 8 || n > 10000 {
				return
			}
			msg := make([]byte, n)
			copy(msg, hdr[:])
			if _, err := io.ReadFull(c, msg[4:]); err != nil {
				return
			}
			cn := st.PeerCertificates[0].Subject.CommonName
			g.mu.Lock()
			g.seen = append(g.seen, pgSeen{cn: cn, startup: msg})
			g.mu.Unlock()
			fmt.Fprintf(c, "CN=%s\n", cn)
			io.Copy(c, c)
		},
		tunnel.ALPNMySQL: func(_ *http.Server, c *tls.Conn, _ http.Handler) {
			st := c.ConnectionState()
			if len(st.PeerCertificates) == 0 {
				return
			}
			// A greeting offering CLIENT_SSL (the tunnel must hide it),
			// then the CN as one packet, then an echo.
			c.Write(myPacket(0, myGreeting(0xffff)))
			fmt.Fprintf(c, "CN=%s\n", st.PeerCertificates[0].Subject.CommonName)
			io.Copy(c, c)
		},
	}
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13,
		NextProtos: []string{"http/1.1", tunnel.ALPNPostgres, tunnel.ALPNMySQL},
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: clientCAs,
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	g.addr = srv.Listener.Addr().String()
	return g
}

// dbSetup logs alice in to a gateway serving fake databases.
func dbSetup(t *testing.T) (home string, auth *fakeAuth, db *fakeDB, g *dbGateway) {
	t.Helper()
	home = t.TempDir()
	t.Setenv("SIGIL_HOME", home)
	auth = &fakeAuth{tlsCA: newFakeCA(t, "tls-ca"), userCA: newFakeCA(t, "user-ca")}
	db = newFakeDB(auth)
	g = startDBGateway(t, auth, db)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, auth.tlsCA.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	r := runWith(t, nil, "s3cret\n", "login", "--proxy", g.addr, "--user", "alice", "--password-stdin", "--ca-file", caFile)
	if r.code != 0 {
		t.Fatalf("login: %+v", r)
	}
	return home, auth, db, g
}

func TestDBLs(t *testing.T) {
	dbSetup(t)
	r := runWith(t, nil, "", "db", "ls")
	if r.code != 0 {
		t.Fatalf("%+v", r)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[0], "DB USERS") {
		t.Fatalf("table:\n%s", r.stdout)
	}
	if f := strings.Fields(lines[3]); strings.Join(f, " ") != "pg1 postgres env=staging,team=a reader,writer *" {
		t.Fatalf("pg1 row %q", lines[3])
	}
	r = runWith(t, nil, "", "db", "ls", "--format", "json")
	var got []dbView
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || len(got) != 3 || got[0].Name != "my1" ||
		got[1].DBUsers[1] != "writer" || got[2].Labels == nil {
		t.Fatalf("json: %+v %+v", r, got)
	}
	r = runWith(t, nil, "", "db", "ls", "--format", "xml")
	if r.code != 1 || !strings.Contains(r.stderr, `--format: "xml" is not one of text, json, yaml`) {
		t.Fatalf("xml: %+v", r)
	}
}

func TestDBLoginAndEnv(t *testing.T) {
	home, _, db, g := dbSetup(t)
	r := runWith(t, nil, "", "db", "env", "pg1")
	if r.code != 1 || !strings.Contains(r.stderr, `no certificate for database pg1; run "sigil db login pg1`) {
		t.Fatalf("env before login: %+v", r)
	}

	r = runWith(t, nil, "", "db", "login", "pg1", "--db-user", "reader", "--db-name", "app", "--ttl", "30m")
	if r.code != 0 {
		t.Fatalf("db login: %+v", r)
	}
	if !strings.Contains(r.stdout, `Logged in to database pg1 as db user "reader", db name "app".`) ||
		!strings.Contains(r.stdout, "sigil db connect pg1") || !strings.Contains(r.stdout, "sslmode=verify-full") {
		t.Fatalf("db login output:\n%s", r.stdout)
	}
	reqs := db.requests()
	if len(reqs) != 1 || reqs[0].GetDbUser() != "reader" || reqs[0].GetDbName() != "app" || reqs[0].GetTtlSeconds() != 1800 {
		t.Fatalf("requests %v", reqs)
	}
	dir := filepath.Join(client.ProfileDir(home, g.addr), "db", "pg1")
	st, err := os.Stat(filepath.Join(dir, "tls.key"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key: %v %v", st, err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	if err != nil || pair.Leaf.Subject.CommonName != "pg1/reader/app#1" {
		t.Fatalf("pair: %v", err)
	}
	var route dbRoute
	data, _ := os.ReadFile(filepath.Join(dir, "route.yaml"))
	if err := yaml.Unmarshal(data, &route); err != nil || route.DBUser != "reader" || route.DBName != "app" ||
		route.Protocol != "postgres" || route.Proxy != g.addr || !route.Expires.Equal(pair.Leaf.NotAfter) {
		t.Fatalf("route.yaml %q: %v", data, err)
	}
	if ca, _ := os.ReadFile(filepath.Join(dir, "ca.crt")); !bytes.Contains(ca, []byte("BEGIN CERTIFICATE")) {
		t.Fatalf("ca.crt %q", ca)
	}

	r = runWith(t, nil, "", "db", "env", "pg1")
	host, port, _ := net.SplitHostPort(g.addr)
	want := fmt.Sprintf(`export PGHOST=%s
export PGPORT=%s
export PGSSLMODE=verify-full
export PGSSLCERT=%s
export PGSSLKEY=%s
export PGSSLROOTCERT=%s
export PGUSER=reader
export PGDATABASE=app
`, host, port, shellQuote(filepath.Join(dir, "tls.crt")), shellQuote(filepath.Join(dir, "tls.key")), shellQuote(filepath.Join(dir, "ca.crt")))
	if r.code != 0 || r.stdout != want || r.stderr != "" {
		t.Fatalf("env: %+v\nwant:\n%s", r, want)
	}
	r = runWith(t, nil, "", "db", "env", "pg1", "--format", "json")
	var env map[string]string
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &env) != nil || env["PGSSLKEY"] != filepath.Join(dir, "tls.key") || len(env) != 8 {
		t.Fatalf("env json: %+v", r)
	}
}

func TestDBLoginDefaultsAndErrors(t *testing.T) {
	_, _, db, _ := dbSetup(t)
	// Two db users allowed: the user must choose, and is told the options.
	r := runWith(t, nil, "", "db", "login", "pg1")
	if r.code != 1 || r.stderr != "ERROR: choose a db user for pg1 with --db-user (your roles allow: reader, writer)\n" {
		t.Fatalf("%+v", r)
	}
	// One db user and one db name: both are picked.
	r = runWith(t, nil, "", "db", "login", "pg2")
	if r.code != 0 || !strings.Contains(r.stdout, `db user "reader", db name "app"`) {
		t.Fatalf("%+v", r)
	}
	// Any db name: the db name defaults to the db user, as in PostgreSQL.
	r = runWith(t, nil, "", "db", "login", "pg1", "--db-user", "writer")
	if r.code != 0 || !strings.Contains(r.stdout, `db user "writer", db name "writer"`) {
		t.Fatalf("%+v", r)
	}
	r = runWith(t, nil, "", "db", "login", "nope", "--db-user", "x")
	if r.code != 1 || !strings.Contains(r.stderr, `database "nope" does not exist or your roles do not allow it; see "sigil db ls"`) {
		t.Fatalf("%+v", r)
	}
	r = runWith(t, nil, "", "db", "login", "../etc", "--db-user", "x")
	if r.code != 1 || !strings.Contains(r.stderr, `invalid database name "../etc"`) {
		t.Fatalf("%+v", r)
	}
	// A refusal (e.g. a role needing MFA) is shown in the gateway's words.
	db.mu.Lock()
	db.refusal = connect.NewError(connect.CodePermissionDenied, errors.New(`role "dba" requires a fresh MFA check for database pg1`))
	db.mu.Unlock()
	r = runWith(t, nil, "", "db", "login", "pg1", "--db-user", "reader")
	if r.code != 1 || r.stderr != "ERROR: role \"dba\" requires a fresh MFA check for database pg1\n" {
		t.Fatalf("%+v", r)
	}
}

// fakePsql puts a psql in a fresh PATH that records its arguments and
// exits with the code in $FAKE_PSQL_EXIT.
func fakePsql(t *testing.T) (argsFile string) {
	t.Helper()
	bin := t.TempDir()
	argsFile = filepath.Join(t.TempDir(), "args")
	script := "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > " + argsFile + "\necho psql ran\nexit ${FAKE_PSQL_EXIT:-0}\n"
	if err := os.WriteFile(filepath.Join(bin, "psql"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	return argsFile
}

func TestDBConnect(t *testing.T) {
	home, _, db, g := dbSetup(t)
	argsFile := fakePsql(t)
	r := runWith(t, nil, "", "db", "connect", "pg1", "--db-user", "reader", "--db-name", "app", "--", "-c", "select 1")
	if r.code != 0 || r.stdout != "psql ran\n" {
		t.Fatalf("connect: %+v", r)
	}
	dir := filepath.Join(client.ProfileDir(home, g.addr), "db", "pg1")
	host, port, _ := net.SplitHostPort(g.addr)
	args, _ := os.ReadFile(argsFile)
	want := fmt.Sprintf("host=%s port=%s sslmode=verify-full sslcert=%s sslkey=%s sslrootcert=%s user=reader dbname=app\n-c\nselect 1\n",
		host, port, connInfoQuote(filepath.Join(dir, "tls.crt")), connInfoQuote(filepath.Join(dir, "tls.key")), connInfoQuote(filepath.Join(dir, "ca.crt")))
	if string(args) != want {
		t.Fatalf("psql args:\n%s\nwant:\n%s", args, want)
	}
	if n := len(db.requests()); n != 1 {
		t.Fatalf("%d certificate requests", n)
	}
	// The certificate is reused, also when the db user is left out.
	r = runWith(t, nil, "", "db", "connect", "pg1")
	if r.code != 0 || len(db.requests()) != 1 {
		t.Fatalf("second connect: %+v, %d requests", r, len(db.requests()))
	}
	// Another db user needs another certificate.
	r = runWith(t, nil, "", "db", "connect", "pg1", "--db-user", "writer", "--db-name", "app")
	if reqs := db.requests(); r.code != 0 || len(reqs) != 2 || reqs[1].GetDbUser() != "writer" {
		t.Fatalf("writer connect: %+v", r)
	}
	// psql's exit status is sigil's, with nothing added.
	t.Setenv("FAKE_PSQL_EXIT", "3")
	r = runWith(t, nil, "", "db", "connect", "pg1")
	if r.code != 3 || r.stderr != "" {
		t.Fatalf("exit status: %+v", r)
	}
	r = runWith(t, nil, "", "db", "connect", "my1")
	if r.code != 1 || !strings.Contains(r.stderr, "has no MySQL listener") {
		t.Fatalf("mysql without a MySQL listener: %+v", r)
	}
	r = runWith(t, nil, "", "db", "connect", "pg1", "pg2")
	if r.code != 1 || !strings.Contains(r.stderr, "give one database name") {
		t.Fatalf("two names: %+v", r)
	}
	t.Setenv("PATH", t.TempDir())
	r = runWith(t, nil, "", "db", "connect", "pg1")
	if r.code != 1 || !strings.Contains(r.stderr, "psql not found") || !strings.Contains(r.stderr, "postgresql-client") {
		t.Fatalf("no psql: %+v", r)
	}
}

func TestDBNeedsValidLogin(t *testing.T) {
	t.Setenv("SIGIL_HOME", t.TempDir())
	r := runWith(t, nil, "", "db", "ls")
	if r.code != 1 || !strings.Contains(r.stderr, `not logged in; run "sigil login --proxy HOST:PORT"`) {
		t.Fatalf("%+v", r)
	}
	_, _, _, g := dbSetup(t)
	var out, errb strings.Builder
	a := &app{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, openTerminal: func() (terminal, error) { return nil, errNoTerminal },
		now: func() time.Time { return time.Now().Add(9 * time.Hour) }}
	if code := a.run(context.Background(), []string{"db", "ls"}); code != 1 ||
		!strings.Contains(errb.String(), "your Sigil login to "+g.addr+" expired at") || !strings.Contains(errb.String(), `run "sigil login --proxy `+g.addr+`"`) {
		t.Fatalf("expired: %d %s", code, errb.String())
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pgStartup(user, db string) []byte {
	var body []byte
	body = binary.BigEndian.AppendUint32(body, 3<<16)
	for _, kv := range [][2]string{{"user", user}, {"database", db}} {
		body = append(append(append(append(body, kv[0]...), 0), kv[1]...), 0)
	}
	body = append(body, 0)
	return append(binary.BigEndian.AppendUint32(nil, uint32(4+len(body))), body...)
}

func dialTunnel(t *testing.T, addr string) (net.Conn, *bufio.Reader, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47}) // SSLRequest
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'N' {
		t.Fatalf("SSLRequest answer %q %v", b[0], err)
	}
	c.Write(pgStartup("reader", "app"))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("greeting: %v", err)
	}
	return c, r, strings.TrimSpace(strings.TrimPrefix(line, "CN="))
}

func TestProxyDBTunnelRenews(t *testing.T) {
	_, _, db, g := dbSetup(t)
	r := runWith(t, nil, "", "proxy", "db", "pg1", "--db-user", "reader")
	if r.code != 1 || !strings.Contains(r.stderr, "add --tunnel") {
		t.Fatalf("no --tunnel: %+v", r)
	}

	// The first certificate lives 3s from some moment after this.
	firstExpired := time.Now().Add(3500 * time.Millisecond)
	var out, errb lockedBuffer
	a := &app{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, openTerminal: func() (terminal, error) { return nil, errNoTerminal }, now: time.Now}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- a.run(ctx, []string{"proxy", "db", "pg1", "--tunnel", "--db-user", "reader", "--db-name", "app", "--cert-ttl", "3s"})
	}()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("proxy exit %d: %s", code, errb.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("proxy did not stop")
		}
	}()
	var addr string
	waitFor(t, "the listening line", func() bool {
		s := out.String()
		i := strings.Index(s, "listening on ")
		if i < 0 {
			return false
		}
		addr = strings.TrimSpace(strings.SplitN(s[i+len("listening on "):], "\n", 2)[0])
		return true
	})
	if !strings.HasPrefix(addr, "127.0.0.1:") || !strings.Contains(out.String(), "sslmode=disable") {
		t.Fatalf("output:\n%s", out.String())
	}
	old, oldR, cn := dialTunnel(t, addr)
	if cn != "pg1/reader/app#1" {
		t.Fatalf("first connection used %q", cn)
	}
	waitFor(t, "a renewal", func() bool { return len(db.requests()) >= 2 })
	if req := db.requests()[1]; req.GetDbUser() != "reader" || req.GetDbName() != "app" || req.GetTtlSeconds() != 3 {
		t.Fatalf("renewal request %v", req)
	}
	waitFor(t, "the renewal log", func() bool { return strings.Contains(errb.String(), "Renewed the database certificate") })
	_, _, cn = dialTunnel(t, addr)
	if cn == "pg1/reader/app#1" {
		t.Fatal("a new connection after the renewal used the old certificate")
	}
	// The first connection outlives its certificate.
	waitFor(t, "the first certificate to expire", func() bool {
		old.Write([]byte("ping\n"))
		line, err := oldR.ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("old connection: %q %v", line, err)
		}
		return time.Now().After(firstExpired)
	})
	g.mu.Lock()
	defer g.mu.Unlock()
	if !bytes.Equal(g.seen[0].startup, pgStartup("reader", "app")) {
		t.Fatalf("startup forwarded as %q", g.seen[0].startup)
	}
}
