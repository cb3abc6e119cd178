package postgres

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/gateway/session"
	"github.com/sigilhq/sigil/gateway/sqlpolicy"
	"github.com/sigilhq/sigil/identity/certid"
)

// fakeServer is a protocol peer under the test's control: it answers
// each frontend message minimally and records the message types it saw.
type fakeServer struct {
	mu   sync.Mutex
	seen []string
}

func (f *fakeServer) record(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = append(f.seen, s)
}

func (f *fakeServer) Seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen...)
}

func (f *fakeServer) serve(conn net.Conn) {
	be := pgproto3.NewBackend(conn, conn)
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *pgproto3.Query:
			f.record("Query:" + m.String)
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Parse:
			f.record("Parse:" + m.Query)
			be.Send(&pgproto3.ParseComplete{})
		case *pgproto3.Bind:
			f.record("Bind")
			be.Send(&pgproto3.BindComplete{})
		case *pgproto3.Describe:
			f.record("Describe")
			be.Send(&pgproto3.NoData{})
		case *pgproto3.Execute:
			f.record("Execute")
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
		case *pgproto3.Sync:
			f.record("Sync")
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		case *pgproto3.Terminate:
			f.record("Terminate")
			return
		default:
			f.record(fmt.Sprintf("%T", m))
		}
		if err := be.Flush(); err != nil {
			return
		}
	}
}

type relayHarness struct {
	fe     *pgproto3.Frontend
	server *fakeServer
	mu     sync.Mutex
	events []*audit.Event
}

func (h *relayHarness) Events() []*audit.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*audit.Event(nil), h.events...)
}

// waitEvent polls until the last event recorded is a db.query of stmt
// and returns all events.
func (h *relayHarness) waitEvent(t *testing.T, stmt string) []*audit.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		evs := h.Events()
		if n := len(evs); n > 0 && evs[n-1].Type == audit.EventDBQuery && evs[n-1].Statement == stmt {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("no db.query event for %q; events: %v", stmt, evs)
		}
		time.Sleep(time.Millisecond)
	}
}

