package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PostgresUser is a LOGIN role (no password: the server only accepts it
// with a client certificate whose CN is Name) and its privileges on the
// test table.
type PostgresUser struct {
	Name string
	// Privileges on public.items, e.g. SELECT, INSERT, UPDATE, DELETE.
	Privileges []string
}

// PostgresConfig describes the test server.
type PostgresConfig struct {
	// CertDir holds server.crt, server.key and ca.crt, as written by
	// `sigilctl auth sign --format postgres --host localhost --out DIR`.
	// Ignored for any of the three PEM fields below that is set.
	CertDir string
	// ServerCertPEM and ServerKeyPEM are what the server presents; the
	// certificate must be valid for localhost and 127.0.0.1.
	ServerCertPEM []byte
	ServerKeyPEM  []byte
	// CACertPEM is the DB CA: client certificates must chain to it.
	CACertPEM []byte
	// Database is created and holds public.items (id int primary key,
	// name text). Default "app".
	Database string
	// Users default to reader (SELECT) and writer (SELECT, INSERT,
	// UPDATE, DELETE).
	Users []PostgresUser
	// Items are the names of the rows put in public.items (ids 1..n).
	// Default alpha, beta, gamma.
	Items []string
	// ExtraSQL runs in Database as the superuser after the setup above.
	ExtraSQL []string
}

// CheckAndSetDefaults loads the certificates and fills in defaults.
func (c *PostgresConfig) CheckAndSetDefaults() error {
	files := []struct {
		dst  *[]byte
		name string
	}{{&c.ServerCertPEM, "server.crt"}, {&c.ServerKeyPEM, "server.key"}, {&c.CACertPEM, "ca.crt"}}
	for _, f := range files {
		if len(*f.dst) > 0 {
			continue
		}
		if c.CertDir == "" {
			return fmt.Errorf("PostgresConfig: CertDir or the PEM fields are required (missing %s)", f.name)
		}
		b, err := os.ReadFile(filepath.Join(c.CertDir, f.name))
		if err != nil {
			return fmt.Errorf("PostgresConfig: reading %s: %w", f.name, err)
		}
		*f.dst = b
	}
	if c.Database == "" {
		c.Database = "app"
	}
	if c.Users == nil {
		c.Users = []PostgresUser{
			{Name: "reader", Privileges: []string{"SELECT"}},
			{Name: "writer", Privileges: []string{"SELECT", "INSERT", "UPDATE", "DELETE"}},
		}
	}
	if c.Items == nil {
		c.Items = []string{"alpha", "beta", "gamma"}
	}
	for _, u := range c.Users {
		if u.Name == "" {
			return errors.New("PostgresConfig: a user has no name")
		}
		for _, p := range u.Privileges {
			if !validPrivilege[strings.ToUpper(p)] {
				return fmt.Errorf("PostgresConfig: user %q: unknown privilege %q", u.Name, p)
			}
		}
	}
	return nil
}

var validPrivilege = map[string]bool{
	"SELECT": true, "INSERT": true, "UPDATE": true, "DELETE": true,
	"TRUNCATE": true, "REFERENCES": true, "TRIGGER": true, "ALL": true,
}

// Postgres is a running PostgreSQL server on a loopback port, reachable
// over TCP only with TLS and a client certificate from the DB CA.
type Postgres struct {
	// Addr is 127.0.0.1:Port.
	Addr string
	Port int
	// Database is the database holding public.items.
	Database string
	// Dir is the temp dir holding everything below; removed on cleanup.
	Dir string
	// DataDir is the cluster's data directory.
	DataDir string
	// SocketDir holds the unix socket the superuser path uses.
	SocketDir string
	// BinDir holds initdb, pg_ctl, postgres and psql.
	BinDir string
	// LogFile is the server's stderr.
	LogFile string

	// cred runs the server binaries as the postgres OS user when we are
	// root (PostgreSQL refuses to run as root); nil otherwise.
	cred *syscall.Credential
}

// postgresSuperuser is the bootstrap superuser whatever the OS user is.
const postgresSuperuser = "postgres"

// PostgresBinDir finds the PostgreSQL server binaries: $SIGIL_PG_BIN_DIR,
// the newest /usr/lib/postgresql/*/bin (Debian), or initdb on $PATH.
func PostgresBinDir() (string, error) {
	has := func(dir string) bool {
		for _, b := range []string{"initdb", "pg_ctl", "postgres", "psql"} {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				return false
			}
		}
		return true
	}
	if dir := os.Getenv("SIGIL_PG_BIN_DIR"); dir != "" {
		if !has(dir) {
			return "", fmt.Errorf("SIGIL_PG_BIN_DIR=%s lacks initdb, pg_ctl, postgres or psql", dir)
		}
		return dir, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Newest major version first; versions are integers since 10.
	sort.Slice(matches, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(matches[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(matches[j])))
		return vi > vj
	})
	for _, dir := range matches {
		if has(dir) {
			return dir, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", errors.New("PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb): " +
		"install the Debian packages postgresql-15 and postgresql-client-15 (apt-get install -y postgresql), " +
		"run `make test-deps`, or set SIGIL_PG_BIN_DIR")
}

