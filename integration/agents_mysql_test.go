package integration

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/integration/testenv"
)

// TestAgentWriteApprovalsMySQL is TestAgentWriteApprovals against MariaDB:
// alice's agent joins with "sigil bot start" serving a MySQL tunnel; its
// SELECT runs, audited as the agent on behalf of alice; its writes, over
// the text protocol (COM_QUERY) and as prepared statements
// (COM_STMT_PREPARE/EXECUTE), are refused with error 1142 naming an
// approval; once bob approves, the same statement (with the same bound
// values) runs once, and the next one asks for a new approval. Real
// binaries, real MariaDB.
func TestAgentWriteApprovalsMySQL(t *testing.T) {
	t.Parallel()
	e := startMyEnv(t)
	// agent-writer (db user writer, db name app, env=dev, write_approval)
	// fits my1 as it fits pg1.
	e.createYAML(agentRoles)
	aliceHome := e.addUser("alice", "my-write")
	bobHome := e.addUser("bob", "approver")
	must := func(env []string, args ...string) testenv.Result {
		t.Helper()
		r := testenv.Run(t, env, "", "sigil", args...)
		if r.ExitCode != 0 {
			t.Fatalf("sigil %s: exit %d\n%s%s", strings.Join(args, " "), r.ExitCode, r.Stdout, r.Stderr)
		}
		return r
	}
	alice, bob := []string{"SIGIL_HOME=" + aliceHome}, []string{"SIGIL_HOME=" + bobHome}

	tok := must(alice, "agent", "token", "--name", "myagent", "--roles", "agent-writer", "--format", "json")
	var token struct {
		Token         string `json:"token"`
		Proxy         string `json:"proxy"`
		CAFingerprint string `json:"ca_fingerprint"`
	}
	if err := json.Unmarshal([]byte(tok.Stdout), &token); err != nil || token.Token == "" || token.CAFingerprint == "" {
		t.Fatalf("agent token output: %v\n%s", err, tok.Stdout)
	}
	bot := startBot(t, filepath.Join(t.TempDir(), "myagent"), "--token", token.Token, "--proxy", token.Proxy,
		"--ca-fingerprint", token.CAFingerprint, "--db-tunnel", "my1:0:writer:app")

	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr, cfg.DBName = "writer", "tcp", bot.addr, "app"
	cfg.Timeout = 10 * time.Second
	// With InterpolateParams off (the default), Exec with arguments
	// prepares and executes the statement; without arguments it is a
	// COM_QUERY. Both protocols are under test.
	cfg.InterpolateParams = false
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(connector)
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// One held connection, not the pool: every refusal must leave this
	// very session usable (the pool would hide a broken one by dialing a
	// new connection), and database/sql prepares, executes and closes the
	// statement of an Exec with arguments on the connection it runs on.
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatalf("connecting through the bot's tunnel: %v\nbot:\n%s\nsigild:\n%s", err, bot.logs.String(), e.d.Stderr())
	}
	defer conn.Close()
	var threadID uint64
	if err := conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&threadID); err != nil {
		t.Fatalf("agent SELECT CONNECTION_ID(): %v", err)
	}
	var names string
	if err := conn.QueryRowContext(ctx, "SELECT group_concat(name ORDER BY id) FROM items").Scan(&names); err != nil || names != "alpha,beta,gamma" {
		t.Fatalf("agent SELECT: %q, %v", names, err)
	}
	testenv.Eventually(t, 10*time.Second, func() error {
		ev := findEvent(e.events(audit.EventDBQuery, "myagent"), func(ev *audit.Event) bool {
			return ev.Statement == "SELECT group_concat(name ORDER BY id) FROM items"
		})
		if ev == nil {
			return errors.New("no db.query event for the agent's SELECT")
		}
		if ev.Identity.GetKind() != "agent" || ev.Identity.GetOnBehalfOf() != "alice" || ev.Resource.GetName() != "my1" {
			return testenv.Fatal(fmt.Errorf("agent SELECT event: identity %v resource %v", ev.Identity, ev.Resource))
		}
		return nil
	})

	// refused runs a write that must be refused with 1142 naming an
	// approval, and returns that approval's id.
	refused := func(stmt string, args ...any) string {
		t.Helper()
		res, err := conn.ExecContext(ctx, stmt, args...)
		me := mysqlErr(err)
		if me == nil || me.Number != 1142 {
			t.Fatalf("%s %v: %v (result %v), want MySQL error 1142\nsigild:\n%s", stmt, args, err, res, e.d.Stderr())
		}
		m := approvalID.FindStringSubmatch(me.Message)
		if m == nil {
			t.Fatalf("%s %v: the refusal names no approval: %s", stmt, args, me.Message)
		}
		return m[1]
	}
	ran := func(stmt string, args ...any) {
		t.Helper()
		res, err := conn.ExecContext(ctx, stmt, args...)
		if err != nil {
			t.Fatalf("approved %s %v: %v\nsigild:\n%s", stmt, args, err, e.d.Stderr())
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			t.Fatalf("approved %s %v: %d rows affected, %v", stmt, args, n, err)
		}
	}
	row := func(id int) string {
		t.Helper()
		return strings.TrimSpace(e.my.SQL(t, "app", fmt.Sprintf("SELECT name FROM items WHERE id = %d", id)))
	}

	// Text protocol.
	insert := "INSERT INTO items VALUES (900, 'x')"
	textID := refused(insert)
	if again := refused(insert); again != textID {
		t.Fatalf("the same pending write got a second approval: %s, %s", textID, again)
	}
	if got := row(900); got != "" {
		t.Fatalf("row 900 exists before any approval: %q", got)
	}
	must(bob, "approval", "review", textID, "--approve", "--reason", "mysql text protocol")
	// Literals are part of the statement approved: another value does not
	// run on it (nor spend it).
	if other := refused("INSERT INTO items VALUES (903, 'x')"); other == textID {
		t.Fatalf("INSERT of 903 ran on the approval %s of 900", textID)
	}
	ran(insert)
	if got := row(900); got != "x" {
		t.Fatalf("row 900 after the approved INSERT = %q", got)
	}
	// The approval was used: the same statement asks for a new one (and
	// would have failed on the duplicate key, had it reached MariaDB).
	next := refused(insert)
	if next == textID {
		t.Fatalf("the approval %s was used twice", textID)
	}
	// The same statement up to keyword case, whitespace and comments
	// matches an approval: MariaDB itself refuses the duplicate key.
	must(bob, "approval", "review", next, "--approve")
	_, err = conn.ExecContext(ctx, "insert into items /* again */\n  values (900,'x')")
	if me := mysqlErr(err); me == nil || me.Number != 1062 {
		t.Fatalf("the approved INSERT, normalised: %v, want MariaDB's duplicate key error 1062", err)
	}

	// Prepared statements: an approval covers the text and the bound
	// values of one execution.
	prepared := "INSERT INTO items VALUES (?, ?)"
	prepID := refused(prepared, 901, "y")
	if prepID == textID {
		t.Fatalf("the prepared INSERT got the text INSERT's approval %s", prepID)
	}
	if again := refused(prepared, 901, "y"); again != prepID {
		t.Fatalf("the same pending execution got a second approval: %s, %s", prepID, again)
	}
	must(bob, "approval", "review", prepID, "--approve", "--reason", "mysql prepared statement")
	otherID := refused(prepared, 902, "y")
	if otherID == prepID {
		t.Fatalf("an execution with other values (902) ran on the approval %s of (901, 'y')", prepID)
	}
	ran(prepared, 901, "y")
	if got := row(901); got != "y" {
		t.Fatalf("row 901 after the approved execution = %q", got)
	}
	if next := refused(prepared, 901, "y"); next == prepID {
		t.Fatalf("the approval %s was used twice", prepID)
	}
	if again := refused(prepared, 902, "y"); again != otherID {
		t.Fatalf("the pending execution with 902 got a second approval: %s, %s", otherID, again)
	}
	// One statement prepared once and executed again, as ORMs do: the
	// approval covers one execution of it, not the statement id.
	stmt, err := conn.PrepareContext(ctx, prepared)
	if err != nil {
		t.Fatalf("preparing %s: %v", prepared, err)
	}
	defer stmt.Close()
	_, err = stmt.ExecContext(ctx, 904, "z")
	m := approvalID.FindStringSubmatch(fmt.Sprint(err))
	if me := mysqlErr(err); me == nil || me.Number != 1142 || m == nil {
		t.Fatalf("execution of a held statement with (904, 'z'): %v, want 1142 naming an approval", err)
	}
	heldID := m[1]
	must(bob, "approval", "review", heldID, "--approve")
	if _, err := stmt.ExecContext(ctx, 904, "z"); err != nil {
		t.Fatalf("approved execution of the held statement: %v", err)
	}
	_, err = stmt.ExecContext(ctx, 904, "z")
	if m := approvalID.FindStringSubmatch(fmt.Sprint(err)); mysqlErr(err) == nil || mysqlErr(err).Number != 1142 || m == nil || m[1] == heldID {
		t.Fatalf("second execution of the held statement on the used approval %s: %v, want 1142 naming a new approval", heldID, err)
	}
	for id, want := range map[int]string{902: "", 903: "", 904: "z"} {
		if got := row(id); got != want {
			t.Fatalf("row %d = %q, want %q", id, got, want)
		}
	}

	// Every refusal left the same session usable.
	var after uint64
	if err := conn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&after); err != nil || after != threadID {
		t.Fatalf("session after the refusals: connection id %d, %v; want the same session %d", after, err, threadID)
	}

	testenv.Eventually(t, 10*time.Second, func() error {
		evs := e.events(audit.EventDBQuery, "myagent")
		for _, c := range []struct {
			statement, id, protocol string
			params                  []string
		}{
			{insert, textID, "query", nil},
			{prepared, prepID, "prepared", []string{"901", "y"}},
			{prepared, heldID, "prepared", []string{"904", "z"}},
		} {
			ev := findEvent(evs, func(ev *audit.Event) bool {
				return ev.Statement == c.statement && slices.Equal(ev.Parameters, c.params)
			})
			if ev == nil {
				return fmt.Errorf("no db.query event for the approved %s %q", c.statement, c.params)
			}
			if ev.Details["approval_id"] != c.id || ev.Details["approved_by"] != "bob" || ev.Details["protocol"] != c.protocol ||
				ev.Identity.GetKind() != "agent" || ev.Identity.GetOnBehalfOf() != "alice" {
				return testenv.Fatal(fmt.Errorf("approved %s %q event (want approval %s): identity %v details %v",
					c.statement, c.params, c.id, ev.Identity, ev.Details))
			}
		}
		return nil
	})
	// The refusals are audited too, each naming its approval.
	testenv.Eventually(t, 10*time.Second, func() error {
		denied := e.events(audit.EventDBDenied, "myagent")
		for _, id := range []string{textID, prepID, otherID} {
			if findEvent(denied, func(ev *audit.Event) bool { return ev.Details["approval_id"] == id }) == nil {
				return fmt.Errorf("no db.denied event names approval %s", id)
			}
		}
		return nil
	})
}
