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
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// MariaDBUser is an account (no password: the server only accepts it
// over TLS with a client certificate whose subject is /CN=Name) and its
// privileges on the test database.
type MariaDBUser struct {
	Name string
	// Privileges on Database.*, e.g. SELECT, INSERT, UPDATE, DELETE.
	Privileges []string
}

// MariaDBConfig describes the test server.
type MariaDBConfig struct {
	// CertDir holds server.crt, server.key and ca.crt, as written by
	// `sigilctl auth sign --format mysql --host localhost --out DIR`.
	// Ignored for any of the three PEM fields below that is set.
	CertDir string
	// ServerCertPEM and ServerKeyPEM are what the server presents; the
	// certificate must be valid for localhost and 127.0.0.1.
	ServerCertPEM []byte
	ServerKeyPEM  []byte
	// CACertPEM is the DB CA: client certificates must chain to it.
	CACertPEM []byte
	// Database is created and holds items (id int primary key,
	// name varchar(64)). Default "app".
	Database string
	// Users default to reader (SELECT) and writer (SELECT, INSERT,
	// UPDATE, DELETE).
	Users []MariaDBUser
	// Items are the names of the rows put in items (ids 1..n). Default
	// alpha, beta, gamma.
	Items []string
	// ExtraSQL runs in Database as root after the setup above, one
	// client call per entry.
	ExtraSQL []string
}

// CheckAndSetDefaults loads the certificates and fills in defaults.
func (c *MariaDBConfig) CheckAndSetDefaults() error {
	files := []struct {
		dst  *[]byte
		name string
	}{{&c.ServerCertPEM, "server.crt"}, {&c.ServerKeyPEM, "server.key"}, {&c.CACertPEM, "ca.crt"}}
	for _, f := range files {
		if len(*f.dst) > 0 {
			continue
		}
		if c.CertDir == "" {
			return fmt.Errorf("MariaDBConfig: CertDir or the PEM fields are required (missing %s)", f.name)
		}
		b, err := os.ReadFile(filepath.Join(c.CertDir, f.name))
		if err != nil {
			return fmt.Errorf("MariaDBConfig: reading %s: %w", f.name, err)
		}
		*f.dst = b
	}
	if c.Database == "" {
		c.Database = "app"
	}
	if c.Users == nil {
		c.Users = []MariaDBUser{
			{Name: "reader", Privileges: []string{"SELECT"}},
			{Name: "writer", Privileges: []string{"SELECT", "INSERT", "UPDATE", "DELETE"}},
		}
	}
	if c.Items == nil {
		c.Items = []string{"alpha", "beta", "gamma"}
	}
	for _, u := range c.Users {
		if u.Name == "" {
			return errors.New("MariaDBConfig: a user has no name")
		}
		// The name ends up in a certificate subject match; keep it to
		// what needs no escaping there.
		if strings.ContainsAny(u.Name, "/=,+\\'\"`\x00") {
			return fmt.Errorf("MariaDBConfig: user %q: name has a character not allowed in a subject match", u.Name)
		}
		for _, p := range u.Privileges {
			if !validMariaDBPrivilege[strings.ToUpper(p)] {
				return fmt.Errorf("MariaDBConfig: user %q: unknown privilege %q", u.Name, p)
			}
		}
	}
	return nil
}

var validMariaDBPrivilege = map[string]bool{
	"SELECT": true, "INSERT": true, "UPDATE": true, "DELETE": true,
	"CREATE": true, "DROP": true, "ALTER": true, "INDEX": true,
	"CREATE VIEW": true, "SHOW VIEW": true, "EXECUTE": true,
	"ALL": true, "ALL PRIVILEGES": true,
}

// MariaDB is a running MariaDB server on a loopback port, reachable over
// TCP only with TLS and a client certificate from the DB CA.
type MariaDB struct {
	// Addr is 127.0.0.1:Port.
	Addr string
	Port int
	// Database is the database holding items.
	Database string
	// Dir is the temp dir holding everything below; removed on cleanup.
	Dir string
	// DataDir is the server's data directory.
	DataDir string
	// Socket is the unix socket root uses (the harness's back door).
	Socket string
	// LogFile is the general query log: every connect and statement.
	LogFile string
	// ErrorLog is the server's error log.
	ErrorLog string

	// osUser is what mariadbd runs as (--user); root is allowed there.
	osUser string
	cmd    *exec.Cmd
	// exited is closed once cmd has been waited for.
	exited chan struct{}
}

// mariadbPackages names what to install when a binary is missing.
const mariadbPackages = "install the Debian packages mariadb-server and mariadb-client " +
	"(apt-get install -y mariadb-server mariadb-client) or run `make test-deps`"

