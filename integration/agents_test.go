package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/integration/testenv"
)

// agentRoles: agent-writer is written for agents (each write waits for a
// person); approver may review every agent's writes.
const agentRoles = `kind: role
version: v1
metadata: {name: agent-writer}
spec:
  allow:
    databases:
      labels: {env: [dev]}
      db_users: [writer]
      db_names: [app]
      statements: write
      write_approval: true
---
kind: role
version: v1
metadata: {name: approver}
spec:
  allow:
    rules:
      - {resources: [approvals], verbs: [list, read, update]}
      - {resources: [audit], verbs: [list]}
`

var approvalID = regexp.MustCompile(`approval ([0-9a-f-]{36})`)

// botProcess is "sigil bot start" serving a database tunnel.
type botProcess struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	addr   string
	logs   *lockedLog
	done   chan struct{}
	err    error
}

func startBot(t *testing.T, dest string, args ...string) *botProcess {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b := &botProcess{cancel: cancel, logs: &lockedLog{}, done: make(chan struct{})}
	b.cmd = exec.CommandContext(ctx, filepath.Join(testenv.BinDir(t), "sigil"), append([]string{"bot", "start", "--dest", dest, "--debug"}, args...)...)
	stdout, err := b.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	b.cmd.Stderr = b.logs
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		b.err = b.cmd.Wait()
		close(b.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-b.done
	})
	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			b.logs.Write([]byte("stdout: " + sc.Text() + "\n"))
			if _, after, ok := strings.Cut(sc.Text(), "listening on "); ok {
				addrCh <- strings.TrimSpace(after)
			}
		}
	}()
	select {
	case b.addr = <-addrCh:
	case <-b.done:
		t.Fatalf("sigil bot start exited: %v\n%s", b.err, b.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("the bot's tunnel did not start:\n%s", b.logs.String())
	}
	return b
}

