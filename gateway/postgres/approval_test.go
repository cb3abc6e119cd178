package postgres

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/gateway/session/sessiontest"
	"github.com/sigilhq/sigil/gateway/sqlpolicy"
)

// approvalServer is a PostgreSQL peer that keeps the state that matters
// here as the real server does: named statements (a duplicate Parse
// fails), an error skips everything up to Sync, "fail" in a statement
// text makes its Parse fail. It records what it ran.
type approvalServer struct {
	mu    sync.Mutex
	seen  []string
	stmts map[string]string
}

func (s *approvalServer) record(m string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, m)
}

// Seen returns and clears what the server saw.
func (s *approvalServer) Seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.seen
	s.seen = nil
	return out
}

var paramRe = regexp.MustCompile(`\$[0-9]+`)

func (s *approvalServer) serve(conn net.Conn) {
	be := pgproto3.NewBackend(conn, conn)
	ignoring := false
	fail := func(code, msg string) {
		be.Send(&pgproto3.ErrorResponse{Severity: "ERROR", Code: code, Message: msg})
		ignoring = true
	}
	portals := map[string]string{}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		if _, sync := msg.(*pgproto3.Sync); ignoring && !sync {
			s.record(fmt.Sprintf("skip %T", msg))
			continue
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			s.record("Query:" + m.String)
			delete(s.stmts, "")
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Parse:
			s.record("Parse:" + m.Name + ":" + m.Query)
			if m.Name == "" {
				delete(s.stmts, "")
			}
			switch _, dup := s.stmts[m.Name]; {
			case strings.Contains(m.Query, "fail"):
				fail("42601", "syntax error")
			case dup && m.Name != "":
				fail("42P05", "prepared statement already exists")
			default:
				s.stmts[m.Name] = m.Query
				be.Send(&pgproto3.ParseComplete{})
			}
		case *pgproto3.Bind:
			q, ok := s.stmts[m.PreparedStatement]
			if !ok {
				fail("26000", "prepared statement does not exist")
				break
			}
			var ps []string
			for _, p := range m.Parameters {
				ps = append(ps, string(p))
			}
			portals[m.DestinationPortal] = q + " " + fmt.Sprint(ps)
			be.Send(&pgproto3.BindComplete{})
		case *pgproto3.Describe:
			if m.ObjectType == 'S' {
				n := len(paramRe.FindAllString(s.stmts[m.Name], -1))
				oids := make([]uint32, n)
				for i := range oids {
					oids[i] = 25
				}
				be.Send(&pgproto3.ParameterDescription{ParameterOIDs: oids})
			}
			be.Send(&pgproto3.NoData{})
		case *pgproto3.Execute:
			s.record("Execute:" + portals[m.Portal])
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("INSERT 0 1")})
		case *pgproto3.Close:
			if m.ObjectType == 'S' {
				delete(s.stmts, m.Name)
			}
			be.Send(&pgproto3.CloseComplete{})
		case *pgproto3.Sync:
			s.record("Sync")
			ignoring = false
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Terminate:
			return
		}
		if err := be.Flush(); err != nil {
			return
		}
	}
}

type approvalHarness struct {
	relayHarness
	server   *approvalServer
	approver *sessiontest.Approver
	client   net.Conn
}