func newRelayHarness(t *testing.T, p sqlpolicy.Grant) *relayHarness {
	t.Helper()
	cl, err := sqlpolicy.NewClassifier(sqlpolicy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	clientConn, gwClient := net.Pipe()
	gwUp, serverConn := net.Pipe()
	h := &relayHarness{server: &fakeServer{}}
	r := newRelay(relayConfig{
		policy:   p,
		classify: cl.Classify,
		emit: func(ev *audit.Event) {
			h.mu.Lock()
			h.events = append(h.events, ev)
			h.mu.Unlock()
		},
	}, bufio.NewReader(gwClient), bufio.NewWriter(gwUp), gwClient)
	go h.server.serve(serverConn)
	go r.clientLoop(context.Background())
	go r.serverLoop(gwUp)
	t.Cleanup(func() {
		clientConn.Close()
		gwClient.Close()
		gwUp.Close()
		serverConn.Close()
	})
	clientConn.SetDeadline(time.Now().Add(10 * time.Second))
	h.fe = pgproto3.NewFrontend(clientConn, clientConn)
	return h
}

// receiveUntilReady returns a description of each message up to and
// including ReadyForQuery.
func (h *relayHarness) receiveUntilReady(t *testing.T) []string {
	t.Helper()
	var out []string
	for {
		msg, err := h.fe.Receive()
		if err != nil {
			t.Fatalf("receive: %v (so far %v)", err, out)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			out = append(out, "Error:"+m.Code+":"+m.Message)
		case *pgproto3.ReadyForQuery:
			return append(out, "Ready")
		default:
			out = append(out, strings.TrimPrefix(fmt.Sprintf("%T", m), "*pgproto3."))
		}
	}
}

func TestRelay(t *testing.T) {
	readOnly := sqlpolicy.Grant{Statements: "read", Role: "dev"}
	long := strings.Repeat("é", 400)
	tests := []struct {
		name       string
		policy     sqlpolicy.Grant
		send       []pgproto3.FrontendMessage
		wantClient []string
		wantServer []string
		check      func(t *testing.T, evs []*audit.Event)
	}{
		{
			name:       "simple query allowed",
			policy:     readOnly,
			send:       []pgproto3.FrontendMessage{&pgproto3.Query{String: "select 1"}},
			wantClient: []string{"CommandComplete", "Ready"},
			wantServer: []string{"Query:select 1"},
			check: func(t *testing.T, evs []*audit.Event) {
				if len(evs) != 1 || evs[0].Type != audit.EventDBQuery || evs[0].Statement != "select 1" || evs[0].Classification != "read" {
					t.Fatalf("events = %v", evs)
				}
			},
		},
		{
			name:       "simple query denied",
			policy:     readOnly,
			send:       []pgproto3.FrontendMessage{&pgproto3.Query{String: "insert into t values (1)"}},
			wantClient: []string{`Error:42501:sigil: statement refused: INSERT into t is a write statement; role "dev" grants read`, "Ready"},
			wantServer: []string{"Sync"},
			check: func(t *testing.T, evs []*audit.Event) {
				if len(evs) != 1 || evs[0].Type != audit.EventDBDenied || evs[0].Statement != "insert into t values (1)" || evs[0].Classification != "write" {
					t.Fatalf("events = %v", evs)
				}
			},
		},
		{
			name:   "write approval without an approver refuses writes",
			policy: sqlpolicy.Grant{Statements: "write", Role: "ops", WriteApproval: true},
			send:   []pgproto3.FrontendMessage{&pgproto3.Query{String: "delete from t"}},
			wantClient: []string{
				`Error:42501:sigil: write refused: role "ops" requires a human approval for each write, and write approvals are not available on this gateway`, "Ready"},
			wantServer: []string{"Sync"},
		},
		{
			name:   "extended protocol denied until Sync",
			policy: readOnly,
			send: []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: "update t set a = 1"},
				&pgproto3.Bind{},
				&pgproto3.Describe{ObjectType: 'P'},
				&pgproto3.Execute{},
				&pgproto3.Sync{},
			},
			wantClient: []string{`Error:42501:sigil: statement refused: UPDATE t is a write statement; role "dev" grants read`, "Ready"},
			wantServer: []string{"Sync"},
		},
		{
			name:   "refusal comes after the responses to earlier pipelined messages",
			policy: readOnly,
			send: []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: "select 1"},
				&pgproto3.Bind{},
				&pgproto3.Execute{},
				&pgproto3.Parse{Query: "drop table t"},
				&pgproto3.Bind{},
				&pgproto3.Execute{},
				&pgproto3.Sync{},
			},
			wantClient: []string{"ParseComplete", "BindComplete", "CommandComplete", `Error:42501:sigil: statement refused: DROP is an admin statement; role "dev" grants read`, "Ready"},
			wantServer: []string{"Parse:select 1", "Bind", "Execute", "Sync"},
		},
		{
			name:   "extended parameters recorded and bounded",
			policy: readOnly,
			send: []pgproto3.FrontendMessage{
				&pgproto3.Parse{Name: "s1", Query: "select $1, $2, $3, $4"},
				&pgproto3.Bind{
					PreparedStatement:    "s1",
					ParameterFormatCodes: []int16{0, 1, 0, 0},
					Parameters:           [][]byte{[]byte("hello"), {0xde, 0xad}, nil, []byte(long)},
				},
				&pgproto3.Execute{},
				&pgproto3.Sync{},
			},
			wantClient: []string{"ParseComplete", "BindComplete", "CommandComplete", "Ready"},
			wantServer: []string{"Parse:select $1, $2, $3, $4", "Bind", "Execute", "Sync"},
			check: func(t *testing.T, evs []*audit.Event) {
				if len(evs) != 1 {
					t.Fatalf("events = %v", evs)
				}
				ev := evs[0]
				if ev.Statement != "select $1, $2, $3, $4" || ev.Classification != "read" || ev.Details["protocol"] != "extended" {
					t.Fatalf("event = %v", ev)
				}
				if len(ev.Parameters) != 4 || ev.Parameters[0] != "hello" || ev.Parameters[1] != `\xdead` || ev.Parameters[2] != "NULL" {
					t.Fatalf("parameters = %q", ev.Parameters)
				}
				if p := ev.Parameters[3]; len(p) > maxAuditParamBytes || !strings.HasSuffix(p, "…[truncated]") || !strings.HasPrefix(p, "éé") {
					t.Fatalf("long parameter = %q (%d bytes)", p, len(p))
				}
			},
		},
		{
			name:   "at most 64 parameters",
			policy: readOnly,
			send: []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: "select 1"},
				&pgproto3.Bind{Parameters: func() [][]byte {
					ps := make([][]byte, 100)
					for i := range ps {
						ps[i] = []byte(fmt.Sprint(i))
					}
					return ps
				}()},
				&pgproto3.Execute{},
				&pgproto3.Sync{},
			},
			wantClient: []string{"ParseComplete", "BindComplete", "CommandComplete", "Ready"},
			wantServer: []string{"Parse:select 1", "Bind", "Execute", "Sync"},
			check: func(t *testing.T, evs []*audit.Event) {
				ps := evs[0].Parameters
				if len(ps) != 65 || ps[63] != "63" || ps[64] != "…[36 more parameters]" {
					t.Fatalf("parameters = %q", ps)
				}
			},
		},
		{
			name:       "DO block fails closed for read",
			policy:     readOnly,
			send:       []pgproto3.FrontendMessage{&pgproto3.Query{String: "do $$ begin perform 1; end $$"}},
			wantClient: []string{"Error:42501", "Ready"},
			wantServer: []string{"Sync"},
		},
		{
			name:       "admin may run anything",
			policy:     sqlpolicy.Grant{Statements: "admin", Role: "dba"},
			send:       []pgproto3.FrontendMessage{&pgproto3.Query{String: "drop table t"}},
			wantClient: []string{"CommandComplete", "Ready"},
			wantServer: []string{"Query:drop table t"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newRelayHarness(t, tt.policy)
			for _, m := range tt.send {
				h.fe.Send(m)
			}
			if err := h.fe.Flush(); err != nil {
				t.Fatal(err)
			}
			got := h.receiveUntilReady(t)
			if len(got) != len(tt.wantClient) {
				t.Fatalf("client got %q, want %q", got, tt.wantClient)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.wantClient[i]) {
					t.Fatalf("client got %q, want %q", got, tt.wantClient)
				}
			}
			// A follow-up query proves the session is still in step.
			h.fe.Send(&pgproto3.Query{String: "select 2"})
			h.fe.Flush()
			if after := h.receiveUntilReady(t); strings.Join(after, ",") != "CommandComplete,Ready" {
				t.Fatalf("follow-up query got %q", after)
			}
			wantServer := append(append([]string(nil), tt.wantServer...), "Query:select 2")
			if got := h.server.Seen(); strings.Join(got, "|") != strings.Join(wantServer, "|") {
				t.Fatalf("server saw %q, want %q", got, wantServer)
			}
			// Events are emitted once a batch is flushed upstream, so the
			// follow-up's may come just after its reply.
			evs := h.waitEvent(t, "select 2")
			if tt.check != nil {
				tt.check(t, evs[:len(evs)-1])
			}
		})
	}
}

