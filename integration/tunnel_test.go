package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sigilhq/sigil/integration/testenv"
)

// TestSigilDBCommands runs "sigil db login/env/connect" with the real psql
// against a real PostgreSQL behind the gateway.
func TestSigilDBCommands(t *testing.T) {
	e := startPgEnv(t)
	home := e.addUser("alice", "pg-read")
	env := []string{"SIGIL_HOME=" + home}

	r := testenv.Run(t, env, "", "sigil", "db", "ls")
	if r.ExitCode != 0 || !strings.Contains(r.Stdout, "pg1") || !strings.Contains(r.Stdout, "reader") {
		t.Fatalf("db ls: %+v", r)
	}
	r = testenv.Run(t, env, "", "sigil", "db", "connect", "pg1", "--db-user", "reader", "--db-name", "app", "--",
		"-X", "-A", "-t", "-c", "select string_agg(name, ',' order by id) from items")
	if r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "alpha,beta,gamma" {
		t.Fatalf("db connect: %+v\nsigild:\n%s", r, e.d.Stderr())
	}
	// A write as the read-only db user fails in psql, and sigil exits as psql did.
	r = testenv.Run(t, env, "", "sigil", "db", "connect", "pg1", "--", "-X", "-v", "ON_ERROR_STOP=1", "-c", "delete from items")
	if r.ExitCode == 0 {
		t.Fatalf("a delete as reader succeeded: %+v", r)
	}

	// db env feeds any libpq client.
	r = testenv.Run(t, env, "", "sigil", "db", "env", "pg1")
	if r.ExitCode != 0 || !strings.Contains(r.Stdout, "export PGSSLMODE=verify-full") {
		t.Fatalf("db env: %+v", r)
	}
	cmd := exec.Command("sh", "-c", r.Stdout+"\npsql -X -A -t -c 'select count(*) from items'")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "3" {
		t.Fatalf("psql with db env: %v\n%s", err, out)
	}
}

// TestTunnelPoolAcrossRenewal keeps 20 pgx connections open through
// "sigil proxy db --tunnel" while the tunnel renews its certificate, and
// checks that all of them, and new ones, keep working.
func TestTunnelPoolAcrossRenewal(t *testing.T) {
	e := startPgEnv(t)
	home := e.addUser("alice", "pg-read")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A 20s certificate: the tunnel renews when a third is left, about
	// 13s in, while the pool keeps querying.
	addr, logs := startTunnelProxy(t, ctx, home, "pg1", "--db-user", "reader", "--db-name", "app", "--cert-ttl", "20s")
	host, port, _ := strings.Cut(addr, ":")
	dsn := fmt.Sprintf("postgres://reader@%s:%s/app?sslmode=disable&connect_timeout=10", host, port)

	query := func(c *pgx.Conn) error {
		qctx, qcancel := context.WithTimeout(ctx, 20*time.Second)
		defer qcancel()
		var names string
		if err := c.QueryRow(qctx, "select string_agg(name, ',' order by id) from items").Scan(&names); err != nil {
			return err
		}
		if names != "alpha,beta,gamma" {
			return fmt.Errorf("got %q", names)
		}
		return nil
	}
	const poolSize = 20
	conns := make([]*pgx.Conn, poolSize)
	for i := range conns {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatalf("connection %d through the tunnel: %v\ntunnel:\n%s\nsigild:\n%s", i, err, logs.String(), e.d.Stderr())
		}
		defer c.Close(context.Background())
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
				t.Fatalf("%s: connection %d: %v\ntunnel:\n%s", stage, i, err, logs.String())
			}
		}
	}
	runAll("before renewal")
	// Keep the pool busy until the tunnel reports a renewal.
	testenv.Eventually(t, 90*time.Second, func() error {
		runAll("during renewal")
		if !strings.Contains(logs.String(), "Renewed the database certificate") {
			return fmt.Errorf("no renewal yet")
		}
		return nil
	})
	runAll("after renewal")
	fresh, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("new connection after renewal: %v\ntunnel:\n%s", err, logs.String())
	}
	defer fresh.Close(context.Background())
	if err := query(fresh); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Fatalf("tunnel logged errors:\n%s", logs.String())
	}
}

// startTunnelProxy runs "sigil proxy db DATABASE --tunnel ARGS..." as the
// user of home until ctx ends (or the test does) and returns the address
// it listens on and its log.
func startTunnelProxy(t *testing.T, ctx context.Context, home, database string, args ...string) (string, *lockedLog) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	proxy := exec.CommandContext(ctx, filepath.Join(testenv.BinDir(t), "sigil"), append([]string{"proxy", "db", database, "--tunnel"}, args...)...)
	proxy.Env = append(os.Environ(), "SIGIL_HOME="+home)
	stdout, err := proxy.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedLog{}
	proxy.Stderr = logs
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		proxy.Wait()
	})
	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if _, after, ok := strings.Cut(sc.Text(), "listening on "); ok {
				addrCh <- strings.TrimSpace(after)
			}
		}
	}()
	select {
	case addr := <-addrCh:
		return addr, logs
	case <-time.After(30 * time.Second):
		t.Fatalf("the tunnel did not start:\n%s", logs.String())
		return "", nil
	}
}

type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