// startApprovalRelay relays a client (returned, not yet started up) to an
// approvalServer through a relay with a write-approval grant.
func startApprovalRelay(t *testing.T, startup bool) *approvalHarness {
	t.Helper()
	cl, err := sqlpolicy.NewClassifier(sqlpolicy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	clientConn, gwClient := net.Pipe()
	gwUp, serverConn := net.Pipe()
	h := &approvalHarness{server: &approvalServer{stmts: map[string]string{}}, approver: sessiontest.NewApprover(), client: clientConn}
	r := newRelay(relayConfig{
		policy:   sqlpolicy.Grant{Statements: "write", Role: "agent-rw", WriteApproval: true},
		classify: cl.Classify,
		approve:  h.approver.Approve,
		emit: func(ev *audit.Event) {
			h.mu.Lock()
			h.events = append(h.events, ev)
			h.mu.Unlock()
		},
	}, bufio.NewReader(gwClient), bufio.NewWriter(gwUp), gwClient)
	go h.server.serve(serverConn)
	go func() {
		if startup {
			// What the server handshake leaves for the relay: the
			// client started up and got ReadyForQuery.
			be := pgproto3.NewBackend(gwClient, gwClient)
			if _, err := be.ReceiveStartupMessage(); err != nil {
				return
			}
			be.Send(&pgproto3.AuthenticationOk{})
			for k, v := range map[string]string{"server_version": "15.0", "client_encoding": "UTF8", "standard_conforming_strings": "on", "DateStyle": "ISO, MDY", "integer_datetimes": "on"} {
				be.Send(&pgproto3.ParameterStatus{Name: k, Value: v})
			}
			be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 2}})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if err := be.Flush(); err != nil {
				return
			}
		}
		go r.serverLoop(gwUp)
		_ = r.clientLoop(context.Background())
	}()
	t.Cleanup(func() {
		clientConn.Close()
		gwClient.Close()
		gwUp.Close()
		serverConn.Close()
	})
	clientConn.SetDeadline(time.Now().Add(20 * time.Second))
	h.fe = pgproto3.NewFrontend(clientConn, clientConn)
	return h
}

// roundTrip sends msgs and returns what the client got up to the
// ReadyForQuery of the last Sync or Query.
func (h *approvalHarness) roundTrip(t *testing.T, msgs ...pgproto3.FrontendMessage) []string {
	t.Helper()
	syncs := 0
	for _, m := range msgs {
		h.fe.Send(m)
		switch m.(type) {
		case *pgproto3.Sync, *pgproto3.Query:
			syncs++
		}
	}
	if err := h.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var out []string
	for range syncs {
		out = append(out, h.receiveUntilReady(t)...)
	}
	return out
}

func (h *approvalHarness) wantClient(t *testing.T, got []string, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("client got %q, want %q", got, want)
	}
	for i := range got {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Fatalf("client got %q, want %q", got, want)
		}
	}
}

func (h *approvalHarness) wantServer(t *testing.T, want ...string) {
	t.Helper()
	if got := h.server.Seen(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("server saw %q, want %q", got, want)
	}
}

// lastEvent waits for an event of typ and returns the last one.
func (h *approvalHarness) lastEvent(t *testing.T, typ string) *audit.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs := h.Events()
		for i := len(evs) - 1; i >= 0; i-- {
			if evs[i].Type == typ {
				return evs[i]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event; events: %v", typ, evs)
		}
		time.Sleep(time.Millisecond)
	}
}

func pendingError(id string) string {
	return "Error:42501:sigil: write needs a human approval: approval " + id + " is pending"
}

