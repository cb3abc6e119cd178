package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/integration/testenv"
)

// myEnv is a daemon with a registered MariaDB server and roles.
type myEnv struct {
	*pgEnv
	my *testenv.MariaDB
}

var tlsConfigSeq atomic.Int64

func startMyEnv(t *testing.T) *myEnv {
	d := testenv.StartDaemon(t, "")
	if d.MySQLAddr == "" {
		t.Fatalf("sigild did not print its MySQL listener:\n%s", d.Stdout())
	}
	e := &myEnv{pgEnv: &pgEnv{t: t, d: d}}
	e.addDatabase("mysql", "my1", myRoles, func(certDir string) string {
		e.my = testenv.StartMariaDB(t, testenv.MariaDBConfig{CertDir: certDir})
		return e.my.Addr
	})
	return e
}

// myRoles are the roles of the MySQL tests.
const myRoles = `kind: role
version: v1
metadata: {name: my-read}
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
metadata: {name: my-write}
spec:
  allow:
    databases:
      labels: {env: [dev]}
      db_users: [writer]
      db_names: [app]
      statements: write
`

// myCert is a routed certificate for my1 with its parsed TLS material.
type myCert struct {
	dbCert
	tls *tls.Config
	// name is the go-sql-driver TLS config name.
	name string
}

func (e *myEnv) cert(home, dbUser string, ttl time.Duration) myCert {
	e.t.Helper()
	c, err := testenv.IssueDBCert(context.Background(), home, "my1", dbUser, "app", ttl)
	if err != nil {
		e.t.Fatalf("GenerateDatabaseCert: %v", err)
	}
	return e.tlsCert(writeCertFiles(e.t, c.CertPEM, c.KeyPEM, c.CAPEM))
}

func (e *myEnv) tlsCert(c dbCert) myCert {
	e.t.Helper()
	pair, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		e.t.Fatal(err)
	}
	caPEM, err := os.ReadFile(c.ca)
	if err != nil {
		e.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13}
	name := fmt.Sprintf("sigil-%d", tlsConfigSeq.Add(1))
	if err := mysql.RegisterTLSConfig(name, cfg); err != nil {
		e.t.Fatal(err)
	}
	return myCert{dbCert: c, tls: cfg, name: name}
}

// db opens a go-sql-driver pool through the gateway.
func (e *myEnv) db(c myCert, dbUser string) *sql.DB {
	e.t.Helper()
	cfg := mysql.NewConfig()
	cfg.User = dbUser
	cfg.Net = "tcp"
	cfg.Addr = e.d.MySQLAddr
	cfg.DBName = "app"
	cfg.TLSConfig = c.name
	cfg.Timeout = 10 * time.Second
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	db := sql.OpenDB(connector)
	e.t.Cleanup(func() { db.Close() })
	return db
}

// cli runs the mariadb client through the gateway.
func (e *myEnv) cli(c myCert, dbUser string, args ...string) (string, string, bool) {
	e.t.Helper()
	return e.cliInput(c, dbUser, "", args...)
}

// cliInput is cli with input on stdin.
func (e *myEnv) cliInput(c myCert, dbUser, input string, args ...string) (string, string, bool) {
	e.t.Helper()
	host, port, _ := strings.Cut(e.d.MySQLAddr, ":")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "mariadb", append([]string{"--no-defaults", "--host", host, "--port", port,
		"--user", dbUser, "--database", "app", "--ssl-cert", c.cert, "--ssl-key", c.key, "--ssl-ca", c.ca,
		"--ssl-verify-server-cert", "--batch", "--skip-column-names", "--connect-timeout", "10"}, args...)...)
	cmd.Stdin = strings.NewReader(input)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return strings.TrimSpace(out.String()), errb.String(), err == nil
}

func mysqlErr(err error) *mysql.MySQLError {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me
	}
	return nil
}