// mariadbBin finds a MariaDB binary on $PATH or in /usr/sbin and
// /usr/bin (sbin is often not on a test runner's $PATH).
func mariadbBin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/usr/local/mysql/bin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	pkg := "mariadb-server"
	if name == "mariadb" || name == "mariadb-admin" {
		pkg = "mariadb-client"
	}
	return "", fmt.Errorf("MariaDB binary %s not found (package %s): %s", name, pkg, mariadbPackages)
}

// mariadbTempDir creates the server's temp dir. tmpfs first:
// mariadb-install-db writes and fsyncs ~25 MB, which took 15-25 s on a
// busy disk against ~4 s in RAM. The path stays short either way, because
// a unix socket path is limited to ~107 bytes. $SIGIL_MARIADB_TMPDIR
// overrides the choice.
func mariadbTempDir() (string, error) {
	if base := os.Getenv("SIGIL_MARIADB_TMPDIR"); base != "" {
		return os.MkdirTemp(base, "sigil-my-")
	}
	if dir, err := os.MkdirTemp("/dev/shm", "sigil-my-"); err == nil {
		return dir, nil
	}
	base := os.TempDir()
	if len(base) > 40 {
		base = "/tmp"
	}
	return os.MkdirTemp(base, "sigil-my-")
}

// StartMariaDB creates a data dir in a temp dir, starts mariadbd on a
// free loopback port, creates cfg's database, table, rows and users, and
// stops it and removes the dir when the test ends.
func StartMariaDB(t testing.TB, cfg MariaDBConfig) *MariaDB {
	t.Helper()
	if err := cfg.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"mariadbd", "mariadb-install-db", "mariadb", "mariadb-admin"} {
		if _, err := mariadbBin(b); err != nil {
			t.Fatal(err)
		}
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	m := &MariaDB{Database: cfg.Database, osUser: u.Username}

	dir, err := mariadbTempDir()
	if err != nil {
		t.Fatal(err)
	}
	m.Dir = dir
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	m.DataDir = filepath.Join(dir, "data")
	m.Socket = filepath.Join(dir, "my.sock")
	m.LogFile = filepath.Join(dir, "general.log")
	m.ErrorLog = filepath.Join(dir, "error.log")
	writeFile := func(name string, data []byte, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	certFile := writeFile("server.crt", cfg.ServerCertPEM, 0o644)
	keyFile := writeFile("server.key", cfg.ServerKeyPEM, 0o600)
	caFile := writeFile("ca.crt", cfg.CACertPEM, 0o644)

	// --no-defaults keeps the host's /etc/mysql config (and anything it
	// includes) out of the test server.
	out, err := m.run(120*time.Second, "mariadb-install-db", "--no-defaults",
		"--datadir="+m.DataDir, "--user="+m.osUser,
		"--auth-root-authentication-method=normal", "--skip-test-db",
		"--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M")
	if err != nil {
		t.Fatalf("mariadb-install-db: %v\n%s", err, out)
	}

	t.Cleanup(m.stop)
	m.start(t, certFile, keyFile, caFile)
	m.setup(t, cfg)
	return m
}

// start picks a free port and starts mariadbd on it, retrying when
// another process grabs the port between our probe and the server's bind.
func (m *MariaDB) start(t testing.TB, certFile, keyFile, caFile string) {
	t.Helper()
	bin, err := mariadbBin("mariadbd")
	if err != nil {
		t.Fatal(err)
	}
	const attempts = 5
	for i := 0; ; i++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		before := len(m.readFile(t, m.ErrorLog))
		cmd := exec.Command(bin, "--no-defaults",
			"--datadir="+m.DataDir,
			"--port="+strconv.Itoa(port),
			"--bind-address=127.0.0.1",
			"--socket="+m.Socket,
			"--pid-file="+filepath.Join(m.Dir, "mariadbd.pid"),
			"--user="+m.osUser,
			"--ssl-cert="+certFile,
			"--ssl-key="+keyFile,
			"--ssl-ca="+caFile,
			// TCP clients must use TLS; the unix socket counts as secure.
			"--require-secure-transport=ON",
			"--general-log=1",
			"--general-log-file="+m.LogFile,
			"--log-output=FILE",
			"--log-error="+m.ErrorLog,
			"--skip-name-resolve",
			"--innodb-buffer-pool-size=32M",
			"--innodb-log-file-size=8M",
			"--innodb-flush-log-at-trx-commit=0",
			// Exposes connection attributes in
			// performance_schema.session_connect_attrs.
			"--performance-schema=ON",
			"--max-connections=100",
		)
		cmd.Dir = m.Dir
		cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
		// stdio stays nil: everything goes to --log-error, and no pipe
		// can keep a Wait hanging.
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting mariadbd: %v", err)
		}
		m.cmd = cmd
		m.exited = make(chan struct{})
		var waitErr error
		go func(exited chan struct{}) {
			waitErr = cmd.Wait()
			close(exited)
		}(m.exited)

		err = m.waitReady(60 * time.Second)
		if err == nil {
			m.Port = port
			m.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			return
		}
		m.stop()
		log := m.readFile(t, m.ErrorLog)[before:]
		if errors.Is(err, errExited) {
			err = fmt.Errorf("%w: %v", err, waitErr)
		}
		if i+1 < attempts && (strings.Contains(log, "Address already in use") || strings.Contains(log, "Do you already have another server running on port")) {
			continue
		}
		t.Fatalf("starting mariadbd: %v\nerror log:\n%s", err, log)
	}
}