func TestApprovalSimpleProtocol(t *testing.T) {
	h := startApprovalRelay(t, false)
	got := h.roundTrip(t, &pgproto3.Query{String: "insert into items values (1)"})
	id := sessiontest.ID(h.approver.Last(t).Fingerprint)
	h.wantClient(t, got, pendingError(id), "Ready")
	h.wantServer(t, "Sync")
	if ev := h.lastEvent(t, audit.EventDBDenied); ev.Details["approval_id"] != id || ev.Statement != "insert into items values (1)" || ev.Classification != "write" {
		t.Fatalf("denied event = %v", ev)
	}
	if r := h.approver.Last(t); r.Statement != "insert into items values (1)" || r.Class != "write" {
		t.Fatalf("approval asked for %+v", r)
	}

	h.approver.ApproveLast(t)
	// The same statement, written differently, is what was approved.
	got = h.roundTrip(t, &pgproto3.Query{String: "INSERT INTO items VALUES (1) -- approved"})
	h.wantClient(t, got, "CommandComplete", "Ready")
	h.wantServer(t, "Query:INSERT INTO items VALUES (1) -- approved")
	if ev := h.lastEvent(t, audit.EventDBQuery); ev.Details["approval_id"] != id || ev.Details["approved_by"] != "bob" || ev.Details["protocol"] != "simple" {
		t.Fatalf("approved query event = %v", ev)
	}

	// Used once: the next run needs a new approval.
	got = h.roundTrip(t, &pgproto3.Query{String: "insert into items values (1)"})
	h.wantClient(t, got, pendingError(id), "Ready")
	h.wantServer(t, "Sync")

	// Reads need none.
	n := h.approver.Count()
	got = h.roundTrip(t, &pgproto3.Query{String: "select * from items"})
	h.wantClient(t, got, "CommandComplete", "Ready")
	h.wantServer(t, "Query:select * from items")
	if h.approver.Count() != n {
		t.Fatal("a read asked for an approval")
	}

	// A SQL PREPARE of a write would outlive its one approved run.
	got = h.roundTrip(t, &pgproto3.Query{String: "prepare p as delete from items"})
	h.wantClient(t, got, `Error:42501:sigil: statement refused: role "agent-rw" requires a human approval for each write, and a write approval covers one execution, not a SQL PREPARE`, "Ready")
	h.wantServer(t, "Sync")
}

func TestApprovalExtendedProtocol(t *testing.T) {
	h := startApprovalRelay(t, false)
	const q = "insert into items values ($1)"
	run := func(param string, executes int) []string {
		msgs := []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: q},
			&pgproto3.Bind{Parameters: [][]byte{[]byte(param)}},
			&pgproto3.Describe{ObjectType: 'P'},
		}
		for range executes {
			msgs = append(msgs, &pgproto3.Execute{})
		}
		return h.roundTrip(t, append(msgs, &pgproto3.Sync{})...)
	}

	got := run("1", 1)
	id1 := sessiontest.ID(h.approver.Last(t).Fingerprint)
	// The server got the Parse before the gateway saw the Bind.
	h.wantClient(t, got, "ParseComplete", pendingError(id1), "Ready")
	h.wantServer(t, "Parse::"+q, "Sync")
	if r := h.approver.Last(t); r.Statement != q+"\n-- parameters: $1 = '1'" {
		t.Fatalf("reviewers see %q", r.Statement)
	}
	if ev := h.lastEvent(t, audit.EventDBDenied); ev.Details["approval_id"] != id1 || ev.Statement != q {
		t.Fatalf("denied event = %v", ev)
	}
	h.approver.ApproveLast(t)

	// The approval is bound to the parameter value.
	got = run("2", 1)
	id2 := sessiontest.ID(h.approver.Last(t).Fingerprint)
	if id2 == id1 {
		t.Fatal("different parameters share an approval")
	}
	h.wantClient(t, got, "ParseComplete", pendingError(id2), "Ready")
	h.wantServer(t, "Parse::"+q, "Sync")

	// The approved one runs, once: a second Execute of the portal is
	// refused.
	got = run("1", 2)
	h.wantClient(t, got, "ParseComplete", "BindComplete", "NoData", "CommandComplete",
		`Error:42501:sigil: statement refused: portal "" already ran once under approval `+id1, "Ready")
	h.wantServer(t, "Parse::"+q, "Execute:"+q+" [1]", "Sync")
	if ev := h.lastEvent(t, audit.EventDBQuery); ev.Details["approval_id"] != id1 || ev.Details["approved_by"] != "bob" ||
		ev.Statement != q || len(ev.Parameters) != 1 || ev.Parameters[0] != "1" {
		t.Fatalf("approved execution event = %v", ev)
	}

	// And the approval is gone.
	got = run("1", 1)
	h.wantClient(t, got, "ParseComplete", pendingError(id1), "Ready")

	// The session is still in step.
	got = h.roundTrip(t, &pgproto3.Query{String: "select 2"})
	h.wantClient(t, got, "CommandComplete", "Ready")
}

