package main

import (
	"bytes"
	"context"
	"database/sql/driver"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/gravitational/trace"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

func strp(s string) *string { return &s }

func TestRowBudget(t *testing.T) {
	t.Run("row limit keeps a prefix and counts all", func(t *testing.T) {
		b := &rowBudget{maxRows: 2, maxBytes: 1 << 20}
		var res statementResult
		for _, v := range []string{"a", "b", "c", "d"} {
			b.add(&res, []*string{strp(v), nil})
		}
		if res.RowCount != 4 || len(res.Rows) != 2 || !res.Truncated || *res.Rows[1][0] != "b" || res.Rows[1][1] != nil {
			t.Fatalf("result = %+v", res)
		}
		if note := b.note(); !strings.Contains(note, "2 rows kept, 2 dropped") || !strings.Contains(note, "at most 2 rows") {
			t.Fatalf("note = %q", note)
		}
	})
	t.Run("byte limit spans statements and stops at the first misfit", func(t *testing.T) {
		b := &rowBudget{maxRows: 100, maxBytes: 40}
		var first, second statementResult
		b.add(&first, []*string{strp(strings.Repeat("x", 20))}) // 28 bytes: kept
		b.add(&second, []*string{strp(strings.Repeat("y", 20))})
		b.add(&second, []*string{strp("z")}) // would fit, but rows after a misfit are dropped
		if len(first.Rows) != 1 || first.Truncated || len(second.Rows) != 0 || !second.Truncated || second.RowCount != 2 {
			t.Fatalf("first = %+v, second = %+v", first, second)
		}
	})
	t.Run("no note when nothing was dropped", func(t *testing.T) {
		b := &rowBudget{maxRows: 10, maxBytes: 1 << 20}
		var res statementResult
		b.add(&res, []*string{strp("1")})
		if b.note() != "" || res.Truncated {
			t.Fatalf("note = %q, truncated = %v", b.note(), res.Truncated)
		}
	})
}

func TestValueRendering(t *testing.T) {
	if textValue(nil) != nil {
		t.Fatal("NULL must render as nil")
	}
	if got := *textValue([]byte{}); got != "" {
		t.Fatalf("empty value = %q", got)
	}
	if got := *textValue([]byte("a\xffb")); got != "a\uFFFDb" {
		t.Fatalf("invalid UTF-8 = %q", got)
	}
	long := strings.Repeat("é", mcpMaxValueBytes) // 2 bytes each
	got := *textValue([]byte(long))
	if !strings.HasSuffix(got, "… [value cut: 131072 bytes in total]") || len(got) > mcpMaxValueBytes+64 {
		t.Fatalf("long value: len %d, tail %q", len(got), got[len(got)-40:])
	}
	if head, _, _ := strings.Cut(got, "…"); !strings.HasPrefix(long, head) || len(head)%2 != 0 {
		t.Fatalf("cut in the middle of a rune")
	}
	for _, c := range []struct {
		in   driver.Value
		want string
	}{
		{int64(-3), "-3"}, {uint64(18446744073709551615), "18446744073709551615"}, {1.5, "1.5"},
		{float32(0.25), "0.25"}, {true, "true"}, {"s", "s"}, {[]byte("b"), "b"},
		{time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC), "2026-01-02 03:04:05.0000006"},
	} {
		if got := driverValue(c.in); got == nil || *got != c.want {
			t.Errorf("driverValue(%#v) = %v, want %q", c.in, got, c.want)
		}
	}
	if driverValue(nil) != nil {
		t.Error("driverValue(nil) must be nil")
	}
}

