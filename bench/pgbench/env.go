package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/sigilhq/sigil/bench/internal/benchenv"
	"github.com/sigilhq/sigil/integration/testenv"
)

const (
	benchDBUser   = "bench"
	benchDBName   = "bench"
	benchDatabase = "pgbench1"
	benchUser     = "benchuser"
	benchPassword = "correct horse battery staple"
)

// conn is how pgbench reaches one leg, as libpq environment variables.
type conn struct {
	host, port string
	sslMode    string
	cert, key  string
	rootCert   string
}

func (c conn) env() []string {
	env := []string{
		"PGHOST=" + c.host, "PGPORT=" + c.port, "PGUSER=" + benchDBUser, "PGDATABASE=" + benchDBName,
		"PGSSLMODE=" + c.sslMode, "PGCONNECT_TIMEOUT=10", "PGAPPNAME=pgbench",
	}
	if c.cert != "" {
		env = append(env, "PGSSLCERT="+c.cert, "PGSSLKEY="+c.key, "PGSSLROOTCERT="+c.rootCert)
	}
	return env
}

// benchEnv is sigild, PostgreSQL with the pgbench tables, and the three
// ways to reach them.
type benchEnv struct {
	h     *benchenv.Harness
	sigil *benchenv.Sigil
	pg    *testenv.Postgres
	legs  map[string]conn
}

// setUp starts everything; pgbench init takes most of the time.
func setUp(ctx context.Context, h *benchenv.Harness, pgbenchBin string, scale int) *benchEnv {
	e := &benchEnv{h: h, legs: map[string]conn{}}
	e.sigil = benchenv.StartSigil(h)
	gwHost, gwPort, _ := strings.Cut(e.sigil.Daemon.Addr, ":")

	server := e.sigil.SignServerCert("postgres")
	directCA, directCert, directKey := benchenv.DirectClientCert(h, benchDBUser)
	e.pg = testenv.StartPostgres(h, testenv.PostgresConfig{
		ServerCertPEM: server.CertPEM,
		ServerKeyPEM:  server.KeyPEM,
		CACertPEM:     append(append([]byte{}, server.CAPEM...), directCA...),
		Database:      benchDBName,
		Users:         []testenv.PostgresUser{{Name: benchDBUser}},
		Items:         []string{},
	})
	// testenv logs every statement and connection for the e2e tests'
	// assertions; here that would be server work common to all legs,
	// hiding part of the gateway's share.
	for _, sql := range []string{
		"ALTER SYSTEM SET log_statement = 'none'",
		"ALTER SYSTEM SET log_connections = off",
		"ALTER SYSTEM SET log_disconnections = off",
		"SELECT pg_reload_conf()",
	} {
		e.pg.Psql(h, "postgres", sql)
	}
	h.Logf("pgbench -i -s %d ...", scale)
	initCmd := exec.CommandContext(ctx, pgbenchBin, "-i", "-q", "-s", strconv.Itoa(scale), benchDBName)
	initCmd.Env = append(os.Environ(), "PGHOST="+e.pg.SocketDir, "PGPORT="+strconv.Itoa(e.pg.Port), "PGUSER=postgres")
	if out, err := initCmd.CombinedOutput(); err != nil {
		h.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	e.pg.Psql(h, benchDBName, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO "+benchDBUser)

	e.legs[benchenv.LegDirect] = conn{
		host: "127.0.0.1", port: strconv.Itoa(e.pg.Port), sslMode: "verify-full",
		cert: h.WriteFile("direct.crt", directCert), key: h.WriteFile("direct.key", directKey), rootCert: h.WriteFile("db-ca.pem", server.CAPEM),
	}

	e.sigil.Ctl("db", "add", benchDatabase, "--protocol", "postgres", "--uri", e.pg.Addr, "--labels", "env=bench")
	e.sigil.Ctl("create", "-f", h.WriteFile("roles.yaml", []byte(fmt.Sprintf(`kind: role
version: v1
metadata: {name: pg-bench}
spec:
  allow:
    databases:
      labels: {env: [bench]}
      db_users: [%s]
      db_names: [%s]
      statements: read
`, benchDBUser, benchDBName))))
	home := e.sigil.SignUp(benchUser, benchPassword, "pg-bench")
	certPEM, keyPEM, caPEM := e.sigil.DBCert(ctx, home, benchDatabase, benchDBUser, benchDBName)
	e.legs[benchenv.LegGateway] = conn{
		host: gwHost, port: gwPort, sslMode: "verify-full",
		cert: h.WriteFile("gw.crt", certPEM), key: h.WriteFile("gw.key", keyPEM), rootCert: h.WriteFile("gw-ca.pem", caPEM),
	}
	tunnelHost, tunnelPort, _ := strings.Cut(e.sigil.StartTunnel(ctx, home, benchDatabase, benchDBUser, benchDBName), ":")
	e.legs[benchenv.LegTunnel] = conn{host: tunnelHost, port: tunnelPort, sslMode: "disable"}
	return e
}