func TestRelayRefusesOversizedStatement(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		code string
	}{
		// Only the header: the relay must refuse before reading 16 MiB.
		{[]byte{'Q', 0x01, 0x00, 0x00, 0x10}, codeProgramLimit},
		{[]byte{'P', 0x01, 0x00, 0x00, 0x10}, codeProgramLimit},
		{[]byte{'Q', 0x00, 0x00, 0x00, 0x03}, codeProtocolViolation},
		{[]byte{'d', 0x7f, 0xff, 0xff, 0xff}, codeProtocolViolation},
	} {
		r := newRelay(relayConfig{policy: sqlpolicy.Grant{Statements: "admin"}, classify: func(string) sqlpolicy.Result { return sqlpolicy.Result{Class: sqlpolicy.ClassRead} }, emit: func(*audit.Event) {}},
			bufio.NewReader(bytes.NewReader(tc.in)), bufio.NewWriter(io.Discard), io.Discard)
		err := r.clientLoop(context.Background())
		var ce *clientError
		if !errors.As(err, &ce) || ce.code != tc.code {
			t.Fatalf("input %x: err = %v, want code %s", tc.in, err, tc.code)
		}
	}
}

func TestErrorResponseRoundTrip(t *testing.T) {
	b := errorResponse("FATAL", codeInvalidAuthorization, "no\x00 way \xff")
	var m pgproto3.ErrorResponse
	if err := m.Decode(b[5:]); err != nil {
		t.Fatal(err)
	}
	if m.Severity != "FATAL" || m.Code != "28000" || m.Message != "no way ?" {
		t.Fatalf("decoded %+v", m)
	}
}

func TestEscapeOption(t *testing.T) {
	if got := escapeOption(`sigil.identity=a b\c`); got != `sigil.identity=a\ b\\c` {
		t.Fatalf("escapeOption = %q", got)
	}
}

