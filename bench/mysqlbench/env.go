package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/sigilhq/sigil/bench/internal/benchenv"
	"github.com/sigilhq/sigil/integration/testenv"
)

const (
	benchDBUser   = "bench"
	benchDBName   = "bench"
	benchDatabase = "my1"
	benchUser     = "benchuser"
	benchPassword = "correct horse battery staple"
)

// benchEnv is sigild, MariaDB with the items table, and the three ways
// to reach them as driver configurations.
type benchEnv struct {
	h     *benchenv.Harness
	sigil *benchenv.Sigil
	my    *testenv.MariaDB
	legs  map[string]*mysql.Config
}

// setUp starts everything and checks each leg answers the point query.
func setUp(ctx context.Context, h *benchenv.Harness, rows int) *benchEnv {
	e := &benchEnv{h: h, legs: map[string]*mysql.Config{}}
	e.sigil = benchenv.StartSigil(h)
	if e.sigil.Daemon.MySQLAddr == "" {
		h.Fatalf("sigild did not print its MySQL listener:\n%s", e.sigil.Daemon.Stdout())
	}
	server := e.sigil.SignServerCert("mysql")
	directCA, directCert, directKey := benchenv.DirectClientCert(h, benchDBUser)
	items := make([]string, rows)
	for i := range items {
		items[i] = fmt.Sprintf("item-%d", i+1)
	}
	h.Logf("starting MariaDB with %d rows ...", rows)
	e.my = testenv.StartMariaDB(h, testenv.MariaDBConfig{
		ServerCertPEM: server.CertPEM,
		ServerKeyPEM:  server.KeyPEM,
		CACertPEM:     append(append([]byte{}, server.CAPEM...), directCA...),
		Database:      benchDBName,
		Users:         []testenv.MariaDBUser{{Name: benchDBUser, Privileges: []string{"SELECT"}}},
		Items:         items,
	})
	// testenv keeps a general query log for the e2e tests' assertions;
	// here it would be server work common to all legs, hiding part of
	// the gateway's share.
	e.my.SQL(h, "", "SET GLOBAL general_log = 0")

	e.legs[benchenv.LegDirect] = e.tlsLeg(e.my.Addr, directCert, directKey, server.CAPEM)

	e.sigil.Ctl("db", "add", benchDatabase, "--protocol", "mysql", "--uri", e.my.Addr, "--labels", "env=bench")
	e.sigil.Ctl("create", "-f", h.WriteFile("roles.yaml", []byte(fmt.Sprintf(`kind: role
version: v1
metadata: {name: my-bench}
spec:
  allow:
    databases:
      labels: {env: [bench]}
      db_users: [%s]
      db_names: [%s]
      statements: read
`, benchDBUser, benchDBName))))
	home := e.sigil.SignUp(benchUser, benchPassword, "my-bench")
	certPEM, keyPEM, caPEM := e.sigil.DBCert(ctx, home, benchDatabase, benchDBUser, benchDBName)
	e.legs[benchenv.LegGateway] = e.tlsLeg(e.sigil.Daemon.MySQLAddr, certPEM, keyPEM, caPEM)
	e.legs[benchenv.LegTunnel] = e.leg(e.sigil.StartTunnel(ctx, home, benchDatabase, benchDBUser, benchDBName), nil)
	return e
}

// leg is the driver configuration for addr; tlsCfg nil means plain TCP.
func (e *benchEnv) leg(addr string, tlsCfg *tls.Config) *mysql.Config {
	cfg := mysql.NewConfig()
	cfg.User = benchDBUser
	cfg.Net = "tcp"
	cfg.Addr = addr
	cfg.DBName = benchDBName
	cfg.TLS = tlsCfg
	cfg.Timeout = 10 * time.Second
	// Server-side prepared statements for queries with arguments.
	cfg.InterpolateParams = false
	return cfg
}

// tlsLeg is TLS 1.3 with a P-256 client certificate, verifying the
// server as localhost against caPEM.
func (e *benchEnv) tlsLeg(addr string, certPEM, keyPEM, caPEM []byte) *mysql.Config {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		e.h.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		e.h.Fatalf("no CA certificate in %q", caPEM)
	}
	return e.leg(addr, &tls.Config{
		Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13,
	})
}