// TestMySQLGateway runs the mariadb client and go-sql-driver through the
// gateway against a real MariaDB server.
func TestMySQLGateway(t *testing.T) {
	e := startMyEnv(t)
	aliceHome := e.addUser("alice", "my-read")
	bobHome := e.addUser("bob", "my-write")
	alice := e.cert(aliceHome, "reader", 0)
	bob := e.cert(bobHome, "writer", 0)
	shortLived := e.cert(bobHome, "writer", 10*time.Second)
	shortIssued := time.Now()

	t.Run("select as alice is audited with her name", func(t *testing.T) {
		out, stderr, ok := e.cli(alice, "reader", "-e", "select name from items order by id")
		if !ok || out != "alpha\nbeta\ngamma" {
			t.Fatalf("mariadb select: ok=%v out=%q stderr=%s\nsigild:\n%s", ok, out, stderr, e.d.Stderr())
		}
		q := findEvent(e.events(audit.EventDBQuery, "alice"), func(ev *audit.Event) bool {
			return ev.Statement == "select name from items order by id"
		})
		if q == nil {
			t.Fatalf("no db.query event for alice's select")
		}
		if q.Classification != "read" || q.Resource.GetName() != "my1" || q.Resource.GetDbUser() != "reader" || q.Identity.GetKind() != "human" {
			t.Errorf("db.query event = %v", q)
		}

		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db := e.db(alice, "reader")
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatalf("go-sql-driver connect: %v\nsigild:\n%s", err, e.d.Stderr())
		}
		defer conn.Close()
		var who string
		if err := conn.QueryRowContext(ctx, "SELECT @sigil_identity").Scan(&who); err != nil || !strings.HasPrefix(who, "alice/human/") {
			t.Fatalf("@sigil_identity = %q, %v", who, err)
		}
		sessionID := strings.TrimPrefix(who, "alice/human/")
		// The database itself names the person, while the session lives.
		attrs := e.my.SQL(t, "", "SELECT ATTR_NAME, ATTR_VALUE FROM performance_schema.session_connect_attrs WHERE ATTR_NAME IN ('sigil_user','sigil_session','program_name') AND PROCESSLIST_ID IN (SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'reader') ORDER BY ATTR_NAME")
		for _, want := range []string{"program_name\tsigil", "sigil_session\t" + sessionID, "sigil_user\talice"} {
			if !strings.Contains(attrs, want) {
				t.Errorf("session_connect_attrs lack %q:\n%s", want, attrs)
			}
		}
		// A client cannot change the identity variable.
		_, err = conn.ExecContext(ctx, "SET @sigil_identity = 'bob/human/forged'")
		if me := mysqlErr(err); me == nil || me.Number != 1142 {
			t.Fatalf("forging @sigil_identity: %v", err)
		}
		conn.Close()
		db.Close()
		start := findEvent(e.events(audit.EventDBSessionStart, "alice"), func(ev *audit.Event) bool { return ev.SessionId == sessionID })
		if start == nil || start.Details["protocol"] != "mysql" {
			t.Errorf("db.session.start for %s = %v", sessionID, start)
		}
		testenv.Eventually(t, 10*time.Second, func() error {
			end := findEvent(e.events(audit.EventDBSessionEnd, "alice"), func(ev *audit.Event) bool { return ev.SessionId == sessionID })
			if end == nil {
				return errors.New("no db.session.end yet")
			}
			if end.Details["statements"] != "1" || end.Details["bytes_in"] == "0" || end.Details["bytes_out"] == "0" {
				return testenv.Fatal(fmt.Errorf("db.session.end details = %v", end.Details))
			}
			return nil
		})
	})

	t.Run("insert refused for a read role", func(t *testing.T) {
		_, stderr, ok := e.cli(alice, "reader", "-e", "insert into items values (100, 'evil')")
		if ok || !strings.Contains(stderr, "1142") || !strings.Contains(stderr, "statement refused: INSERT") || !strings.Contains(stderr, `role "my-read" grants read`) {
			t.Fatalf("insert as reader: ok=%v stderr=%s", ok, stderr)
		}
		if got := e.my.SQL(t, "app", "select count(*) from items where id = 100"); got != "0" {
			t.Fatalf("refused row was inserted: count = %s", got)
		}
		if strings.Contains(e.my.Log(t), "evil") {
			t.Errorf("the database saw the refused statement")
		}
		if findEvent(e.events(audit.EventDBDenied, "alice"), func(ev *audit.Event) bool { return strings.Contains(ev.Statement, "evil") }) == nil {
			t.Errorf("no db.denied event for the insert")
		}
		// Multi-statements are classified one by one; the session goes on.
		out, stderr, ok := e.cliInput(alice, "reader", "select 1; select 2; delete from items; select 3;\n", "--force")
		if out != "1\n2\n3" || !strings.Contains(stderr, "1142") {
			t.Fatalf("session after refusal: ok=%v out=%q stderr=%s", ok, out, stderr)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db := e.db(alice, "reader")
		_, err := db.ExecContext(ctx, "select 1; update items set name = 'x'")
		if me := mysqlErr(err); me == nil || me.Number != 1142 || me.SQLState != [5]byte{'4', '2', '0', '0', '0'} {
			t.Fatalf("multi-statement with an update: %v", err)
		}
		_, err = db.ExecContext(ctx, "create table t2 (id int)")
		if me := mysqlErr(err); me == nil || me.Number != 1142 {
			t.Fatalf("DDL as reader: %v", err)
		}
	})

	t.Run("prepared statement parameters are recorded", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db := e.db(alice, "reader")
		var name string
		if err := db.QueryRowContext(ctx, "select name from items where id = ? and name <> ?", 2, "zzz-param").Scan(&name); err != nil || name != "beta" {
			t.Fatalf("prepared select: %q, %v", name, err)
		}
		_, err := db.ExecContext(ctx, "insert into items values (?, ?)", 101, "evil2")
		if me := mysqlErr(err); me == nil || me.Number != 1142 {
			t.Fatalf("prepared insert as reader: %v", err)
		}
		q := findEvent(e.events(audit.EventDBQuery, "alice"), func(ev *audit.Event) bool {
			return ev.Statement == "select name from items where id = ? and name <> ?"
		})
		if q == nil || !slices.Equal(q.Parameters, []string{"2", "zzz-param"}) || q.Details["protocol"] != "prepared" || q.Classification != "read" {
			t.Fatalf("prepared db.query event = %v", q)
		}
	})

	t.Run("write role inserts", func(t *testing.T) {
		if _, stderr, ok := e.cli(bob, "writer", "-e", "insert into items values (200, 'from-bob')"); !ok {
			t.Fatalf("insert as writer: %s", stderr)
		}
		if got := e.my.SQL(t, "app", "select name from items where id = 200"); got != "from-bob" {
			t.Fatalf("row 200 = %q", got)
		}
		if _, stderr, ok := e.cli(bob, "writer", "-e", "drop table items"); ok || !strings.Contains(stderr, "1142") {
			t.Fatalf("drop table as writer: ok=%v stderr=%s", ok, stderr)
		}
	})

	t.Run("wrong db user is refused", func(t *testing.T) {
		_, stderr, ok := e.cli(alice, "writer", "-e", "select 1")
		if ok || !strings.Contains(stderr, "1045") || !strings.Contains(stderr, `this certificate is for db user "reader", not "writer"`) {
			t.Fatalf("alice as writer: ok=%v stderr=%s", ok, stderr)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := e.db(alice, "writer").PingContext(ctx)
		if me := mysqlErr(err); me == nil || me.Number != 1045 {
			t.Fatalf("go-sql-driver as writer: %v", err)
		}
		// Switching to another database name than the certificate's.
		_, stderr, ok = e.cli(bob, "writer", "-e", "use mysql")
		if ok || !strings.Contains(stderr, "1044") {
			t.Fatalf("use mysql as bob: ok=%v stderr=%s", ok, stderr)
		}
	})

	t.Run("change user is refused", func(t *testing.T) {
		c := rawMySQL(t, e.d.MySQLAddr, alice, "reader")
		defer c.Close()
		// COM_CHANGE_USER to writer.
		payload := append([]byte{0x11}, "writer\x00\x00app\x00"...)
		if _, err := c.Write(append([]byte{byte(len(payload)), 0, 0, 0}, payload...)); err != nil {
			t.Fatal(err)
		}
		p := readRawPacket(t, c)
		if p[0] != 0xff || binary.LittleEndian.Uint16(p[1:]) != 1045 || !strings.Contains(string(p), "change user is not allowed") {
			t.Fatalf("COM_CHANGE_USER answer: %q", p)
		}
		// The connection goes on as alice.
		payload = append([]byte{0x03}, "select @sigil_identity"...)
		if _, err := c.Write(append([]byte{byte(len(payload)), 0, 0, 0}, payload...)); err != nil {
			t.Fatal(err)
		}
		var rows strings.Builder
		for range 4 {
			rows.Write(readRawPacket(t, c))
		}
		if !strings.Contains(rows.String(), "alice/human/") {
			t.Fatalf("identity after refused change user: %q", rows.String())
		}
	})

	t.Run("ALPN sigil-mysql on the gateway port", func(t *testing.T) {
		cfg := alice.tls.Clone()
		cfg.NextProtos = []string{"sigil-mysql"}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", e.d.Addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		hs := readRawPacket(t, conn)
		nul := strings.IndexByte(string(hs[1:]), 0)
		caps := uint32(binary.LittleEndian.Uint16(hs[1+nul+1+4+9:]))
		if caps&(1<<11) != 0 {
			t.Fatalf("the handshake inside TLS offers TLS again (caps %x)", caps)
		}
		resp := binary.LittleEndian.AppendUint32(nil, 1<<9|1<<15|1<<19|1<<3)
		resp = binary.LittleEndian.AppendUint32(resp, 1<<24)
		resp = append(resp, 45)
		resp = append(resp, make([]byte, 23)...)
		resp = append(resp, "reader\x00\x00app\x00mysql_native_password\x00"...)
		if _, err := conn.Write(append([]byte{byte(len(resp)), 0, 0, 1}, resp...)); err != nil {
			t.Fatal(err)
		}
		if p := readRawPacket(t, conn); p[0] != 0 {
			t.Fatalf("login over ALPN: %q", p)
		}
		q := append([]byte{0x03}, "select @sigil_identity"...)
		if _, err := conn.Write(append([]byte{byte(len(q)), 0, 0, 0}, q...)); err != nil {
			t.Fatal(err)
		}
		var rows strings.Builder
		for range 4 {
			rows.Write(readRawPacket(t, conn))
		}
		if !strings.Contains(rows.String(), "alice/human/") {
			t.Fatalf("identity over ALPN: %q", rows.String())
		}
	})

	t.Run("kill query from a second connection", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		db := e.db(alice, "reader")
		conn1, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn1.Close()
		var id int64
		if err := conn1.QueryRowContext(ctx, "select connection_id()").Scan(&id); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		started := time.Now()
		go func() {
			var v int
			done <- conn1.QueryRowContext(ctx, "select sleep(30)").Scan(&v)
		}()
		testenv.Eventually(t, 10*time.Second, func() error {
			if !strings.Contains(e.my.SQL(t, "", "select info from information_schema.processlist where user = 'reader'"), "sleep(30)") {
				return errors.New("sleep not running yet")
			}
			return nil
		})
		if _, err := db.ExecContext(ctx, fmt.Sprintf("KILL QUERY %d", id)); err != nil {
			t.Fatalf("KILL QUERY: %v", err)
		}
		select {
		case <-done:
			if time.Since(started) > 15*time.Second {
				t.Fatalf("query ran %v after KILL QUERY", time.Since(started))
			}
		case <-time.After(15 * time.Second):
			t.Fatal("KILL QUERY did not interrupt the sleep")
		}
		// Another user's session cannot be killed.
		_, err = e.db(bob, "writer").ExecContext(ctx, fmt.Sprintf("KILL QUERY %d", id))
		if me := mysqlErr(err); me == nil || me.Number != 1094 {
			t.Fatalf("bob killing alice's query: %v", err)
		}
	})

	t.Run("lock ends a live session", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := e.db(alice, "reader").Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.ExecContext(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			var v int
			done <- conn.QueryRowContext(ctx, "select sleep(20)").Scan(&v)
		}()
		e.mustCtl("lock", "--user", "alice", "--message", "laptop stolen")
		locked := time.Now()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "laptop stolen") {
				t.Fatalf("query during lock: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the lock did not end the session")
		}
		if elapsed := time.Since(locked); elapsed > 1500*time.Millisecond {
			t.Fatalf("session ended %v after the lock, want about 1 s", elapsed)
		}
		_, stderr, ok := e.cli(alice, "reader", "-e", "select 1")
		if ok || !strings.Contains(stderr, "1045") || !strings.Contains(stderr, "laptop stolen") {
			t.Fatalf("connect while locked: ok=%v stderr=%s", ok, stderr)
		}
	})

	t.Run("expired certificate", func(t *testing.T) {
		testenv.Eventually(t, time.Until(shortIssued.Add(40*time.Second)), func() error {
			_, stderr, ok := e.cli(shortLived, "writer", "-e", "select 1")
			if ok {
				return errors.New("short-lived certificate still accepted")
			}
			if !strings.Contains(stderr, "certificate expired at") || !strings.Contains(stderr, "1045") {
				return testenv.Fatal(fmt.Errorf("expired cert refusal: %s", stderr))
			}
			return nil
		})
	})
}

