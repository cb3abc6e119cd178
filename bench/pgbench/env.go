package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
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
	h      *harness
	daemon *testenv.Daemon
	pg     *testenv.Postgres
	legs   map[string]conn
	tunnel *exec.Cmd
}

func (e *benchEnv) ctl(args ...string) string {
	r := testenv.Run(e.h, nil, "", "sigilctl", append([]string{"--data-dir", e.daemon.DataDir}, args...)...)
	if r.ExitCode != 0 {
		e.h.Fatalf("sigilctl %v: exit %d\n%s%s", args, r.ExitCode, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

func (e *benchEnv) writeFile(name string, data []byte) string {
	path := filepath.Join(e.h.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		e.h.Fatal(err)
	}
	return path
}

// setUp starts everything; pgbench init takes most of the time.
func setUp(ctx context.Context, h *harness, pgbenchBin string, scale int) *benchEnv {
	e := &benchEnv{h: h, legs: map[string]conn{}}
	e.daemon = testenv.StartDaemon(h, "")
	gwHost, gwPort, _ := strings.Cut(e.daemon.Addr, ":")
	tlsCA := e.writeFile("tls-ca.pem", []byte(e.ctl("auth", "export", "--type", "tls-ca")))

	certDir := h.TempDir()
	e.ctl("auth", "sign", "--format", "postgres", "--host", "localhost,127.0.0.1", "--out", certDir)
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(certDir, name))
		if err != nil {
			h.Fatal(err)
		}
		return b
	}
	dbCA := read("ca.crt")
	// The direct leg needs a client certificate for "bench" that the
	// server accepts; the DB CA's key stays inside sigild, so a CA of our
	// own is trusted next to it. Same key type (P-256) and TLS 1.3 as the
	// gateway's upstream leg, so the handshake costs match.
	directCA, directCert, directKey := directClientCert(h, benchDBUser)
	e.pg = testenv.StartPostgres(h, testenv.PostgresConfig{
		ServerCertPEM: read("server.crt"),
		ServerKeyPEM:  read("server.key"),
		CACertPEM:     append(append([]byte{}, dbCA...), directCA...),
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

	e.legs[legDirect] = conn{
		host: "127.0.0.1", port: strconv.Itoa(e.pg.Port), sslMode: "verify-full",
		cert: e.writeFile("direct.crt", directCert), key: e.writeFile("direct.key", directKey), rootCert: e.writeFile("db-ca.pem", dbCA),
	}

	e.ctl("db", "add", benchDatabase, "--protocol", "postgres", "--uri", e.pg.Addr, "--labels", "env=bench")
	e.ctl("create", "-f", e.writeFile("roles.yaml", []byte(fmt.Sprintf(`kind: role
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
	home := e.signUp(tlsCA)
	certPEM, keyPEM, caPEM := e.dbCert(ctx, home)
	e.legs[legGateway] = conn{
		host: gwHost, port: gwPort, sslMode: "verify-full",
		cert: e.writeFile("gw.crt", certPEM), key: e.writeFile("gw.key", keyPEM), rootCert: e.writeFile("gw-ca.pem", caPEM),
	}
	e.legs[legTunnel] = e.startTunnel(ctx, home)
	return e
}

// signUp creates the Sigil user and logs it in; it returns its SIGIL_HOME.
func (e *benchEnv) signUp(tlsCA string) string {
	var signup struct{ Token string }
	out := e.ctl("users", "add", benchUser, "--roles", "pg-bench", "--format", "json")
	if err := json.Unmarshal([]byte(out), &signup); err != nil {
		e.h.Fatalf("users add output: %v\n%s", err, out)
	}
	home := e.h.TempDir()
	for _, args := range [][]string{
		{"signup", signup.Token, "--proxy", e.daemon.Addr, "--ca-file", tlsCA, "--password-stdin"},
		{"login", "--proxy", e.daemon.Addr, "--user", benchUser, "--ca-file", tlsCA, "--password-stdin"},
	} {
		if r := testenv.Run(e.h, []string{"SIGIL_HOME=" + home}, benchPassword+"\n", "sigil", args...); r.ExitCode != 0 {
			e.h.Fatalf("sigil %s: %s", args[0], r.Stderr)
		}
	}
	return home
}

// dbCert issues a routed database certificate, as "sigil db login" does.
func (e *benchEnv) dbCert(ctx context.Context, home string) (certPEM, keyPEM, caPEM []byte) {
	prof, err := client.CurrentProfile(home)
	if err != nil {
		e.h.Fatal(err)
	}
	clt, err := client.NewFromIdentity(prof.Identity, 30*time.Second)
	if err != nil {
		e.h.Fatal(err)
	}
	defer clt.Close()
	key, err := client.GenerateKey()
	if err != nil {
		e.h.Fatal(err)
	}
	pub, err := client.MarshalPublicKeyDER(key)
	if err != nil {
		e.h.Fatal(err)
	}
	resp, err := clt.Databases.GenerateDatabaseCert(ctx, connect.NewRequest(&sigilv1.GenerateDatabaseCertRequest{
		Database: benchDatabase, DbUser: benchDBUser, DbName: benchDBName, TlsPublicKey: pub,
	}))
	if err != nil {
		e.h.Fatalf("GenerateDatabaseCert: %v", err)
	}
	keyPEM, err = client.MarshalPrivateKeyPEM(key)
	if err != nil {
		e.h.Fatal(err)
	}
	return resp.Msg.TlsCertPem, keyPEM, resp.Msg.TlsCaPem
}

// startTunnel runs "sigil proxy db --tunnel" until the harness closes.
func (e *benchEnv) startTunnel(ctx context.Context, home string) conn {
	ctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(ctx, filepath.Join(testenv.BinDir(e.h), "sigil"), "proxy", "db", benchDatabase, "--tunnel",
		"--db-user", benchDBUser, "--db-name", benchDBName)
	cmd.Env = append(os.Environ(), "SIGIL_HOME="+home)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		e.h.Fatal(err)
	}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		e.h.Fatal(err)
	}
	e.tunnel = cmd
	e.h.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if _, after, ok := strings.Cut(sc.Text(), "listening on "); ok {
				select {
				case addrCh <- strings.TrimSpace(after):
				default:
				}
			}
		}
	}()
	select {
	case addr := <-addrCh:
		host, port, _ := strings.Cut(addr, ":")
		return conn{host: host, port: port, sslMode: "disable"}
	case <-time.After(30 * time.Second):
		e.h.Fatalf("the tunnel did not start:\n%s", stderr.String())
	}
	return conn{}
}

// directClientCert makes a throwaway CA and a client certificate for
// dbUser signed by it; all PEM.
func directClientCert(h *harness, dbUser string) (caPEM, certPEM, keyPEM []byte) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		h.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sigil pgbench direct CA"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		h.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		h.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		h.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: dbUser},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		h.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		h.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
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
