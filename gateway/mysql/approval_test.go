package mysql

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/gateway/session"
	"github.com/sigilhq/sigil/gateway/session/sessiontest"
	"github.com/sigilhq/sigil/gateway/sqlpolicy"
)

type approvalEnv struct {
	*relayEnv
	approver     *sessiontest.Approver
	deprecateEOF bool
}

func startApprovalRelay(t *testing.T, deprecateEOF bool) *approvalEnv {
	t.Helper()
	cl, err := sqlpolicy.NewClassifier(sqlpolicy.Config{Dialect: sqlpolicy.DialectMySQL})
	if err != nil {
		t.Fatal(err)
	}
	cli, gwClient := net.Pipe()
	gwUp, srv := net.Pipe()
	e := &approvalEnv{
		relayEnv:     &relayEnv{rec: &recorder{}, done: make(chan struct{}), stats: make(chan session.Stats, 1)},
		approver:     sessiontest.NewApprover(),
		deprecateEOF: deprecateEOF,
	}
	r := newRelay(relayConfig{
		policy:       sqlpolicy.Grant{Statements: "write", Role: "agent-rw", WriteApproval: true},
		classify:     cl.Classify,
		identity:     "SET @sigil_identity = 'agent/agent/s1'",
		emit:         e.rec.emit,
		checkDBName:  func(context.Context, string) error { return nil },
		findKill:     func(uint64) *killEntry { return nil },
		done:         e.done,
		doneErr:      func() error { return nil },
		approve:      e.approver.Approve,
		deprecateEOF: deprecateEOF,
	}, bufio.NewReaderSize(gwClient, clientBufferSize), gwUp, gwClient)
	go func() { e.stats <- r.run(context.Background(), gwUp) }()
	e.client, e.server = newPipeEnd(cli), newPipeEnd(srv)
	t.Cleanup(func() {
		cli.Close()
		srv.Close()
		<-e.stats
	})
	return e
}

// ok answers the command the server got with an OK packet, which the
// client must receive.
func (e *approvalEnv) ok(t *testing.T) {
	t.Helper()
	e.server.send(t, 1, []byte{0, 1, 0, 2, 0, 0, 0})
	if pk := e.client.next(t); pk.seq != 1 || pk.payload[0] != 0 {
		t.Fatalf("client got %d %q, want OK", pk.seq, pk.payload)
	}
}

// prepareOK answers a COM_STMT_PREPARE with statement id, nparams
// parameters and one column.
func (e *approvalEnv) prepareOK(t *testing.T, id uint32, nparams int) {
	t.Helper()
	ok := []byte{0}
	ok = binary.LittleEndian.AppendUint32(ok, id)
	ok = binary.LittleEndian.AppendUint16(ok, 1)
	ok = binary.LittleEndian.AppendUint16(ok, uint16(nparams))
	ok = append(ok, 0, 0, 0)
	seq := byte(1)
	send := func(p []byte) {
		e.server.send(t, seq, p)
		seq++
	}
	send(ok)
	for _, n := range []int{nparams, 1} {
		for range n {
			send([]byte{3, 'd', 'e', 'f'})
		}
		if n > 0 && !e.deprecateEOF {
			send([]byte{0xfe, 0, 0, 2, 0})
		}
	}
	for range seq - 1 {
		e.client.next(t)
	}
}

// execute is a COM_STMT_EXECUTE of statement id binding one string.
func execute(id uint32, value string) []byte {
	p := []byte{comStmtExecute}
	p = binary.LittleEndian.AppendUint32(p, id)
	p = append(p, 0, 1, 0, 0, 0, 0, 1, typeVarString, 0)
	return appendLenencString(p, value)
}

func (e *approvalEnv) lastDenied(t *testing.T) *audit.Event {
	t.Helper()
	d := e.rec.find(audit.EventDBDenied)
	if len(d) == 0 {
		t.Fatal("no db.denied event")
	}
	return d[len(d)-1]
}

func TestApprovalQuery(t *testing.T) {
	e := startApprovalRelay(t, true)
	const w = "insert into items values (1); update items set name = 'x' where id = 2"
	e.client.send(t, 0, query("select 1; "+w))
	pk := e.client.next(t)
	id := sessiontest.ID(e.approver.Last(t).Fingerprint)
	wantErr(t, pk, 1, erTableAccessDenied, "sigil: write needs a human approval: approval "+id+" is pending")
	e.server.none(t)
	if d := e.lastDenied(t); d.Details["approval_id"] != id || d.Statement != "select 1; "+w {
		t.Fatalf("denied event = %v", d)
	}
	if r := e.approver.Last(t); r.Statement != "select 1; "+w || r.Class != "write" {
		t.Fatalf("approval asked for %+v", r)
	}

	// Still usable, and reads need no approval.
	n := e.approver.Count()
	e.client.send(t, 0, query("select 2"))
	if pk := e.server.next(t); string(pk.payload) != "\x03select 2" {
		t.Fatalf("server got %q", pk.payload)
	}
	e.ok(t)
	if e.approver.Count() != n {
		t.Fatal("a read asked for an approval")
	}

	e.approver.ApproveLast(t)
	// The whole text, written differently, is what was approved; it runs
	// once.
	again := "SELECT 1;\nINSERT INTO items VALUES (1); UPDATE items SET name='x' WHERE id=2 -- approved"
	e.client.send(t, 0, query(again))
	if pk := e.server.next(t); string(pk.payload[1:]) != again {
		t.Fatalf("server got %q", pk.payload)
	}
	e.ok(t)
	q := e.rec.find(audit.EventDBQuery)
	if ev := q[len(q)-1]; ev.Statement != again || ev.Details["approval_id"] != id || ev.Details["approved_by"] != "bob" {
		t.Fatalf("approved query event = %v", ev)
	}
	e.client.send(t, 0, query(again))
	wantErr(t, e.client.next(t), 1, erTableAccessDenied, "approval "+id+" is pending")
	e.server.none(t)

	e.client.send(t, 0, query("prepare s from 'delete from items'"))
	wantErr(t, e.client.next(t), 1, erTableAccessDenied, "not a SQL PREPARE that could run it again")
	e.server.none(t)
}

