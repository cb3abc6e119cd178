package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/integration/testenv"
)

// mcpServer is a "sigil mcp db" child process driven by the go-sdk client.
type mcpServer struct {
	t      *testing.T
	cs     *mcp.ClientSession
	stderr string
}

// startMCP runs "sigil ARGS..." (an "mcp db" command) with env added, the
// way an AI client starts it: a child process speaking MCP on stdio.
func startMCP(t *testing.T, env []string, args ...string) *mcpServer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m := &mcpServer{t: t, stderr: filepath.Join(t.TempDir(), "stderr")}
	stderr, err := os.Create(m.stderr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stderr.Close() })
	cmd := exec.Command(filepath.Join(testenv.BinDir(t), "sigil"), args...)
	cmd.Env = append(append(os.Environ(), "SIGIL_IDENTITY="), env...)
	cmd.Stderr = stderr
	client := mcp.NewClient(&mcp.Implementation{Name: "sigil-integration", Version: "v0"}, nil)
	cs, err := client.Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("starting sigil %v: %v\nstderr:\n%s", args, err, m.log())
	}
	m.cs = cs
	// Closing stdin ends the server: it must exit 0 at once (Close waits
	// for the exit status, and signals only after 5 s).
	t.Cleanup(func() {
		if err := cs.Close(); err != nil {
			t.Errorf("sigil mcp db did not exit cleanly when its client closed: %v\nstderr:\n%s", err, m.log())
		}
	})
	return m
}

func (m *mcpServer) log() string {
	data, _ := os.ReadFile(m.stderr)
	return string(data)
}

// call runs a tool and returns its result and text; a protocol error
// fails the test (database errors must come back as tool errors).
func (m *mcpServer) call(name string, args map[string]any) (*mcp.CallToolResult, string) {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := m.cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		m.t.Fatalf("tools/call %s: protocol error %v\nsigil stderr:\n%s", name, err, m.log())
	}
	var text []string
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			text = append(text, tc.Text)
		}
	}
	return res, strings.Join(text, "\n")
}

// query runs a statement that must succeed and returns its output.
func (m *mcpServer) query(sql string) mcpQueryOutput {
	m.t.Helper()
	res, text := m.call("query", map[string]any{"sql": sql})
	if res.IsError {
		m.t.Fatalf("query %q: tool error %s\nsigil stderr:\n%s", sql, text, m.log())
	}
	var out mcpQueryOutput
	if err := json.Unmarshal([]byte(text), &out); err != nil {
		m.t.Fatalf("query %q: output %v: %s", sql, err, text)
	}
	return out
}

// refused runs a statement that must come back as a tool error.
func (m *mcpServer) refused(sql string) string {
	m.t.Helper()
	res, text := m.call("query", map[string]any{"sql": sql})
	if !res.IsError {
		m.t.Fatalf("query %q was not refused: %s", sql, text)
	}
	return text
}

type mcpQueryOutput struct {
	Results []struct {
		Columns []struct{ Name, Type string }
		Rows    [][]*string
		// RowCount counts all rows returned.
		RowCount   int    `json:"row_count"`
		Truncated  bool   `json:"truncated"`
		CommandTag string `json:"command_tag"`
	}
	Note string
}

// column returns the values of column i of the first result.
func (o mcpQueryOutput) column(i int) []string {
	var out []string
	for _, r := range o.Results[0].Rows {
		if r[i] == nil {
			out = append(out, "NULL")
		} else {
			out = append(out, *r[i])
		}
	}
	return out
}