func TestApprovalNamedStatements(t *testing.T) {
	h := startApprovalRelay(t, false)
	const q = "update items set name = $1 where id = 1"
	prepare := func(name string) {
		got := h.roundTrip(t, &pgproto3.Parse{Name: name, Query: q}, &pgproto3.Describe{ObjectType: 'S', Name: name}, &pgproto3.Sync{})
		h.wantClient(t, got, "ParseComplete", "ParameterDescription", "NoData", "Ready")
		h.wantServer(t, "Parse:"+name+":"+q, "Sync")
	}
	exec := func(name, param string) []string {
		return h.roundTrip(t, &pgproto3.Bind{PreparedStatement: name, Parameters: [][]byte{[]byte(param)}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	}

	// Prepared once, executed with several values, each approved alone.
	prepare("s1")
	id := sessiontest.ID(func() string { exec("s1", "x"); return h.approver.Last(t).Fingerprint }())
	h.wantServer(t, "Sync")
	h.approver.ApproveLast(t)
	h.wantClient(t, exec("s1", "x"), "BindComplete", "CommandComplete", "Ready")
	h.wantServer(t, "Execute:"+q+" [x]", "Sync")
	h.wantClient(t, exec("s1", "x"), pendingError(id), "Ready")
	h.wantServer(t, "Sync")

	// A client that pipelines the Bind behind the Parse's Sync: the gateway
	// waits for the server's answer to know the statement.
	got := h.roundTrip(t,
		&pgproto3.Parse{Name: "s2", Query: q}, &pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "s2", Parameters: [][]byte{[]byte("y")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	h.wantClient(t, got, "ParseComplete", "Ready", "Error:42501:sigil: write needs a human approval", "Ready")
	h.wantServer(t, "Parse:s2:"+q, "Sync", "Sync")

	// A redefinition the server refused does not change what s1 runs.
	got = h.roundTrip(t, &pgproto3.Parse{Name: "s1", Query: "select 1"}, &pgproto3.Sync{})
	h.wantClient(t, got, "Error:42P05", "Ready")
	h.wantServer(t, "Parse:s1:select 1", "Sync")
	h.wantClient(t, exec("s1", "x"), pendingError(id), "Ready")
	h.wantServer(t, "Sync")

	// A name no Parse defined may hold a SQL PREPAREd statement.
	h.wantClient(t, exec("nope", "x"), `Error:42501:sigil: statement refused: prepared statement "nope" was not prepared by a Parse message the gateway saw`, "Ready")
	h.wantServer(t, "Sync")

	// Nor does a closed one.
	got = h.roundTrip(t, &pgproto3.Close{ObjectType: 'S', Name: "s2"}, &pgproto3.Sync{})
	h.wantClient(t, got, "CloseComplete", "Ready")
	h.wantServer(t, "Sync")
	h.wantClient(t, exec("s2", "x"), `Error:42501:sigil: statement refused: prepared statement "s2" was closed`, "Ready")
	h.wantServer(t, "Sync")
}

func TestApprovalUnnamedAfterFailedBatch(t *testing.T) {
	h := startApprovalRelay(t, false)
	const w1 = "delete from items where id = 1"
	got := h.roundTrip(t, &pgproto3.Parse{Query: w1}, &pgproto3.Sync{})
	h.wantClient(t, got, "ParseComplete", "Ready")
	h.wantServer(t, "Parse::"+w1, "Sync")

	// An error earlier in the batch makes the server skip the new Parse:
	// the unnamed statement is still w1, whatever the client meant.
	got = h.roundTrip(t, &pgproto3.Parse{Name: "x", Query: "select fail"}, &pgproto3.Parse{Query: "select 1"}, &pgproto3.Sync{})
	h.wantClient(t, got, "Error:42601", "Ready")
	h.wantServer(t, "Parse:x:select fail", "skip *pgproto3.Parse", "Sync")
	got = h.roundTrip(t, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	h.wantClient(t, got, "Error:42501:sigil: write needs a human approval", "Ready")
	h.wantServer(t, "Sync")
	if r := h.approver.Last(t); r.Statement != w1 {
		t.Fatalf("approval asked for %q, want the statement the server holds (%q)", r.Statement, w1)
	}

	// Two different writes either of which the server may hold: refused
	// without asking.
	n := h.approver.Count()
	got = h.roundTrip(t, &pgproto3.Parse{Name: "x", Query: "select fail"}, &pgproto3.Parse{Query: "delete from items"}, &pgproto3.Sync{})
	h.wantClient(t, got, "Error:42601", "Ready")
	h.wantServer(t, "Parse:x:select fail", "skip *pgproto3.Parse", "Sync")
	got = h.roundTrip(t, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	h.wantClient(t, got, `Error:42501:sigil: statement refused: prepared statement "" was redefined in a batch that failed`, "Ready")
	h.wantServer(t, "Sync")
	if h.approver.Count() != n {
		t.Fatal("an ambiguous statement was sent for approval")
	}

	// Parsing it again in the same batch as the Bind settles it.
	got = h.roundTrip(t, &pgproto3.Parse{Query: "select 1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	h.wantClient(t, got, "ParseComplete", "BindComplete", "CommandComplete", "Ready")
	h.wantServer(t, "Parse::select 1", "Execute:select 1 []", "Sync")
}

func TestApprovalBindTooLargeToFingerprint(t *testing.T) {
	h := startApprovalRelay(t, false)
	big := make([]byte, maxBufferedLen+1)
	got := h.roundTrip(t, &pgproto3.Parse{Query: "insert into items values ($1)"}, &pgproto3.Bind{Parameters: [][]byte{big}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	h.wantClient(t, got, "ParseComplete", "Error:42501:sigil: statement refused: its Bind message of", "Ready")
	h.wantServer(t, "Parse::insert into items values ($1)", "Sync")
	if h.approver.Count() != 0 {
		t.Fatal("an unfingerprinted Bind was sent for approval")
	}
}

// TestApprovalWithPgx runs pgx (named statements, binary protocol) against
// the relay: a refused write is a *pgconn.PgError 42501 naming the
// approval, and the connection stays usable.
func TestApprovalWithPgx(t *testing.T) {
	h := startApprovalRelay(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig("postgres://agent@127.0.0.1:5432/app?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	cfg.DialFunc = func(context.Context, string, string) (net.Conn, error) { return h.client, nil }
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	const q = "insert into items (name) values ($1)"
	_, err = conn.Exec(ctx, q, "five")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" || !strings.Contains(pgErr.Message, "write needs a human approval: approval appr-") {
		t.Fatalf("unapproved write: %v, want a 42501 naming the approval", err)
	}
	id := h.approver.ApproveLast(t)
	if !strings.Contains(pgErr.Message, id) {
		t.Fatalf("refusal %q does not name approval %s", pgErr.Message, id)
	}
	if _, err := conn.Exec(ctx, "select 1"); err != nil {
		t.Fatalf("connection unusable after a refusal: %v", err)
	}

	tag, err := conn.Exec(ctx, q, "five")
	if err != nil || tag.String() != "INSERT 0 1" {
		t.Fatalf("approved write = %v, %v", tag, err)
	}
	if ev := h.lastEvent(t, audit.EventDBQuery); ev.Details["approval_id"] != id || ev.Statement != q {
		t.Fatalf("approved write event = %v", ev)
	}
	if _, err := conn.Exec(ctx, q, "five"); !errors.As(err, &pgErr) || pgErr.Code != "42501" || !strings.Contains(pgErr.Message, id) {
		t.Fatalf("second run of a used approval: %v", err)
	}
	if _, err := conn.Exec(ctx, q, "six"); !errors.As(err, &pgErr) || pgErr.Code != "42501" || strings.Contains(pgErr.Message, id) {
		t.Fatalf("other parameter: %v, want a refusal naming another approval", err)
	}
	if _, err := conn.Exec(ctx, "select 1"); err != nil {
		t.Fatalf("connection unusable after refusals: %v", err)
	}
}