func TestToolErrorText(t *testing.T) {
	refusal := &pgconn.PgError{Severity: "ERROR", Code: "42501",
		Message: `sigil: statement refused: INSERT is a write statement and role "agent" requires a human approval for each write`,
		Detail:  "approval 0b6f1c2e is pending", Hint: "ask a reviewer: sigil request review"}
	cases := []struct {
		name string
		err  error
		want []string
	}{
		{"postgres refusal", trace.Wrap(refusal), []string{
			`ERROR: sigil: statement refused: INSERT is a write statement and role "agent" requires a human approval for each write (SQLSTATE 42501)`,
			"\nDETAIL: approval 0b6f1c2e is pending", "\nHINT: ask a reviewer"}},
		{"mysql refusal", &mysql.MySQLError{Number: 1142, SQLState: [5]byte{'4', '2', '0', '0', '0'}, Message: "sigil: statement refused"},
			[]string{"ERROR 1142 (SQLSTATE 42000): sigil: statement refused"}},
		{"session ended by a lock", &sessionEndedError{err: &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "sigil: session terminated: locked"}},
			[]string{"FATAL: sigil: session terminated: locked (SQLSTATE 57P01)", "the next call opens a new one"}},
		{"refused connection", dialError(&pgconn.PgError{Severity: "FATAL", Code: "28000", Message: "sigil: access denied"}, sqlTarget{gateway: "gw:3443", dbUser: "reader", dbName: "app"}, "PostgreSQL"),
			[]string{`cannot open a PostgreSQL session as db user "reader", db name "app" through the gateway gw:3443: FATAL: sigil: access denied (SQLSTATE 28000)`}},
		{"other", trace.NotFound("no table %q", "t"), []string{`no table "t"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := toolErrorText(c.err)
			for _, w := range c.want {
				if !strings.Contains(got, w) {
					t.Errorf("toolErrorText = %q, want it to contain %q", got, w)
				}
			}
		})
	}
}

func TestDescribedColumns(t *testing.T) {
	rows := [][][]byte{
		{[]byte("app"), []byte("id"), []byte("integer"), []byte("NO"), []byte("nextval('items_id_seq'::regclass)")},
		{[]byte("app"), []byte("name"), []byte("text"), []byte("YES"), nil},
		{[]byte("public"), []byte("other"), []byte("text"), []byte("YES"), nil},
	}
	schema, cols, err := describedColumns(rows)
	if err != nil || schema != "app" || len(cols) != 2 {
		t.Fatalf("describedColumns = %q, %+v, %v", schema, cols, err)
	}
	if cols[0].Nullable || *cols[0].Default != "nextval('items_id_seq'::regclass)" || !cols[1].Nullable || cols[1].Default != nil || cols[1].Type != "text" {
		t.Fatalf("columns = %+v", cols)
	}
	if _, _, err := describedColumns([][][]byte{{[]byte("x")}}); err == nil {
		t.Fatal("a short row was accepted")
	}
}

// fakeSession stands for a database session: it answers from a script.
type fakeSession struct {
	mu     sync.Mutex
	dead   bool
	ran    []string
	answer func(sql string, budget *rowBudget) ([]statementResult, error)
	// dies makes the session end while running sql.
	dies string
}

func (f *fakeSession) run(_ context.Context, sql string, budget *rowBudget) ([]statementResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ran = append(f.ran, sql)
	if sql == f.dies {
		f.dead = true
		return nil, &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "sigil: session terminated: lock"}
	}
	return f.answer(sql, budget)
}

func (f *fakeSession) describe(context.Context, string, string) (string, []columnInfo, error) {
	return "public", []columnInfo{{Name: "id", Type: "integer"}}, nil
}

func (f *fakeSession) alive() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.dead
}

func (f *fakeSession) close() {}

// TestMCPServerTools drives the tools with the SDK's client over an
// in-memory transport, with a scripted session in place of the gateway.
func TestMCPServerTools(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var dials int
	answer := func(sql string, budget *rowBudget) ([]statementResult, error) {
		switch sql {
		case "select name from items":
			var res statementResult
			res.Columns = []resultColumn{{Name: "name", Type: "text"}}
			for _, v := range []string{"alpha", "beta", "gamma"} {
				budget.add(&res, []*string{strp(v)})
			}
			res.CommandTag = "SELECT 3"
			return []statementResult{res}, nil
		case "insert into items values (9, 'x')":
			return nil, &pgconn.PgError{Severity: "ERROR", Code: "42501", Message: `sigil: statement refused: INSERT is a write statement and role "pg-read" grants read statements only`}
		}
		return []statementResult{{CommandTag: "OK"}}, nil
	}
	var sessions []*fakeSession
	srv := &mcpDBServer{
		bound:        mcpBinding{Database: "pg1", Protocol: protocolPostgres, DBUser: "reader", DBName: "app"},
		who:          "alice",
		kind:         "human",
		maxRows:      2,
		maxBytes:     1 << 20,
		queryTimeout: time.Minute,
		log:          slog.New(slog.NewTextHandler(io.Discard, nil)),
		dial: func(context.Context) (sqlSession, error) {
			dials++
			s := &fakeSession{answer: answer, dies: "select pg_sleep(60)"}
			sessions = append(sessions, s)
			return s, nil
		},
		listDatabases: func(context.Context) ([]*sigilv1.DatabaseInfo, error) {
			return []*sigilv1.DatabaseInfo{{Name: "pg1", Protocol: "postgres", Labels: map[string]string{"env": "dev"}, DbUsers: []string{"reader"}, DbNames: []string{"*"}}}, nil
		},
	}
	st, ct := mcp.NewInMemoryTransports()
	ss, err := srv.mcpServer().Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "v0"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()

	if got := cs.InitializeResult().Instructions; !strings.Contains(got, `identity "alice"`) || !strings.Contains(got, "SQLSTATE 42501") {
		t.Errorf("instructions = %q", got)
	}
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tool := range tools.Tools {
		names = append(names, tool.Name)
	}
	if strings.Join(names, ",") != "describe_table,list_databases,query" {
		t.Fatalf("tools = %v", names)
	}

	call := func(name string, args map[string]any) (*mcp.CallToolResult, string) {
		t.Helper()
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
		if err != nil {
			t.Fatalf("%s: protocol error %v", name, err)
		}
		if len(res.Content) != 1 {
			t.Fatalf("%s: %d content blocks", name, len(res.Content))
		}
		return res, res.Content[0].(*mcp.TextContent).Text
	}

	res, text := call("query", map[string]any{"sql": "select name from items"})
	var out queryOutput
	if err := json.Unmarshal([]byte(text), &out); err != nil || res.IsError {
		t.Fatalf("query: %v, %s", err, text)
	}
	if len(out.Results) != 1 || out.Results[0].RowCount != 3 || len(out.Results[0].Rows) != 2 || *out.Results[0].Rows[1][0] != "beta" ||
		!out.Results[0].Truncated || !strings.Contains(out.Note, "1 dropped") {
		t.Fatalf("query output = %s", text)
	}

	res, text = call("query", map[string]any{"sql": "insert into items values (9, 'x')"})
	if !res.IsError || !strings.Contains(text, "(SQLSTATE 42501)") || !strings.Contains(text, `role "pg-read" grants read`) {
		t.Fatalf("refused insert: isError=%v text=%q", res.IsError, text)
	}

	res, text = call("query", map[string]any{"sql": "  "})
	if !res.IsError || text != "sql is empty" {
		t.Fatalf("empty sql: isError=%v text=%q", res.IsError, text)
	}
	if res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "query", Arguments: map[string]any{}}); err != nil || !res.IsError {
		t.Fatalf("missing sql argument: %v, %+v", err, res)
	}

	// A session that ends (a lock) fails that call only; the next call
	// reconnects.
	res, text = call("query", map[string]any{"sql": "select pg_sleep(60)"})
	if !res.IsError || !strings.Contains(text, "57P01") || !strings.Contains(text, "the next call opens a new one") {
		t.Fatalf("ended session: isError=%v text=%q", res.IsError, text)
	}
	if res, text = call("query", map[string]any{"sql": "select name from items"}); res.IsError {
		t.Fatalf("after reconnect: %s", text)
	}
	if dials != 2 || len(sessions[1].ran) != 1 {
		t.Fatalf("dials = %d, want 2 (one reconnect)", dials)
	}

	res, text = call("describe_table", map[string]any{"table": "items"})
	if res.IsError || !strings.Contains(text, `"name":"id"`) || !strings.Contains(text, `"schema":"public"`) {
		t.Fatalf("describe_table: %s", text)
	}

	res, text = call("list_databases", nil)
	var dbs listDatabasesOutput
	if err := json.Unmarshal([]byte(text), &dbs); err != nil || res.IsError {
		t.Fatalf("list_databases: %v %s", err, text)
	}
	if dbs.Bound.Database != "pg1" || dbs.Bound.DBUser != "reader" || dbs.Identity != "alice" || len(dbs.Databases) != 1 || dbs.Databases[0].Labels["env"] != "dev" {
		t.Fatalf("list_databases = %s", text)
	}

	srv.listDatabases = func(context.Context) ([]*sigilv1.DatabaseInfo, error) {
		return nil, trace.AccessDenied("your Sigil login expired")
	}
	if res, text = call("list_databases", nil); !res.IsError || text != "your Sigil login expired" {
		t.Fatalf("list_databases error: isError=%v text=%q", res.IsError, text)
	}
}

func TestSafeToRetry(t *testing.T) {
	if !safeToRetry(trace.Wrap(driver.ErrBadConn)) || safeToRetry(errors.New("boom")) || safeToRetry(&pgconn.PgError{Code: "42501"}) {
		t.Fatal("safeToRetry misjudges")
	}
}

func TestMCPDBFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"mcp", "db", "pg1", "--max-rows", "0"}, "--max-rows must be at least 1"},
		{[]string{"mcp", "db", "pg1", "--query-timeout", "0s"}, "--query-timeout must be positive"},
		{[]string{"mcp", "db", "../x"}, "invalid database name"},
	} {
		var stdout, stderr strings.Builder
		a := &app{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, now: time.Now}
		if code := a.run(context.Background(), c.args); code != 1 || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("sigil %v: exit %d, stderr %q, want %q", c.args, code, stderr.String(), c.want)
		}
		if stdout.Len() != 0 {
			t.Errorf("sigil %v wrote to stdout (the protocol channel): %q", c.args, stdout.String())
		}
	}
}

// scriptConn replays the server's bytes in chunks of a given size and
// records what is written back.
type scriptConn struct {
	net.Conn
	in    *bytes.Reader
	out   bytes.Buffer
	chunk int
}

func (c *scriptConn) Read(p []byte) (int, error) {
	if len(p) > c.chunk {
		p = p[:c.chunk]
	}
	return c.in.Read(p)
}

func (c *scriptConn) Write(p []byte) (int, error) { return c.out.Write(p) }

func pgMessage(typ byte, body string) []byte {
	m := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(m[1:], uint32(4+len(body)))
	return append(m, body...)
}

func TestCopyInRefuser(t *testing.T) {
	var stream []byte
	// A DataRow whose body holds a 'G' must not count; the real
	// CopyInResponse after it must, once.
	for _, m := range [][]byte{pgMessage('T', "rowdesc"), pgMessage('D', "GGGG\x00\x00\x00\x05G"), pgMessage('C', "SELECT 1\x00"),
		pgMessage('G', "\x00\x00\x01\x00\x00"), pgMessage('E', "SERROR\x00"), pgMessage('Z', "I")} {
		stream = append(stream, m...)
	}
	want := append(pgMessage('f', copyInRefusal), 0)
	binary.BigEndian.PutUint32(want[1:], uint32(4+len(copyInRefusal)+1))
	for _, chunk := range []int{1, 2, 3, 5, 7, 64, 4096} {
		conn := &scriptConn{in: bytes.NewReader(stream), chunk: chunk}
		c := &copyInRefuser{Conn: conn}
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, stream) {
			t.Fatalf("chunk %d: the stream was altered: %v", chunk, err)
		}
		if !bytes.Equal(conn.out.Bytes(), want) {
			t.Fatalf("chunk %d: wrote %q, want one CopyFail %q", chunk, conn.out.Bytes(), want)
		}
	}
}