func (m *mcpServer) toolNames() []string {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tools, err := m.cs.ListTools(ctx, nil)
	if err != nil {
		m.t.Fatalf("tools/list: %v\nsigil stderr:\n%s", err, m.log())
	}
	var names []string
	for _, tool := range tools.Tools {
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	return names
}

// describeColumns calls describe_table and returns the column names.
func (m *mcpServer) describeColumns(table string) []string {
	m.t.Helper()
	res, text := m.call("describe_table", map[string]any{"table": table})
	if res.IsError {
		m.t.Fatalf("describe_table %s: %s", table, text)
	}
	var out struct {
		Columns []struct {
			Name, Type string
			Nullable   bool
		}
	}
	if err := json.Unmarshal([]byte(text), &out); err != nil {
		m.t.Fatalf("describe_table output: %v: %s", err, text)
	}
	var names []string
	for _, c := range out.Columns {
		names = append(names, c.Name+" "+c.Type)
	}
	return names
}

// waitEvent polls the audit log until an event of typ by user matches.
func waitEvent(t *testing.T, e *pgEnv, typ, user string, match func(*audit.Event) bool) *audit.Event {
	t.Helper()
	var ev *audit.Event
	testenv.Eventually(t, 15*time.Second, func() error {
		if ev = findEvent(e.events(typ, user), match); ev == nil {
			return fmt.Errorf("no matching %s event for %s yet", typ, user)
		}
		return nil
	})
	return ev
}

// TestMCPPostgres drives "sigil mcp db" with the go-sdk client against a
// real daemon and PostgreSQL: tools/list, queries, describe_table, a
// refusal as a tool error, the audit trail, and a reconnect after a lock.
func TestMCPPostgres(t *testing.T) {
	e := startPgEnv(t)
	aliceHome := e.addUser("alice", "pg-read")
	bobHome := e.addUser("bob", "pg-write")
	alice := startMCP(t, []string{"SIGIL_HOME=" + aliceHome}, "mcp", "db", "pg1", "--db-user", "reader", "--db-name", "app", "--max-rows", "2")

	if got := alice.toolNames(); !slices.Equal(got, []string{"describe_table", "list_databases", "query"}) {
		t.Fatalf("tools/list = %v", got)
	}
	if got := alice.cs.InitializeResult().Instructions; !strings.Contains(got, `identity "alice"`) {
		t.Errorf("instructions do not name alice: %q", got)
	}

	t.Run("select", func(t *testing.T) {
		out := alice.query("select id, name from items order by id")
		r := out.Results[0]
		if got := out.column(1); !slices.Equal(got, []string{"alpha", "beta"}) || r.RowCount != 3 || !r.Truncated || r.CommandTag != "SELECT 3" {
			t.Fatalf("select: %+v", out)
		}
		if r.Columns[0].Name != "id" || r.Columns[0].Type != "int4" || r.Columns[1].Type != "text" || !strings.Contains(out.Note, "1 dropped") {
			t.Fatalf("select columns/note: %+v", out)
		}
		// The simple protocol: several statements, NULLs as null.
		out = alice.query("select 1 as one; select null::text as nothing")
		if len(out.Results) != 2 || *out.Results[0].Rows[0][0] != "1" || out.Results[1].Rows[0][0] != nil {
			t.Fatalf("two statements: %+v", out)
		}
		// The session names alice in the database.
		out = alice.query("select current_setting('sigil.identity')")
		if got := out.column(0); len(got) != 1 || !strings.HasPrefix(got[0], "alice/human/") {
			t.Fatalf("sigil.identity = %v", got)
		}
	})

	t.Run("describe_table", func(t *testing.T) {
		if got := alice.describeColumns("items"); !slices.Equal(got, []string{"id integer", "name text"}) {
			t.Fatalf("describe_table items = %v", got)
		}
		res, text := alice.call("describe_table", map[string]any{"table": "nope'; drop table items; --"})
		if !res.IsError || !strings.Contains(text, "no table") {
			t.Fatalf("describe_table of a missing table: %v %s", res.IsError, text)
		}
	})

	t.Run("refused insert is a tool error", func(t *testing.T) {
		text := alice.refused("insert into items values (100, 'from-mcp')")
		if !strings.Contains(text, "(SQLSTATE 42501)") || !strings.Contains(text, "statement refused: INSERT") || !strings.Contains(text, `role "pg-read" grants read`) {
			t.Fatalf("refusal text = %q", text)
		}
		t.Logf("refusal: %s", text)
		if got := strings.TrimSpace(e.pg.Psql(t, "app", "select count(*) from items where id = 100")); got != "0" {
			t.Fatalf("refused row was inserted: count = %s", got)
		}
		// The session goes on after a refusal.
		if got := alice.query("select name from items where id = 3").column(0); !slices.Equal(got, []string{"gamma"}) {
			t.Fatalf("select after refusal = %v", got)
		}
	})

	t.Run("audit names alice and the statements", func(t *testing.T) {
		q := waitEvent(t, e, audit.EventDBQuery, "alice", func(ev *audit.Event) bool {
			return ev.Statement == "select id, name from items order by id"
		})
		if q.Classification != "read" || q.Resource.GetName() != "pg1" || q.Resource.GetDbUser() != "reader" || q.Identity.GetKind() != "human" || q.Details["protocol"] == "extended" {
			t.Errorf("db.query event = %v", q)
		}
		waitEvent(t, e, audit.EventDBDenied, "alice", func(ev *audit.Event) bool {
			return ev.Statement == "insert into items values (100, 'from-mcp')"
		})
		// describe_table passes the name as a parameter.
		d := waitEvent(t, e, audit.EventDBQuery, "alice", func(ev *audit.Event) bool {
			return strings.Contains(ev.Statement, "information_schema.columns") && slices.Contains(ev.Parameters, "items")
		})
		if d.Classification != "read" {
			t.Errorf("describe_table event = %v", d)
		}
	})

	t.Run("a cancelled call cancels its query", func(t *testing.T) {
		const who = "select current_setting('sigil.identity')"
		before := alice.query(who).column(0)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := alice.cs.CallTool(ctx, &mcp.CallToolParams{Name: "query", Arguments: map[string]any{"sql": "select pg_sleep(60)"}}); err == nil {
			t.Fatal("a 60 s query returned within 1 s")
		}
		start := time.Now()
		if got := alice.query("select 'after cancel'").column(0); !slices.Equal(got, []string{"after cancel"}) {
			t.Fatalf("after cancel = %v", got)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Fatalf("the next call waited %v for the cancelled query", d)
		}
		// Cancelled with a cancel request, not by cutting the connection.
		if after := alice.query(who).column(0); !slices.Equal(before, after) {
			t.Errorf("the session changed across the cancel: %v, then %v", before, after)
		}
		testenv.Eventually(t, 10*time.Second, func() error {
			if n := strings.TrimSpace(e.pg.Psql(t, "app", "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)' and state = 'active'")); n != "0" {
				return fmt.Errorf("%s pg_sleep still running", n)
			}
			return nil
		})
	})

	t.Run("list_databases", func(t *testing.T) {
		res, text := alice.call("list_databases", nil)
		var out struct {
			Bound struct {
				Database string
				DBUser   string `json:"db_user"`
			}
			Identity  string
			Databases []struct {
				Name    string
				DBUsers []string `json:"db_users"`
			}
		}
		if err := json.Unmarshal([]byte(text), &out); err != nil || res.IsError {
			t.Fatalf("list_databases: %v %s", err, text)
		}
		if out.Bound.Database != "pg1" || out.Bound.DBUser != "reader" || out.Identity != "alice" || len(out.Databases) != 1 ||
			out.Databases[0].Name != "pg1" || !slices.Contains(out.Databases[0].DBUsers, "reader") {
			t.Fatalf("list_databases = %s", text)
		}
	})

	t.Run("write role gets the command tag", func(t *testing.T) {
		bob := startMCP(t, []string{"SIGIL_HOME=" + bobHome}, "mcp", "db", "pg1", "--db-user", "writer", "--db-name", "app")
		out := bob.query("insert into items values (500, 'from-bob-mcp')")
		if out.Results[0].CommandTag != "INSERT 0 1" || len(out.Results[0].Columns) != 0 {
			t.Fatalf("insert: %+v", out)
		}
		if got := strings.TrimSpace(e.pg.Psql(t, "app", "select name from items where id = 500")); got != "from-bob-mcp" {
			t.Fatalf("row 500 = %q", got)
		}
		// COPY FROM STDIN waits for data MCP cannot send: it fails at
		// once instead of holding the session until the call times out.
		start := time.Now()
		text := bob.refused("copy items from stdin")
		if !strings.Contains(text, "COPY FROM STDIN needs data streamed by the client") || !strings.Contains(text, "SQLSTATE 57014") || time.Since(start) > 10*time.Second {
			t.Fatalf("copy from stdin after %v: %q", time.Since(start), text)
		}
		if got := bob.query("select name from items where id = 500").column(0); !slices.Equal(got, []string{"from-bob-mcp"}) {
			t.Fatalf("after copy = %v", got)
		}
	})

	t.Run("a lock fails the call and the next call reconnects", func(t *testing.T) {
		lockAndReconnect(t, e, alice)
	})
}

// lockAndReconnect locks alice: the server's next call fails saying why,
// and after the unlock a call reconnects by itself.
func lockAndReconnect(t *testing.T, e *pgEnv, m *mcpServer) {
	t.Helper()
	e.mustCtl("lock", "--user", "alice", "--message", "laptop stolen")
	var text string
	testenv.Eventually(t, 10*time.Second, func() error {
		var res *mcp.CallToolResult
		res, text = m.call("query", map[string]any{"sql": "select 1"})
		if !res.IsError {
			return errors.New("query still runs after the lock")
		}
		return nil
	})
	if !strings.Contains(text, "laptop stolen") {
		t.Fatalf("query while locked: %q", text)
	}
	t.Logf("query while locked: %s", text)
	var locks []struct{ Metadata struct{ Name string } }
	if err := json.Unmarshal([]byte(e.mustCtl("locks", "ls", "--format", "json").Stdout), &locks); err != nil || len(locks) != 1 {
		t.Fatalf("locks ls: %v %v", err, locks)
	}
	e.mustCtl("unlock", locks[0].Metadata.Name)
	testenv.Eventually(t, 10*time.Second, func() error {
		res, text := m.call("query", map[string]any{"sql": "select 'back'"})
		if res.IsError {
			return fmt.Errorf("after unlock: %s", text)
		}
		return nil
	})
}

// TestMCPMySQL runs the same tools against a real MariaDB through the
// gateway (ALPN sigil-mysql on the main port).
func TestMCPMySQL(t *testing.T) {
	e := startMyEnv(t)
	aliceHome := e.addUser("alice", "my-read")
	bobHome := e.addUser("bob", "my-write")
	alice := startMCP(t, []string{"SIGIL_HOME=" + aliceHome}, "mcp", "db", "my1", "--db-user", "reader", "--db-name", "app")

	if got := alice.toolNames(); !slices.Equal(got, []string{"describe_table", "list_databases", "query"}) {
		t.Fatalf("tools/list = %v", got)
	}
	out := alice.query("select id, name from items order by id")
	if got := out.column(1); !slices.Equal(got, []string{"alpha", "beta", "gamma"}) || out.Results[0].CommandTag != "SELECT 3" {
		t.Fatalf("select: %+v", out)
	}
	if got := alice.describeColumns("items"); !slices.Equal(got, []string{"id int(11)", "name varchar(64)"}) {
		t.Fatalf("describe_table items = %v", got)
	}
	text := alice.refused("insert into items values (100, 'from-mcp')")
	if !strings.Contains(text, "ERROR 1142") || !strings.Contains(text, "statement refused: INSERT") || !strings.Contains(text, `role "my-read" grants read`) {
		t.Fatalf("refusal text = %q", text)
	}
	waitEvent(t, e.pgEnv, audit.EventDBQuery, "alice", func(ev *audit.Event) bool {
		return ev.Statement == "select id, name from items order by id" && ev.Resource.GetName() == "my1"
	})
	waitEvent(t, e.pgEnv, audit.EventDBDenied, "alice", func(ev *audit.Event) bool {
		return ev.Statement == "insert into items values (100, 'from-mcp')"
	})

	bob := startMCP(t, []string{"SIGIL_HOME=" + bobHome}, "mcp", "db", "my1", "--db-user", "writer", "--db-name", "app")
	out = bob.query("insert into items values (500, 'from-bob-mcp')")
	if out.Results[0].CommandTag != "OK, 1 rows affected" {
		t.Fatalf("insert: %+v", out)
	}
	if got := strings.TrimSpace(e.my.SQL(t, "app", "select name from items where id = 500")); got != "from-bob-mcp" {
		t.Fatalf("row 500 = %q", got)
	}

	lockAndReconnect(t, e.pgEnv, alice)
}

// TestMCPAgentApproval serves an AI agent's identity: alice's agent joins
// with "sigil bot start", then "sigil --identity DIR mcp db" runs as the
// agent. Its INSERT comes back as a tool error naming an approval; once
// bob approves, the same INSERT through MCP runs, audited as the agent on
// behalf of alice.
func TestMCPAgentApproval(t *testing.T) {
	e := startPgEnv(t)
	e.createYAML(agentRoles)
	aliceHome := e.addUser("alice", "pg-write")
	bobHome := e.addUser("bob", "approver")
	must := func(env []string, args ...string) testenv.Result {
		t.Helper()
		r := testenv.Run(t, env, "", "sigil", args...)
		if r.ExitCode != 0 {
			t.Fatalf("sigil %s: exit %d\n%s%s", strings.Join(args, " "), r.ExitCode, r.Stdout, r.Stderr)
		}
		return r
	}
	var token struct {
		Token         string `json:"token"`
		Proxy         string `json:"proxy"`
		CAFingerprint string `json:"ca_fingerprint"`
	}
	tok := must([]string{"SIGIL_HOME=" + aliceHome}, "agent", "token", "--name", "copilot", "--roles", "agent-writer", "--format", "json")
	if err := json.Unmarshal([]byte(tok.Stdout), &token); err != nil {
		t.Fatalf("agent token output: %v\n%s", err, tok.Stdout)
	}
	dest := filepath.Join(t.TempDir(), "copilot")
	noProfile := []string{"SIGIL_HOME=" + t.TempDir()}
	must(noProfile, "bot", "start", "--oneshot", "--token", token.Token, "--proxy", token.Proxy, "--ca-fingerprint", token.CAFingerprint, "--dest", dest)

	agent := startMCP(t, noProfile, "--identity", dest, "mcp", "db", "pg1", "--db-user", "writer", "--db-name", "app")
	if got := agent.cs.InitializeResult().Instructions; !strings.Contains(got, `agent identity "copilot"`) {
		t.Errorf("instructions do not name the agent: %q", got)
	}
	if got := agent.query("select name from items where id = 1").column(0); !slices.Equal(got, []string{"alpha"}) {
		t.Fatalf("agent select = %v", got)
	}

	insert := "insert into items values (910, 'by copilot via mcp')"
	text := agent.refused(insert)
	m := approvalID.FindStringSubmatch(text)
	if m == nil || !strings.Contains(text, "(SQLSTATE 42501)") {
		t.Fatalf("agent insert refusal names no approval: %q", text)
	}
	t.Logf("agent refusal: %s", text)
	must([]string{"SIGIL_HOME=" + bobHome}, "approval", "review", m[1], "--approve", "--reason", "ok via mcp")

	out := agent.query(insert)
	if out.Results[0].CommandTag != "INSERT 0 1" {
		t.Fatalf("approved insert: %+v", out)
	}
	if got := strings.TrimSpace(e.pg.Psql(t, "app", "select name from items where id = 910")); got != "by copilot via mcp" {
		t.Fatalf("row 910 = %q", got)
	}
	ev := waitEvent(t, e, audit.EventDBQuery, "copilot", func(ev *audit.Event) bool { return ev.Statement == insert })
	if ev.Identity.GetKind() != "agent" || ev.Identity.GetOnBehalfOf() != "alice" || ev.Details["approval_id"] != m[1] {
		t.Fatalf("approved insert event: identity %v details %v", ev.Identity, ev.Details)
	}
}