// StartPostgres creates a cluster in a temp dir, starts it on a free
// loopback port, creates cfg's database, table, rows and users, and stops
// and removes it when the test ends.
func StartPostgres(t testing.TB, cfg PostgresConfig) *Postgres {
	t.Helper()
	if err := cfg.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	binDir, err := PostgresBinDir()
	if err != nil {
		t.Fatal(err)
	}
	p := &Postgres{BinDir: binDir, Database: cfg.Database}
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, PostgreSQL must run as the postgres OS user, which is missing (install postgresql-15): %v", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}

	// Not t.TempDir: its parents are 0700 and root-owned, so the postgres
	// user could not reach the files. The path stays short too, because
	// a unix socket path is limited to ~107 bytes.
	dir, err := os.MkdirTemp("", "sigil-pg-")
	if err != nil {
		t.Fatal(err)
	}
	p.Dir = dir
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	p.DataDir = filepath.Join(dir, "data")
	p.SocketDir = dir
	p.LogFile = filepath.Join(dir, "postgres.log")
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if uid >= 0 {
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	writeFile := func(name string, data []byte, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, mode); err != nil {
			t.Fatal(err)
		}
		// WriteFile's mode is filtered by the umask.
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if uid >= 0 {
			if err := os.Chown(path, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		return path
	}
	certFile := writeFile("server.crt", cfg.ServerCertPEM, 0o644)
	keyFile := writeFile("server.key", cfg.ServerKeyPEM, 0o600)
	caFile := writeFile("ca.crt", cfg.CACertPEM, 0o644)

	if out, err := p.run(60*time.Second, "initdb", "-D", p.DataDir, "-U", postgresSuperuser,
		"--auth-local=trust", "--auth-host=reject", "--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	conf := fmt.Sprintf(`
# Sigil integration tests
listen_addresses = '127.0.0.1'
unix_socket_directories = '%s'
ssl = on
ssl_cert_file = '%s'
ssl_key_file = '%s'
ssl_ca_file = '%s'
ssl_min_protocol_version = 'TLSv1.3'
log_destination = 'stderr'
logging_collector = off
log_line_prefix = '%%m [%%p] %%a %%u@%%d '
log_statement = 'all'
log_connections = on
log_disconnections = on
max_connections = 100
shared_buffers = 32MB
fsync = off
synchronous_commit = off
full_page_writes = off
`, dir, certFile, keyFile, caFile)
	f, err := os.OpenFile(filepath.Join(p.DataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	// The only TCP path is TLS with a DB-CA client certificate whose CN is
	// the role; the socket is the harness's superuser back door.
	hba := "local all all trust\nhostssl all all 127.0.0.1/32 cert\n"
	if err := os.WriteFile(filepath.Join(p.DataDir, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(p.stop)
	p.start(t)
	p.setup(t, cfg)
	return p
}

// start picks a free port and starts the server on it, retrying when
// another process grabs the port between our probe and postgres' bind.
func (p *Postgres) start(t testing.TB) {
	t.Helper()
	const attempts = 5
	for i := 0; ; i++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		before := len(p.Log(t))
		// pg_ctl -w returns once the server accepts connections, or fails
		// when the postmaster exits (e.g. the port was taken).
		out, err := p.run(60*time.Second, "pg_ctl", "-D", p.DataDir, "-l", p.LogFile,
			"-o", fmt.Sprintf("-p %d", port), "-w", "-t", "30", "start")
		if err == nil {
			p.Port = port
			p.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			return
		}
		log := p.Log(t)[before:]
		if i+1 < attempts && strings.Contains(log, "could not bind") {
			continue
		}
		t.Fatalf("starting postgres: %v\n%s\nserver log:\n%s", err, out, log)
	}
}

// stop ends the server without a checkpoint: the data is thrown away.
func (p *Postgres) stop() {
	if _, err := os.Stat(filepath.Join(p.DataDir, "postmaster.pid")); err != nil {
		return
	}
	_, _ = p.run(30*time.Second, "pg_ctl", "-D", p.DataDir, "-m", "immediate", "-w", "-t", "20", "stop")
}

func (p *Postgres) setup(t testing.TB, cfg PostgresConfig) {
	t.Helper()
	p.Psql(t, "postgres", "CREATE DATABASE "+QuoteIdent(cfg.Database))
	var b strings.Builder
	b.WriteString("CREATE TABLE public.items (id int PRIMARY KEY, name text);\n")
	for i, name := range cfg.Items {
		fmt.Fprintf(&b, "INSERT INTO public.items VALUES (%d, %s);\n", i+1, QuoteLiteral(name))
	}
	for _, u := range cfg.Users {
		fmt.Fprintf(&b, "CREATE ROLE %s LOGIN;\n", QuoteIdent(u.Name))
		if len(u.Privileges) > 0 {
			fmt.Fprintf(&b, "GRANT %s ON public.items TO %s;\n", strings.ToUpper(strings.Join(u.Privileges, ", ")), QuoteIdent(u.Name))
		}
	}
	p.Psql(t, cfg.Database, b.String())
	for _, sql := range cfg.ExtraSQL {
		p.Psql(t, cfg.Database, sql)
	}
}

// Psql runs sql in db as the superuser over the unix socket and returns
// the unaligned, tuples-only output. Several statements in one call run
// in one transaction (so CREATE DATABASE needs a call of its own).
func (p *Postgres) Psql(t testing.TB, db, sql string) string {
	t.Helper()
	out, err := p.run(60*time.Second, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
		"-h", p.SocketDir, "-p", strconv.Itoa(p.Port), "-U", postgresSuperuser, "-d", db, "-c", sql)
	if err != nil {
		t.Fatalf("psql %q in %s: %v\n%s", sql, db, err, out)
	}
	return strings.TrimRight(out, "\n")
}

// Log returns the server log so far.
func (p *Postgres) Log(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(p.LogFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return string(b)
}

// run executes one of the PostgreSQL binaries as the server's OS user and
// returns its combined output.
func (p *Postgres) run(timeout time.Duration, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(p.BinDir, bin), args...)
	// The test's working dir may be unreadable to the postgres user.
	cmd.Dir = p.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "PGTZ=UTC")
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
		cmd.Env = append(cmd.Env, "HOME="+p.Dir, "USER=postgres", "LOGNAME=postgres")
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// pg_ctl leaves the postmaster running with our pipes as its stdio
	// unless -l redirects them; WaitDelay keeps Run from waiting on an
	// inherited pipe forever.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return out.String(), err
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	return port, l.Close()
}

// QuoteIdent quotes a PostgreSQL identifier.
func QuoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// QuoteLiteral quotes a PostgreSQL string literal.
func QuoteLiteral(s string) string {
	return `'` + strings.ReplaceAll(s, `'`, `''`) + `'`
}
