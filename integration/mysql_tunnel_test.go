package integration

import (
	"context"
	"database/sql"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/sigilhq/sigil/integration/testenv"
)

// TestMySQLSigilDBCommands runs "sigil db connect/env" with the real
// mariadb client against a real MariaDB behind the gateway.
func TestMySQLSigilDBCommands(t *testing.T) {
	e := startMyEnv(t)
	home := e.addUser("alice", "my-read")
	env := []string{"SIGIL_HOME=" + home}

	r := testenv.Run(t, env, "", "sigil", "db", "connect", "my1", "--db-user", "reader", "--db-name", "app", "--",
		"--batch", "--skip-column-names", "-e", "select name from items order by id")
	if r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "alpha\nbeta\ngamma" {
		t.Fatalf("db connect: %+v\nsigild:\n%s", r, e.d.Stderr())
	}
	// A write as the read-only db user is refused, and sigil exits as
	// mariadb did.
	r = testenv.Run(t, env, "", "sigil", "db", "connect", "my1", "--", "-e", "delete from items")
	if r.ExitCode != 1 || !strings.Contains(r.Stderr, "ERROR") {
		t.Fatalf("a delete as reader: %+v", r)
	}

	// db env points the mariadb client at the login's option file, TLS
	// options included.
	r = testenv.Run(t, env, "", "sigil", "db", "env", "my1")
	if r.ExitCode != 0 || !strings.Contains(r.Stdout, "export MYSQL_HOME=") {
		t.Fatalf("db env: %+v", r)
	}
	cmd := exec.Command("sh", "-c", r.Stdout+"\nmariadb --batch --skip-column-names -e 'select count(*) from items'")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "3" {
		t.Fatalf("mariadb with db env: %v\n%s\nsigild:\n%s", err, out, e.d.Stderr())
	}
	cmd = exec.Command("sh", "-c", r.Stdout+"\nmariadb --print-defaults")
	if out, err = cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "--ssl-verify-server-cert") || !strings.Contains(string(out), "--user=reader") {
		t.Fatalf("option file not read: %v\n%s", err, out)
	}
}

// TestMySQLTunnelPoolAcrossRenewal keeps 10 go-sql-driver connections
// open through "sigil proxy db my1 --tunnel" while the tunnel renews its
// certificate, and checks that all of them, and new ones, keep working.
func TestMySQLTunnelPoolAcrossRenewal(t *testing.T) {
	e := startMyEnv(t)
	home := e.addUser("alice", "my-read")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A 20s certificate: the tunnel renews when a third is left, about
	// 13s in, while the pool keeps querying.
	addr, logs := startTunnelProxy(t, ctx, home, "my1", "--db-user", "reader", "--db-name", "app", "--cert-ttl", "20s")

	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr, cfg.DBName = "reader", "tcp", addr, "app"
	cfg.Timeout = 10 * time.Second
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	const poolSize = 10
	db.SetMaxOpenConns(poolSize + 1)
	db.SetMaxIdleConns(poolSize + 1)

	query := func(q interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}) error {
		qctx, qcancel := context.WithTimeout(ctx, 20*time.Second)
		defer qcancel()
		var names string
		if err := q.QueryRowContext(qctx, "select group_concat(name order by id) from items").Scan(&names); err != nil {
			return err
		}
		if names != "alpha,beta,gamma" {
			return fmt.Errorf("got %q", names)
		}
		return nil
	}
	// Held connections: the same ten sessions must span the renewal.
	conns := make([]*sql.Conn, poolSize)
	for i := range conns {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatalf("connection %d through the tunnel: %v\ntunnel:\n%s\nsigild:\n%s", i, err, logs.String(), e.d.Stderr())
		}
		defer c.Close()
		conns[i] = c
	}
	runAll := func(stage string) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, poolSize)
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = query(c)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("%s: connection %d: %v\ntunnel:\n%s\nsigild:\n%s", stage, i, err, logs.String(), e.d.Stderr())
			}
		}
	}
	runAll("before renewal")
	testenv.Eventually(t, 90*time.Second, func() error {
		runAll("during renewal")
		if !strings.Contains(logs.String(), "Renewed the database certificate") {
			return fmt.Errorf("no renewal yet")
		}
		return nil
	})
	runAll("after renewal")
	// A new connection uses the renewed certificate.
	fresh, err := db.Conn(ctx)
	if err != nil {
		t.Fatalf("new connection after renewal: %v\ntunnel:\n%s", err, logs.String())
	}
	defer fresh.Close()
	if err := query(fresh); err != nil {
		t.Fatal(err)
	}
	// The mariadb command the tunnel prints works as printed.
	_, port, _ := strings.Cut(addr, ":")
	out, err := exec.Command("mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", port, "-u", "reader", "--skip-ssl", "app",
		"--batch", "--skip-column-names", "-e", "select count(*) from items").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "3" {
		t.Fatalf("mariadb through the tunnel: %v\n%s", err, out)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("tunnel logged errors:\n%s", logs.String())
	}
}