func TestApprovalPreparedStatement(t *testing.T) {
	e := startApprovalRelay(t, true)
	const text = "insert into items (name) values (?)"
	e.client.send(t, 0, append([]byte{comStmtPrepare}, text...))
	if pk := e.server.next(t); string(pk.payload[1:]) != text {
		t.Fatalf("server got %q", pk.payload)
	}
	e.prepareOK(t, 9, 1)

	e.client.send(t, 0, execute(9, "five"))
	pk := e.client.next(t)
	id := sessiontest.ID(e.approver.Last(t).Fingerprint)
	wantErr(t, pk, 1, erTableAccessDenied, "approval "+id+" is pending")
	e.server.none(t)
	if r := e.approver.Last(t); r.Statement != text+"\n-- parameters: ?1 = 'five'" {
		t.Fatalf("reviewers see %q", r.Statement)
	}
	if d := e.lastDenied(t); d.Details["approval_id"] != id || d.Details["protocol"] != "prepared" || d.Statement != text {
		t.Fatalf("denied event = %v", d)
	}
	e.approver.ApproveLast(t)

	// Bound to the value.
	e.client.send(t, 0, execute(9, "six"))
	pk = e.client.next(t)
	other := sessiontest.ID(e.approver.Last(t).Fingerprint)
	if other == id {
		t.Fatal("different values share an approval")
	}
	wantErr(t, pk, 1, erTableAccessDenied, "approval "+other+" is pending")
	e.server.none(t)

	// The approved value runs once.
	e.client.send(t, 0, execute(9, "five"))
	if pk := e.server.next(t); !slices.Equal(pk.payload, execute(9, "five")) {
		t.Fatalf("server got %q", pk.payload)
	}
	e.ok(t)
	q := e.rec.find(audit.EventDBQuery)
	if ev := q[len(q)-1]; ev.Statement != text || !slices.Equal(ev.Parameters, []string{"five"}) || ev.Details["approval_id"] != id || ev.Details["approved_by"] != "bob" {
		t.Fatalf("approved execution event = %v", ev)
	}
	e.client.send(t, 0, execute(9, "five"))
	wantErr(t, e.client.next(t), 1, erTableAccessDenied, "approval "+id+" is pending")
	e.server.none(t)

	// Parameters sent apart from the execution cannot be reviewed.
	e.client.send(t, 0, append([]byte{comStmtSendLongData, 9, 0, 0, 0, 0, 0}, "long"...))
	e.server.next(t)
	e.client.send(t, 0, execute(9, "five"))
	wantErr(t, e.client.next(t), 1, erTableAccessDenied, "COM_STMT_SEND_LONG_DATA")
	e.server.none(t)

	// A read needs no approval.
	n := e.approver.Count()
	e.client.send(t, 0, append([]byte{comStmtPrepare}, "select name from items where id = ?"...))
	e.server.next(t)
	e.prepareOK(t, 10, 1)
	e.client.send(t, 0, execute(10, "1"))
	e.server.next(t)
	e.ok(t)
	if e.approver.Count() != n {
		t.Fatal("a read asked for an approval")
	}

	// An id the gateway never saw prepared is refused.
	e.client.send(t, 0, execute(42, "x"))
	wantErr(t, e.client.next(t), 1, erTableAccessDenied, "was not prepared through the gateway")
	e.server.none(t)
}

// TestApprovalPipelinedExecute: a client executing "the last prepared
// statement" (id -1) right behind its COM_STMT_PREPARE gets the decision
// for that statement, not for the one prepared before it.
func TestApprovalPipelinedExecute(t *testing.T) {
	for _, deprecateEOF := range []bool{true, false} {
		t.Run(fmt.Sprintf("deprecate_eof=%v", deprecateEOF), func(t *testing.T) { testApprovalPipelinedExecute(t, deprecateEOF) })
	}
}

func testApprovalPipelinedExecute(t *testing.T, deprecateEOF bool) {
	e := startApprovalRelay(t, deprecateEOF)
	e.client.send(t, 0, append([]byte{comStmtPrepare}, "select ?"...))
	e.server.next(t)
	e.prepareOK(t, 1, 1)

	const text = "delete from items where name = ?"
	e.client.send(t, 0, append([]byte{comStmtPrepare}, text...))
	e.client.send(t, 0, execute(0xffffffff, "x"))
	e.server.next(t)
	// The execution waits for the server's answer to the prepare.
	e.server.none(t)
	if e.approver.Count() != 0 {
		t.Fatal("decided before the statement was known")
	}
	e.prepareOK(t, 2, 1)
	wantErr(t, e.client.next(t), 1, erTableAccessDenied, "write needs a human approval")
	if r := e.approver.Last(t); !strings.HasPrefix(r.Statement, text) {
		t.Fatalf("approval asked for %q, want %q", r.Statement, text)
	}
	e.server.none(t)
}