// TestAgentWriteApprovals: alice makes a token for her agent; the agent
// joins with "sigil bot start", which serves a tunnel; its SELECT works and
// is audited as the agent on behalf of alice; its INSERT is refused with
// an approval id; bob approves; the identical INSERT passes once, a second
// one and a different one are refused; renewals move the generation on;
// a copied identity used to renew locks the agent. Real binaries, real
// PostgreSQL.
func TestAgentWriteApprovals(t *testing.T) {
	t.Parallel()
	e := startPgEnv(t)
	e.createYAML(agentRoles)
	aliceHome := e.addUser("alice", "pg-write")
	bobHome := e.addUser("bob", "approver")
	sigil := func(env []string, args ...string) testenv.Result {
		t.Helper()
		return testenv.Run(t, env, "", "sigil", args...)
	}
	must := func(env []string, args ...string) testenv.Result {
		t.Helper()
		r := sigil(env, args...)
		if r.ExitCode != 0 {
			t.Fatalf("sigil %s: exit %d\n%s%s", strings.Join(args, " "), r.ExitCode, r.Stdout, r.Stderr)
		}
		return r
	}
	alice, bob := []string{"SIGIL_HOME=" + aliceHome}, []string{"SIGIL_HOME=" + bobHome}

	tok := must(alice, "agent", "token", "--name", "copilot", "--roles", "agent-writer", "--format", "json")
	var token struct {
		Token         string `json:"token"`
		Proxy         string `json:"proxy"`
		CAFingerprint string `json:"ca_fingerprint"`
	}
	if err := json.Unmarshal([]byte(tok.Stdout), &token); err != nil || token.Token == "" || !strings.HasPrefix(strings.ToUpper(token.CAFingerprint), "SHA256:") {
		t.Fatalf("agent token output: %v\n%s", err, tok.Stdout)
	}
	// Bob's token for the same name works until alice's agent joins.
	var bobToken struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(must(bob, "agent", "token", "--name", "copilot", "--roles", "agent-writer", "--format", "json").Stdout), &bobToken); err != nil {
		t.Fatal(err)
	}

	// Join (oneshot), then a restart renews: generation 1, then 2. A bad
	// fingerprint is refused before the token is spent.
	dest := filepath.Join(t.TempDir(), "copilot")
	none := []string{"SIGIL_HOME=" + t.TempDir()}
	if r := sigil(none, "bot", "start", "--oneshot", "--token", token.Token, "--proxy", token.Proxy, "--ca-fingerprint", "SHA256:00", "--dest", dest); r.ExitCode == 0 || !strings.Contains(r.Stderr, "not the expected") {
		t.Fatalf("join with a wrong CA fingerprint: %+v", r)
	}
	j := must(none, "bot", "start", "--oneshot", "--token", token.Token, "--proxy", token.Proxy, "--ca-fingerprint", token.CAFingerprint, "--dest", dest)
	if !strings.Contains(j.Stdout, `agent "copilot" (on behalf of alice)`) || !strings.Contains(j.Stdout, "generation 1") {
		t.Fatalf("join output:\n%s", j.Stdout)
	}
	if r := sigil(none, "bot", "start", "--oneshot", "--token", token.Token, "--proxy", token.Proxy, "--ca-fingerprint", token.CAFingerprint, "--dest", t.TempDir()); r.ExitCode == 0 || !strings.Contains(r.Stderr, "already used") {
		t.Fatalf("second join with the same token: %+v", r)
	}
	// Nobody else's token takes over alice's agent.
	if r := sigil(none, "bot", "start", "--oneshot", "--token", bobToken.Token, "--proxy", token.Proxy, "--ca-fingerprint", token.CAFingerprint, "--dest", t.TempDir()); r.ExitCode == 0 || !strings.Contains(r.Stderr, "acts for someone else") {
		t.Fatalf("bob's token for alice's agent name: %+v", r)
	}
	if r := sigil(bob, "agent", "token", "--name", "copilot", "--roles", "agent-writer"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "is not yours") {
		t.Fatalf("bob's new token for alice's agent name: %+v", r)
	}
	if r := must(none, "bot", "start", "--oneshot", "--dest", dest); !strings.Contains(r.Stdout, "generation 2") {
		t.Fatalf("restart did not renew to generation 2:\n%s", r.Stdout)
	}
	if st := must(none, "--identity", dest, "status", "--format", "json"); !strings.Contains(st.Stdout, `"copilot"`) || !strings.Contains(st.Stdout, `"agent"`) ||
		!strings.Contains(st.Stdout, `"on_behalf_of": "alice"`) || !strings.Contains(st.Stdout, `"generation": 2`) {
		t.Fatalf("status with --identity:\n%s", st.Stdout)
	}

	// The long-running bot with a tunnel; 45s certificates renew at 30s.
	bot := startBot(t, dest, "--db-tunnel", "pg1:0:writer:app", "--cert-ttl", "45s")
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://writer@%s/app?sslmode=disable", bot.addr))
	if err != nil {
		t.Fatalf("connecting through the bot's tunnel: %v\n%s", err, bot.logs.String())
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil || n == 0 {
		t.Fatalf("agent SELECT: %d, %v", n, err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		ev := findEvent(e.events(audit.EventDBQuery, "copilot"), func(ev *audit.Event) bool {
			return strings.Contains(ev.Statement, "SELECT count(*) FROM items")
		})
		if ev == nil {
			return errors.New("no db.query event for the agent's SELECT")
		}
		if ev.Identity.GetKind() != "agent" || ev.Identity.GetOnBehalfOf() != "alice" {
			return testenv.Fatal(fmt.Errorf("agent query identity = %v", ev.Identity))
		}
		return nil
	})

	// Writes wait for a person.
	insert := "INSERT INTO items VALUES (900, 'by copilot')"
	refusedWith := func(stmt string) string {
		t.Helper()
		_, err := conn.Exec(ctx, stmt)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Fatalf("%s: %v, want 42501", stmt, err)
		}
		m := approvalID.FindStringSubmatch(pgErr.Message)
		if m == nil {
			t.Fatalf("refusal names no approval id: %s", pgErr.Message)
		}
		return m[1]
	}
	id := refusedWith(insert)
	if again := refusedWith(insert); again != id {
		t.Fatalf("the same pending write got a second approval: %s, %s", id, again)
	}
	if ls := must(bob, "approval", "ls"); !strings.Contains(ls.Stdout, id[:8]) || !strings.Contains(ls.Stdout, "copilot") {
		t.Fatalf("bob's approval list lacks %s:\n%s", id, ls.Stdout)
	}
	must(bob, "approval", "review", id, "--approve", "--reason", "ok for ticket 7")

	// Once: the identical statement runs, a second run and another
	// statement are refused.
	if tag, err := conn.Exec(ctx, insert); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("approved INSERT: %v %v", tag, err)
	}
	second := refusedWith(insert)
	if second == id {
		t.Fatalf("the approval %s was used twice", id)
	}
	refusedWith("INSERT INTO items VALUES (901, 'not approved')")
	var name string
	if err := conn.QueryRow(ctx, "SELECT name FROM items WHERE id = 900").Scan(&name); err != nil || name != "by copilot" {
		t.Fatalf("row written by the approved INSERT: %q %v", name, err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		ev := findEvent(e.events(audit.EventDBQuery, "copilot"), func(ev *audit.Event) bool {
			return strings.Contains(ev.Statement, "INSERT INTO items VALUES (900")
		})
		if ev == nil {
			return errors.New("no db.query event for the approved INSERT")
		}
		if ev.Details["approval_id"] != id || ev.Details["approved_by"] != "bob" || ev.Identity.GetOnBehalfOf() != "alice" {
			return testenv.Fatal(fmt.Errorf("approved INSERT event: identity %v details %v", ev.Identity, ev.Details))
		}
		return nil
	})
	// Bob approves the second one in the web console: the statement runs
	// once more.
	b := testenv.NewBrowser(t, e.readCA())
	page := b.Submit(b.Get("https://"+e.d.Addr+"/web/login"), map[string]string{"user": "bob", "password": alicePassword})
	page = b.Get(page.URL.Scheme + "://" + page.URL.Host + "/web/writes")
	if !strings.Contains(page.Body, "INSERT INTO items VALUES (900") || !strings.Contains(page.Body, "copilot") {
		t.Fatalf("the console's Agent writes page lacks the pending write (%s, %d):\n%s", page.URL, page.Status, page.Body)
	}
	var approved bool
	for _, f := range page.Forms {
		if strings.HasSuffix(f.Action, "/web/writes/"+second+"/review") {
			vals := f.Values
			vals.Set("decision", "approve")
			vals.Set("reason", "from the console")
			if res := b.Post(page, f, vals); res.Status != http.StatusOK {
				t.Fatalf("console approval: %d\n%s", res.Status, res.Body)
			}
			approved = true
		}
	}
	if !approved {
		t.Fatalf("no review form for %s on /web/writes:\n%s", second, page.Body)
	}
	// The agent's live session says on whose behalf it runs.
	if sessions := b.Get(page.URL.Scheme + "://" + page.URL.Host + "/web/sessions"); !strings.Contains(sessions.Body, "copilot") || !strings.Contains(sessions.Body, "on behalf of alice") {
		t.Fatalf("the console's sessions page does not show copilot acting for alice:\n%s", sessions.Body)
	}
	if _, err := conn.Exec(ctx, "DELETE FROM items WHERE id = 900"); err == nil {
		t.Fatal("a DELETE ran on the INSERT's approval")
	}
	if tag, err := conn.Exec(ctx, "INSERT INTO items VALUES (900, 'by copilot') ON CONFLICT DO NOTHING"); err == nil {
		t.Fatalf("a different statement ran on the INSERT's approval: %v", tag)
	}
	if _, err := conn.Exec(ctx, "DELETE FROM items WHERE id = 900"); err == nil {
		t.Fatal("DELETE without approval ran")
	}
	if _, err := conn.Exec(ctx, "  insert into ITEMS values (900, 'by copilot')"); err == nil {
		t.Fatal("the console-approved INSERT ran although the row exists (primary key)")
	} else if pgErr := (*pgconn.PgError)(nil); !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		// Same statement up to case and whitespace: the approval matched,
		// and PostgreSQL itself refused the duplicate key.
		t.Fatalf("the console-approved INSERT (normalised): %v, want 23505 from PostgreSQL", err)
	}
	if r := e.mustCtl("audit", "search", "--kind", "agent", "--since", "1h", "--format", "json"); !strings.Contains(r.Stdout, `"copilot"`) || strings.Contains(r.Stdout, `"user":"bob"`) {
		t.Fatalf("audit search --kind agent:\n%s", r.Stdout)
	}

	// The running bot renewed at start (generation 3), then renews on its
	// own (45s certificates, renewed at 30s) and the tunnel keeps working.
	generation := func() uint64 {
		var bots []struct {
			Name       string `json:"name"`
			Generation uint64 `json:"generation"`
		}
		if err := json.Unmarshal([]byte(e.mustCtl("bots", "ls", "--format", "json").Stdout), &bots); err != nil || len(bots) != 1 || bots[0].Name != "copilot" {
			t.Fatalf("sigilctl bots ls: %v %+v", err, bots)
		}
		return bots[0].Generation
	}
	if g := generation(); g != 3 {
		t.Fatalf("generation after the bot started = %d, want 3", g)
	}
	testenv.Eventually(t, 60*time.Second, func() error {
		if g := generation(); g < 4 {
			return fmt.Errorf("generation still %d", g)
		}
		return nil
	})
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil {
		t.Fatalf("SELECT after the renewal: %v", err)
	}

	// A copy of the identity renews first: the original's next renewal
	// presents a stale generation and the agent is locked.
	bot.cancel()
	<-bot.done
	copyDir := filepath.Join(t.TempDir(), "stolen")
	if err := os.CopyFS(copyDir, os.DirFS(dest)); err != nil {
		t.Fatal(err)
	}
	must(none, "bot", "start", "--oneshot", "--dest", copyDir)
	r := sigil(none, "bot", "start", "--oneshot", "--dest", dest)
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "copied") || !strings.Contains(r.Stderr, "locked") {
		t.Fatalf("renewal of the original after the copy renewed: %+v", r)
	}
	locks := e.mustCtl("locks", "ls")
	if !strings.Contains(locks.Stdout, "copilot") {
		t.Fatalf("no lock for copilot:\n%s", locks.Stdout)
	}
	if r := sigil(none, "--identity", copyDir, "db", "ls"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "locked") {
		t.Fatalf("the locked agent still reaches the API: %+v", r)
	}
}