var errExited = errors.New("mariadbd exited")

// waitReady polls the socket until the server answers a ping, it exits,
// or the deadline passes.
func (m *MariaDB) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	wait := 20 * time.Millisecond
	var last string
	for {
		select {
		case <-m.exited:
			return errExited
		default:
		}
		out, err := m.run(10*time.Second, "mariadb-admin", "--no-defaults", "--socket="+m.Socket,
			"--user=root", "--connect-timeout=5", "ping")
		if err == nil {
			return nil
		}
		last = strings.TrimSpace(out)
		if time.Now().After(deadline) {
			return fmt.Errorf("mariadbd not ready within %s: %s", timeout, last)
		}
		select {
		case <-m.exited:
			return errExited
		case <-time.After(wait):
		}
		if wait < 200*time.Millisecond {
			wait *= 2
		}
	}
}

// stop ends the server. The data is thrown away, so a slow clean
// shutdown buys nothing: SIGTERM, then SIGKILL if it lingers.
func (m *MariaDB) stop() {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	select {
	case <-m.exited:
		return
	default:
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(15 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.exited
	}
}

func (m *MariaDB) setup(t testing.TB, cfg MariaDBConfig) {
	t.Helper()
	db := MariaDBQuoteIdent(cfg.Database)
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE DATABASE %s;\n", db)
	fmt.Fprintf(&b, "CREATE TABLE %s.items (id int PRIMARY KEY, name varchar(64)) ENGINE=InnoDB;\n", db)
	for i, name := range cfg.Items {
		fmt.Fprintf(&b, "INSERT INTO %s.items VALUES (%d, %s);\n", db, i+1, MariaDBQuoteLiteral(name))
	}
	for _, u := range cfg.Users {
		account := MariaDBQuoteLiteral(u.Name) + "@'%'"
		fmt.Fprintf(&b, "CREATE USER %s REQUIRE SUBJECT %s;\n", account, MariaDBQuoteLiteral("/CN="+u.Name))
		if len(u.Privileges) > 0 {
			fmt.Fprintf(&b, "GRANT %s ON %s.* TO %s;\n", strings.ToUpper(strings.Join(u.Privileges, ", ")), db, account)
		}
	}
	m.SQL(t, "", b.String())
	for _, sql := range cfg.ExtraSQL {
		m.SQL(t, cfg.Database, sql)
	}
}

// SQL runs sql (one or more statements) in db ("" for none) as root over
// the unix socket and returns the batch output: tab-separated columns,
// one row a line, no header. It fails the test on any error.
func (m *MariaDB) SQL(t testing.TB, db, sql string) string {
	t.Helper()
	args := []string{"--no-defaults", "--socket=" + m.Socket, "--user=root",
		"--batch", "--skip-column-names", "--connect-timeout=10", "-e", sql}
	if db != "" {
		args = append(args, "--database="+db)
	}
	out, err := m.run(60*time.Second, "mariadb", args...)
	if err != nil {
		t.Fatalf("mariadb %q in %q: %v\n%s", sql, db, err, out)
	}
	return strings.TrimRight(out, "\n")
}

// Log returns the general query log so far: connects (with user and
// host) and every statement.
func (m *MariaDB) Log(t testing.TB) string {
	t.Helper()
	return m.readFile(t, m.LogFile)
}

func (m *MariaDB) readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return string(b)
}

// run executes a MariaDB binary and returns its combined output.
func (m *MariaDB) run(timeout time.Duration, name string, args ...string) (string, error) {
	bin, err := mariadbBin(name)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = m.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	return out.String(), err
}

// MariaDBQuoteIdent quotes a MariaDB identifier.
func MariaDBQuoteIdent(s string) string {
	return "`" + strings.ReplaceAll(s, "`", "``") + "`"
}

// MariaDBQuoteLiteral quotes a MariaDB string literal. Backslashes are
// doubled because the server's default sql_mode treats them as escapes.
func MariaDBQuoteLiteral(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return `'` + strings.ReplaceAll(s, `'`, `''`) + `'`
}