// rawMySQL logs in through the gateway with hand-made packets, for
// commands go-sql-driver does not send.
func rawMySQL(t *testing.T, addr string, c myCert, dbUser string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	readRawPacket(t, conn)                           // server handshake
	const caps = 1<<9 | 1<<11 | 1<<15 | 1<<19 | 1<<3 // 4.1, SSL, secure conn, plugin auth, with db
	ssl := binary.LittleEndian.AppendUint32(nil, caps)
	ssl = binary.LittleEndian.AppendUint32(ssl, 1<<24)
	ssl = append(ssl, 45)
	ssl = append(ssl, make([]byte, 23)...)
	if _, err := conn.Write(append([]byte{byte(len(ssl)), 0, 0, 1}, ssl...)); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(conn, c.tls)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	resp := append(ssl, dbUser+"\x00"...)
	resp = append(resp, 0) // empty auth response
	resp = append(resp, "app\x00mysql_native_password\x00"...)
	if _, err := tc.Write(append([]byte{byte(len(resp)), 0, 0, 2}, resp...)); err != nil {
		t.Fatal(err)
	}
	if p := readRawPacket(t, tc); p[0] != 0 {
		t.Fatalf("raw login: %q", p)
	}
	return tc
}

func readRawPacket(t *testing.T, r io.Reader) []byte {
	t.Helper()
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, int(hdr[0])|int(hdr[1])<<8|int(hdr[2])<<16)
	if _, err := io.ReadFull(r, p); err != nil {
		t.Fatal(err)
	}
	if len(p) == 0 {
		t.Fatal("empty packet")
	}
	return p
}
