package testenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

func TestStartMariaDB(t *testing.T) {
	dbCA := newCA(t, "Sigil DB CA (test)")
	server := issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "localhost"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}, &dbCA)
	// The layout sigilctl auth sign --format mysql writes.
	certDir := t.TempDir()
	for name, data := range map[string][]byte{"server.crt": server.certPEM(), "server.key": server.keyPEM(t), "ca.crt": dbCA.certPEM()} {
		if err := os.WriteFile(filepath.Join(certDir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	started := time.Now()
	my := StartMariaDB(t, MariaDBConfig{CertDir: certDir})
	t.Logf("StartMariaDB took %s (addr %s, dir %s)", time.Since(started).Round(time.Millisecond), my.Addr, my.Dir)

	if got := my.SQL(t, "app", "SELECT GROUP_CONCAT(name ORDER BY id) FROM items"); got != "alpha,beta,gamma" {
		t.Fatalf("rows = %q", got)
	}
	if got := my.SQL(t, "", "SELECT User, ssl_type, x509_subject FROM mysql.user WHERE User IN ('reader','writer') ORDER BY 1"); got != "reader\tSPECIFIED\t/CN=reader\nwriter\tSPECIFIED\t/CN=writer" {
		t.Fatalf("users = %q", got)
	}

	// Refused TCP without TLS below is 1045 from REQUIRE SUBJECT; this
	// also keeps accounts created by ExtraSQL off plain TCP.
	if got := my.SQL(t, "", "SELECT @@require_secure_transport, @@have_ssl, @@performance_schema"); got != "1\tYES\t1" {
		t.Fatalf("server settings = %q", got)
	}

	roots := x509.NewCertPool()
	roots.AddCert(dbCA.cert)
	ctx := context.Background()
	// connect returns one pinned connection, so session state (connection
	// id, attributes) is the one the caller sees.
	type connOpts struct {
		user, serverName, attrs string
		noTLS                   bool
		// maxTLS caps the version when the outcome depends on it.
		maxTLS uint16
		certs  []tls.Certificate
	}
	connect := func(t *testing.T, o connOpts) (*sql.Conn, error) {
		cfg := mysql.NewConfig()
		cfg.User = o.user
		cfg.Net = "tcp"
		cfg.Addr = my.Addr
		cfg.DBName = "app"
		cfg.Timeout = 10 * time.Second
		cfg.ConnectionAttributes = o.attrs
		// The driver reports a failed TLS handshake only as "invalid
		// connection" and logs the cause; keep it for the assertions.
		driverLog := &driverLogger{}
		cfg.Logger = driverLog
		if !o.noTLS {
			cfg.TLS = &tls.Config{RootCAs: roots, ServerName: o.serverName, MinVersion: tls.VersionTLS12, MaxVersion: o.maxTLS,
				// Always present the cert: Go would otherwise withhold one
				// the server's CA list does not name, and the foreign-CA
				// case would only test "no certificate".
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					if len(o.certs) == 0 {
						return &tls.Certificate{}, nil
					}
					return &o.certs[0], nil
				}}
		}
		connector, err := mysql.NewConnector(cfg)
		if err != nil {
			t.Fatal(err)
		}
		db := sql.OpenDB(connector)
		t.Cleanup(func() { _ = db.Close() })
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		conn, err := db.Conn(cctx)
		if err != nil {
			if logged := driverLog.String(); logged != "" {
				return nil, fmt.Errorf("%w (driver log: %s)", err, logged)
			}
			return nil, err
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn, nil
	}

	reader := newClient(t, dbCA, "reader")
	for _, serverName := range []string{"localhost", "127.0.0.1"} {
		t.Run("reader via "+serverName, func(t *testing.T) {
			app := "sigil-test-" + serverName
			conn, err := connect(t, connOpts{user: "reader", serverName: serverName, attrs: "sigil_app:" + app + ",sigil_session:s-123", certs: []tls.Certificate{reader.tlsCert()}})
			if err != nil {
				t.Fatalf("reader: %v", err)
			}
			var n int
			if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil || n != 3 {
				t.Fatalf("reader SELECT: n=%d err=%v", n, err)
			}
			var who, cipher string
			var id int64
			if err := conn.QueryRowContext(ctx, "SELECT CURRENT_USER(), CONNECTION_ID()").Scan(&who, &id); err != nil || who != "reader@%" {
				t.Fatalf("current_user = %q, %v", who, err)
			}
			var name string
			if err := conn.QueryRowContext(ctx, "SHOW SESSION STATUS LIKE 'Ssl_cipher'").Scan(&name, &cipher); err != nil || cipher == "" {
				t.Fatalf("Ssl_cipher = %q, %v", cipher, err)
			}
			_, err = conn.ExecContext(ctx, "INSERT INTO items VALUES (99, 'nope')")
			var myErr *mysql.MySQLError
			if !errors.As(err, &myErr) || myErr.Number != 1142 || !strings.Contains(myErr.Message, "INSERT command denied to user 'reader'@'127.0.0.1'") {
				t.Fatalf("reader INSERT: want 1142 INSERT command denied, got %v", err)
			}

			// The attributes the client sent are visible to the server side
			// for this very connection.
			got := my.SQL(t, "", fmt.Sprintf("SELECT ATTR_NAME, ATTR_VALUE FROM performance_schema.session_connect_attrs "+
				"WHERE PROCESSLIST_ID = %d AND ATTR_NAME LIKE 'sigil\\_%%' ORDER BY ATTR_NAME", id))
			if want := "sigil_app\t" + app + "\nsigil_session\ts-123"; got != want {
				t.Fatalf("session_connect_attrs = %q, want %q", got, want)
			}
		})
	}

	writer := newClient(t, dbCA, "writer")
	conn, err := connect(t, connOpts{user: "writer", serverName: "localhost", attrs: "sigil_app:sigil-test-writer", certs: []tls.Certificate{writer.tlsCert()}})
	if err != nil {
		t.Fatalf("writer: %v", err)
	}
	if _, err := conn.ExecContext(ctx, "INSERT INTO items VALUES (4, 'delta')"); err != nil {
		t.Fatalf("writer INSERT: %v", err)
	}
	if got := my.SQL(t, "app", "SELECT name FROM items WHERE id = 4"); got != "delta" {
		t.Fatalf("row 4 = %q", got)
	}

	otherCA := newClient(t, newCA(t, "Other CA"), "reader").tlsCert()
	rejected := []struct {
		name, want string
		opts       connOpts
	}{
		// TLS 1.2: the server's alert arrives inside the handshake. With
		// 1.3 the client finishes first, and the refusal surfaces as either
		// the alert or a reset on the next write, depending on timing.
		{name: "other CA", want: "remote error: tls: unknown certificate authority",
			opts: connOpts{user: "reader", serverName: "localhost", maxTLS: tls.VersionTLS12, certs: []tls.Certificate{otherCA}}},
		{name: "other CA TLS 1.3", want: "",
			opts: connOpts{user: "reader", serverName: "localhost", certs: []tls.Certificate{otherCA}}},
		{name: "subject is another user", want: "Error 1045 (28000): Access denied for user 'writer'@'127.0.0.1'",
			opts: connOpts{user: "writer", serverName: "localhost", certs: []tls.Certificate{reader.tlsCert()}}},
		{name: "no client cert", want: "Error 1045 (28000): Access denied for user 'reader'@'127.0.0.1'",
			opts: connOpts{user: "reader", serverName: "localhost"}},
		{name: "no TLS", want: "Error 1045 (28000): Access denied for user 'reader'@'127.0.0.1'",
			opts: connOpts{user: "reader", noTLS: true}},
	}
	for _, tc := range rejected {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := connect(t, tc.opts)
			if err == nil {
				_ = conn.Close()
				t.Fatal("connection accepted")
			}
			t.Logf("refused: %v", err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}

	// A wrong server name must fail on our side: the server cert names
	// only localhost and 127.0.0.1.
	if conn, err := connect(t, connOpts{user: "reader", serverName: "db.example.com", certs: []tls.Certificate{reader.tlsCert()}}); err == nil {
		_ = conn.Close()
		t.Fatal("server cert accepted for the wrong name")
	} else if !strings.Contains(err.Error(), "certificate is valid for localhost, not db.example.com") {
		t.Fatalf("wrong server name: %v", err)
	}

	Eventually(t, 10*time.Second, func() error {
		log := my.Log(t)
		for _, want := range []string{
			"Connect\treader@127.0.0.1 on app using SSL/TLS",
			"Query\tINSERT INTO items VALUES (99, 'nope')",
			"Connect\twriter@127.0.0.1 on app using SSL/TLS",
			"Query\tINSERT INTO items VALUES (4, 'delta')",
		} {
			if !strings.Contains(log, want) {
				return fmt.Errorf("general log lacks %q:\n%s", want, log)
			}
		}
		return nil
	})
}

// driverLogger collects what the MySQL driver logs for one connector.
type driverLogger struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *driverLogger) Print(v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintln(&l.buf, v...)
}

func (l *driverLogger) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.TrimSpace(l.buf.String())
}

func TestMariaDBConfigDefaults(t *testing.T) {
	cfg := MariaDBConfig{}
	if err := cfg.CheckAndSetDefaults(); err == nil || !strings.Contains(err.Error(), "CertDir or the PEM fields are required") {
		t.Fatalf("err = %v", err)
	}
	cfg = MariaDBConfig{ServerCertPEM: []byte("c"), ServerKeyPEM: []byte("k"), CACertPEM: []byte("a"),
		Users: []MariaDBUser{{Name: "x", Privileges: []string{"SELECT; DROP"}}}}
	if err := cfg.CheckAndSetDefaults(); err == nil || !strings.Contains(err.Error(), `unknown privilege "SELECT; DROP"`) {
		t.Fatalf("err = %v", err)
	}
	cfg.Users = []MariaDBUser{{Name: "a/CN=b"}}
	if err := cfg.CheckAndSetDefaults(); err == nil || !strings.Contains(err.Error(), "not allowed in a subject match") {
		t.Fatalf("err = %v", err)
	}
	cfg.Users = nil
	if err := cfg.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	if cfg.Database != "app" || len(cfg.Users) != 2 || cfg.Users[1].Name != "writer" || len(cfg.Users[1].Privileges) != 4 || len(cfg.Items) != 3 {
		t.Fatalf("defaults = %+v", cfg)
	}
}

func TestMariaDBQuote(t *testing.T) {
	for in, want := range map[string]string{"a": "'a'", "it's": "'it''s'", `a\'b`: `'a\\''b'`} {
		if got := MariaDBQuoteLiteral(in); got != want {
			t.Errorf("MariaDBQuoteLiteral(%q) = %s, want %s", in, got, want)
		}
	}
	if got := MariaDBQuoteIdent("we`ird"); got != "`we``ird`" {
		t.Errorf("MariaDBQuoteIdent = %s", got)
	}
}
