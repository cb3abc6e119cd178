package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

type testCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	der  []byte
}

func (c testCert) certPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.der})
}

func (c testCert) keyPEM(t *testing.T) []byte {
	b, err := x509.MarshalECPrivateKey(c.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b})
}

func (c testCert) tlsCert() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{c.der}, PrivateKey: c.key, Leaf: c.cert}
}

// issue signs a certificate for tmpl with parent (self-signed when nil).
func issue(t *testing.T, tmpl *x509.Certificate, parent *testCert) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Minute)
	tmpl.NotAfter = time.Now().Add(time.Hour)
	signer, signerCert := key, tmpl
	if parent != nil {
		signer, signerCert = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCert{cert: cert, key: key, der: der}
}

func newCA(t *testing.T, name string) testCert {
	return issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, nil)
}

func newClient(t *testing.T, ca testCert, user string) testCert {
	return issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: user}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, &ca)
}

func TestStartPostgres(t *testing.T) {
	dbCA := newCA(t, "Sigil DB CA (test)")
	server := issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "localhost"}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}, &dbCA)
	// The layout sigilctl auth sign --format postgres writes.
	certDir := t.TempDir()
	for name, data := range map[string][]byte{"server.crt": server.certPEM(), "server.key": server.keyPEM(t), "ca.crt": dbCA.certPEM()} {
		if err := os.WriteFile(filepath.Join(certDir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	started := time.Now()
	pg := StartPostgres(t, PostgresConfig{CertDir: certDir})
	t.Logf("StartPostgres took %s (addr %s, bin %s)", time.Since(started).Round(time.Millisecond), pg.Addr, pg.BinDir)

	if got := pg.Psql(t, "app", "SELECT string_agg(name, ',' ORDER BY id) FROM items"); got != "alpha,beta,gamma" {
		t.Fatalf("rows = %q", got)
	}
	if got := pg.Psql(t, "app", "SELECT rolname FROM pg_roles WHERE rolname IN ('reader','writer') ORDER BY 1"); got != "reader\nwriter" {
		t.Fatalf("roles = %q", got)
	}

	roots := x509.NewCertPool()
	roots.AddCert(dbCA.cert)
	connect := func(user, appName, serverName string, certs ...tls.Certificate) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=app sslmode=disable connect_timeout=10", pg.Port, user))
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["application_name"] = appName
		// verify-full: the chain must reach the DB CA and the name match.
		cfg.TLSConfig = &tls.Config{RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS13,
			// Always present the cert: Go would otherwise withhold one the
			// server's CA list does not name, and the foreign-CA case would
			// only test "no certificate".
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				if len(certs) == 0 {
					return &tls.Certificate{}, nil
				}
				return &certs[0], nil
			}}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			// An authentication failure surfaces only after the handshake.
			err = conn.Ping(ctx)
			if err != nil {
				_ = conn.Close(ctx)
				return nil, err
			}
		}
		return conn, err
	}
	ctx := context.Background()

	reader := newClient(t, dbCA, "reader")
	for _, serverName := range []string{"localhost", "127.0.0.1"} {
		conn, err := connect("reader", "sigil-test-"+serverName, serverName, reader.tlsCert())
		if err != nil {
			t.Fatalf("reader via %s: %v", serverName, err)
		}
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil || n != 3 {
			t.Fatalf("reader SELECT: n=%d err=%v", n, err)
		}
		var who string
		if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "reader" {
			t.Fatalf("current_user = %q, %v", who, err)
		}
		_, err = conn.Exec(ctx, "INSERT INTO items VALUES (99, 'nope')")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" || !strings.Contains(pgErr.Message, "permission denied for table items") {
			t.Fatalf("reader INSERT: want permission denied, got %v", err)
		}
		_ = conn.Close(ctx)
	}

	writer := newClient(t, dbCA, "writer")
	conn, err := connect("writer", "sigil-test-writer", "localhost", writer.tlsCert())
	if err != nil {
		t.Fatalf("writer: %v", err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO items VALUES (4, 'delta')"); err != nil {
		t.Fatalf("writer INSERT: %v", err)
	}
	_ = conn.Close(ctx)

	rejected := []struct {
		name, user, want string
		certs            []tls.Certificate
	}{
		{name: "other CA", user: "reader", want: "unknown certificate authority", certs: []tls.Certificate{newClient(t, newCA(t, "Other CA"), "reader").tlsCert()}},
		{name: "CN is another user", user: "writer", want: `certificate authentication failed for user "writer"`, certs: []tls.Certificate{reader.tlsCert()}},
		{name: "no client cert", user: "reader", want: "connection requires a valid client certificate"},
	}
	for _, tc := range rejected {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := connect(tc.user, "sigil-test-rejected", "localhost", tc.certs...)
			if err == nil {
				_ = conn.Close(ctx)
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
	if conn, err := connect("reader", "x", "db.example.com", reader.tlsCert()); err == nil {
		_ = conn.Close(ctx)
		t.Fatal("server cert accepted for the wrong name")
	}

	Eventually(t, 10*time.Second, func() error {
		log := pg.Log(t)
		for _, want := range []string{
			"sigil-test-localhost reader@app LOG:  statement: INSERT INTO items VALUES (99, 'nope')",
			"sigil-test-writer writer@app LOG:  statement: INSERT INTO items VALUES (4, 'delta')",
		} {
			if !strings.Contains(log, want) {
				return fmt.Errorf("log lacks %q:\n%s", want, log)
			}
		}
		return nil
	})
}

func TestPostgresConfigDefaults(t *testing.T) {
	cfg := PostgresConfig{}
	if err := cfg.CheckAndSetDefaults(); err == nil || !strings.Contains(err.Error(), "CertDir or the PEM fields are required") {
		t.Fatalf("err = %v", err)
	}
	cfg = PostgresConfig{ServerCertPEM: []byte("c"), ServerKeyPEM: []byte("k"), CACertPEM: []byte("a"),
		Users: []PostgresUser{{Name: "x", Privileges: []string{"SELECT; DROP"}}}}
	if err := cfg.CheckAndSetDefaults(); err == nil || !strings.Contains(err.Error(), `unknown privilege "SELECT; DROP"`) {
		t.Fatalf("err = %v", err)
	}
	cfg.Users = nil
	if err := cfg.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	if cfg.Database != "app" || len(cfg.Users) != 2 || cfg.Users[0].Name != "reader" || len(cfg.Items) != 3 {
		t.Fatalf("defaults = %+v", cfg)
	}
}