func TestPlainAndGSSENCRefused(t *testing.T) {
	s := &Server{cfg: Config{HandshakeTimeout: 5 * time.Second}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), cancels: map[uint32]*cancelKey{}}
	startup := encodeStartup([]string{"user"}, map[string]string{"user": "alice"})
	gssenc := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30}

	client, srv := net.Pipe()
	defer client.Close()
	go s.HandleSSLRequest(context.Background(), srv)
	client.SetDeadline(time.Now().Add(5 * time.Second))
	client.Write(gssenc)
	var b [1]byte
	if _, err := io.ReadFull(client, b[:]); err != nil || b[0] != 'N' {
		t.Fatalf("GSSENCRequest answer = %q, %v", b[0], err)
	}
	client.Write(startup)
	fe := pgproto3.NewFrontend(client, client)
	msg, err := fe.Receive()
	if e, ok := msg.(*pgproto3.ErrorResponse); err != nil || !ok || e.Code != "28000" || !strings.Contains(e.Message, "SSL required") {
		t.Fatalf("plain startup after GSSENC: %#v, %v", msg, err)
	}

	client2, srv2 := net.Pipe()
	defer client2.Close()
	go s.HandlePlain(context.Background(), srv2)
	client2.SetDeadline(time.Now().Add(5 * time.Second))
	client2.Write(startup)
	msg, err = pgproto3.NewFrontend(client2, client2).Receive()
	if e, ok := msg.(*pgproto3.ErrorResponse); err != nil || !ok || e.Code != "28000" || !strings.Contains(e.Message, "sslmode=verify-full") {
		t.Fatalf("plain startup: %#v, %v", msg, err)
	}

	// An unknown cancel key is ignored silently: the connection just closes.
	client3, srv3 := net.Pipe()
	defer client3.Close()
	go s.HandlePlain(context.Background(), srv3)
	client3.SetDeadline(time.Now().Add(5 * time.Second))
	client3.Write(encodeCancel(1234, 5678))
	if n, err := client3.Read(b[:]); n != 0 || err != io.EOF {
		t.Fatalf("unknown cancel key: read %d, %v", n, err)
	}
}

func TestUpstreamParams(t *testing.T) {
	sess := &session.Session{ID: "sid", Identity: &certid.Identity{Name: "alice smith", Kind: certid.KindHuman}, DBUser: "reader", DBName: "app"}
	p := &startupPacket{
		params: map[string]string{"user": "x", "database": "y", "application_name": "evil", "options": "-c search_path=s", "Sigil.Identity": "bob", "client_encoding": "UTF8", "_pq_.x": "1"},
		order:  []string{"user", "database", "application_name", "options", "Sigil.Identity", "client_encoding", "_pq_.x"},
	}
	order, params := upstreamParams(sess, p)
	want := map[string]string{
		"user": "reader", "database": "app", "application_name": "sigil:alice smith", "client_encoding": "UTF8",
		"options": `-c search_path=s -c sigil.identity=alice\ smith/human/sid`,
	}
	if len(order) != len(want) || len(params) != len(want) {
		t.Fatalf("order %q params %q", order, params)
	}
	for k, v := range want {
		if params[k] != v {
			t.Errorf("%s = %q, want %q", k, params[k], v)
		}
	}
}

// TestRelayForwardsBytesAndRecordsOnExit streams messages larger than
// the read buffer and checks that what reaches the server is exactly what
// the client sent, and that the batch's events are emitted by the time
// the client loop returns.
func TestRelayForwardsBytesAndRecordsOnExit(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789"), 10000)
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{
			name: "terminate",
			in: encodeFrontend(t, &pgproto3.Query{String: "select 1"}, &pgproto3.CopyData{Data: big}, &pgproto3.Describe{ObjectType: 'S', Name: "s"},
				&pgproto3.Bind{Parameters: [][]byte{big}}, &pgproto3.Execute{}, &pgproto3.Sync{}, &pgproto3.Terminate{}),
			want: errTerminated,
		},
		{
			name: "eof",
			in:   encodeFrontend(t, &pgproto3.Query{String: "select 1"}, &pgproto3.CopyData{Data: big}, &pgproto3.Sync{}),
		},
	} {
		// A tiny read buffer splits every message across reads; a large
		// one holds the whole input, so nothing is emitted before the
		// loop ends.
		for _, size := range []int{16, 1 << 20} {
			t.Run(fmt.Sprintf("%s/%d", tc.name, size), func(t *testing.T) {
				var up bytes.Buffer
				var events []*audit.Event
				r := newRelay(relayConfig{
					policy:   sqlpolicy.Grant{Statements: "read", Role: "dev"},
					classify: stubClassify,
					emit:     func(ev *audit.Event) { events = append(events, ev) },
				}, bufio.NewReaderSize(bytes.NewReader(tc.in), size), bufio.NewWriterSize(&up, 64), io.Discard)
				err := r.clientLoop(context.Background())
				if !errors.Is(err, tc.want) {
					t.Fatalf("clientLoop = %v, want %v", err, tc.want)
				}
				if tc.want == nil {
					// On EOF the last batch is still in the write buffer; the
					// server loses nothing it would have been sent.
					_ = r.uw.Flush()
				}
				if !bytes.Equal(up.Bytes(), tc.in) {
					t.Fatalf("server got %d bytes, client sent %d (equal prefix: %v)", up.Len(), len(tc.in), bytes.HasPrefix(tc.in, up.Bytes()))
				}
				if len(events) == 0 || events[0].Statement != "select 1" || events[0].Details["protocol"] != "simple" {
					t.Fatalf("events = %v", events)
				}
			})
		}
	}
}
