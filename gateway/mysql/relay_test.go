package mysql

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/gateway/session"
	"github.com/sigilhq/sigil/gateway/sqlpolicy"
)

type packet struct {
	seq     byte
	payload []byte
}

// pipeEnd reads packets from one side of a pipe in the background.
type pipeEnd struct {
	conn    net.Conn
	packets chan packet
}

func newPipeEnd(c net.Conn) *pipeEnd {
	p := &pipeEnd{conn: c, packets: make(chan packet, 64)}
	go func() {
		defer close(p.packets)
		for {
			seq, b, err := readPacket(c, nil, 1<<25)
			if err != nil {
				return
			}
			p.packets <- packet{seq, b}
		}
	}()
	return p
}

func (p *pipeEnd) next(t *testing.T) packet {
	t.Helper()
	select {
	case pk, ok := <-p.packets:
		if !ok {
			t.Fatal("connection closed")
		}
		return pk
	case <-time.After(5 * time.Second):
		t.Fatal("no packet within 5s")
	}
	return packet{}
}

func (p *pipeEnd) none(t *testing.T) {
	t.Helper()
	select {
	case pk, ok := <-p.packets:
		if ok {
			t.Fatalf("unexpected packet %d %q", pk.seq, pk.payload)
		}
	case <-time.After(50 * time.Millisecond):
	}
}

func (p *pipeEnd) send(t *testing.T, seq byte, payload []byte) {
	t.Helper()
	if _, err := p.conn.Write(appendPacket(nil, seq, payload)); err != nil {
		t.Fatal(err)
	}
}

type recorder struct {
	mu     sync.Mutex
	events []*audit.Event
}

func (r *recorder) emit(ev *audit.Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
}

func (r *recorder) find(typ string) []*audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*audit.Event
	for _, ev := range r.events {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

type relayEnv struct {
	client, server *pipeEnd
	rec            *recorder
	done           chan struct{}
	stats          chan session.Stats
}

func testClassify(sql string) sqlpolicy.Result {
	l := strings.ToLower(sql)
	switch {
	case strings.HasPrefix(l, "select"), strings.HasPrefix(l, "use"):
		return sqlpolicy.Result{Class: sqlpolicy.ClassRead, Reason: "SELECT", Statements: 1}
	case strings.HasPrefix(l, "insert"):
		return sqlpolicy.Result{Class: sqlpolicy.ClassWrite, Reason: "INSERT into t", Statements: 1}
	case strings.HasPrefix(l, "kill"):
		return sqlpolicy.Result{Class: sqlpolicy.ClassAdmin, Reason: "KILL", Statements: 1}
	}
	return sqlpolicy.Result{Class: sqlpolicy.ClassUnknown, Reason: "parse error"}
}

func startRelay(t *testing.T, granted string) *relayEnv {
	t.Helper()
	cli, gwClient := net.Pipe()
	gwUp, srv := net.Pipe()
	e := &relayEnv{rec: &recorder{}, done: make(chan struct{}), stats: make(chan session.Stats, 1)}
	cfg := relayConfig{
		policy:   sqlpolicy.Grant{Statements: granted, Role: "db-" + granted},
		classify: testClassify,
		identity: "SET @sigil_identity = 'alice/human/s1'",
		emit:     e.rec.emit,
		checkDBName: func(_ context.Context, name string) error {
			if name != "app" {
				return &session.WhoError{Message: "this certificate is for database name \"app\", not \"" + name + "\""}
			}
			return nil
		},
		findKill: func(id uint64) *killEntry {
			if id == 1<<30+5 || id == 77 {
				return &killEntry{gwID: 1<<30 + 5, threadID: 77, sessionID: "s2"}
			}
			return nil
		},
		done:    e.done,
		doneErr: func() error { return &session.WhoError{Message: "user alice is locked: laptop stolen"} },
	}
	r := newRelay(cfg, bufio.NewReaderSize(gwClient, clientBufferSize), gwUp, gwClient)
	go func() { e.stats <- r.run(context.Background(), gwUp) }()
	e.client, e.server = newPipeEnd(cli), newPipeEnd(srv)
	t.Cleanup(func() {
		cli.Close()
		srv.Close()
		<-e.stats
	})
	return e
}

func query(s string) []byte { return append([]byte{comQuery}, s...) }

func wantErr(t *testing.T, pk packet, seq byte, code uint16, contains string) {
	t.Helper()
	if pk.seq != seq || len(pk.payload) < 9 || pk.payload[0] != 0xff {
		t.Fatalf("want ERR seq %d, got seq %d %q", seq, pk.seq, pk.payload)
	}
	e := parseErrPacket(pk.payload)
	if e.code != code || !strings.Contains(e.msg, contains) {
		t.Fatalf("ERR = %v, want %d containing %q", e, code, contains)
	}
}

func TestRelayQueryPolicy(t *testing.T) {
	e := startRelay(t, "read")
	e.client.send(t, 0, query("select 1"))
	if pk := e.server.next(t); string(pk.payload) != "\x03select 1" || pk.seq != 0 {
		t.Fatalf("server got %d %q", pk.seq, pk.payload)
	}
	e.server.send(t, 1, []byte{0, 0, 0, 2, 0, 0, 0})
	if pk := e.client.next(t); pk.seq != 1 || pk.payload[0] != 0 {
		t.Fatalf("client got %d %q", pk.seq, pk.payload)
	}

	e.client.send(t, 0, query("insert into t values (1)"))
	wantErr(t, e.client.next(t), 1, erTableAccessDenied, `statement refused: INSERT into t is a write statement; role "db-read" grants read`)
	e.server.none(t)

	e.client.send(t, 0, query("frobnicate"))
	wantErr(t, e.client.next(t), 1, erTableAccessDenied, "cannot be classified")

	e.client.send(t, 0, query("SELECT @x := 1, @sigil_identity := 'bob'"))
	wantErr(t, e.client.next(t), 1, erTableAccessDenied, "@sigil_identity is set by the gateway")

	e.client.send(t, 0, query("use other"))
	wantErr(t, e.client.next(t), 1, erDBAccessDenied, `not "other"`)
	e.client.send(t, 0, append([]byte{comInitDB}, "other"...))
	wantErr(t, e.client.next(t), 1, erDBAccessDenied, `not "other"`)
	e.client.send(t, 0, append([]byte{comInitDB}, "app"...))
	if pk := e.server.next(t); string(pk.payload) != "\x02app" {
		t.Fatalf("server got %q", pk.payload)
	}
	e.server.send(t, 1, []byte{0, 0, 0, 2, 0, 0, 0})
	e.client.next(t)

	e.client.send(t, 0, []byte{comChangeUser, 'x', 0})
	wantErr(t, e.client.next(t), 1, erAccessDenied, "change user is not allowed")
	e.client.send(t, 0, []byte{0x12, 0, 0, 0, 0}) // COM_BINLOG_DUMP
	wantErr(t, e.client.next(t), 1, erUnknownCommand, "not supported")
	e.client.send(t, 0, []byte{comShutdown})
	wantErr(t, e.client.next(t), 1, erTableAccessDenied, "COM_SHUTDOWN is an admin statement")
	e.server.none(t)

	if q := e.rec.find(audit.EventDBQuery); len(q) != 1 || q[0].Statement != "select 1" || q[0].Classification != "read" {
		t.Fatalf("db.query events = %v", q)
	}
	if d := e.rec.find(audit.EventDBDenied); len(d) != 8 || d[0].Statement != "insert into t values (1)" || !strings.Contains(d[0].Error, "1142") && !strings.Contains(d[0].Error, "statement refused") {
		t.Fatalf("db.denied events = %v", d)
	}
}

func TestRelayPreparedStatement(t *testing.T) {
	e := startRelay(t, "read")
	text := "select name from items where id = ? and name <> ? and x = ?"
	e.client.send(t, 0, append([]byte{comStmtPrepare}, text...))
	if pk := e.server.next(t); string(pk.payload[1:]) != text {
		t.Fatalf("server got %q", pk.payload)
	}
	// COM_STMT_PREPARE_OK: id 9, 1 column, 3 params, then definitions.
	e.server.send(t, 1, []byte{0, 9, 0, 0, 0, 1, 0, 3, 0, 0, 0, 0})
	for i := range 4 {
		e.server.send(t, byte(2+i), []byte{3, 'd', 'e', 'f'})
	}
	for range 5 {
		e.client.next(t)
	}
	exec := []byte{comStmtExecute, 9, 0, 0, 0, 0, 1, 0, 0, 0}
	exec = append(exec, 0b100) // third param NULL
	exec = append(exec, 1, typeLongLong, 0, typeVarString, 0, typeNull, 0)
	exec = binary.LittleEndian.AppendUint64(exec, uint64(2))
	exec = appendLenencString(exec, "zzz-param")
	e.client.send(t, 0, exec)
	if pk := e.server.next(t); !slices.Equal(pk.payload, exec) {
		t.Fatalf("execute not forwarded unchanged")
	}
	// Re-execution without new types reuses the bound ones.
	exec2 := []byte{comStmtExecute, 9, 0, 0, 0, 0, 1, 0, 0, 0, 0b100, 0}
	exec2 = binary.LittleEndian.AppendUint64(exec2, uint64(1<<63))
	exec2 = appendLenencString(exec2, "\xff\xfe")
	e.client.send(t, 0, exec2)
	e.server.next(t)
	q := e.rec.find(audit.EventDBQuery)
	if len(q) != 2 {
		t.Fatalf("db.query events = %v", q)
	}
	if q[0].Statement != text || !slices.Equal(q[0].Parameters, []string{"2", "zzz-param", "NULL"}) || q[0].Details["protocol"] != "prepared" {
		t.Fatalf("first execution = %v", q[0])
	}
	if !slices.Equal(q[1].Parameters, []string{"-9223372036854775808", `\xfffe`, "NULL"}) {
		t.Fatalf("second execution = %v", q[1].Parameters)
	}

	e.client.send(t, 0, append([]byte{comStmtPrepare}, "insert into t values (?)"...))
	wantErr(t, e.client.next(t), 1, erTableAccessDenied, "statement refused")
	e.server.none(t)
}

func TestRelayResetConnection(t *testing.T) {
	e := startRelay(t, "read")
	e.client.send(t, 0, []byte{comResetConnection})
	if pk := e.server.next(t); string(pk.payload) != "\x1f" {
		t.Fatalf("server got %q", pk.payload)
	}
	if pk := e.server.next(t); string(pk.payload) != "\x03SET @sigil_identity = 'alice/human/s1'" || pk.seq != 0 {
		t.Fatalf("server got %d %q, want the identity again", pk.seq, pk.payload)
	}
	e.server.send(t, 1, []byte{0, 0, 0, 2, 0, 0, 0})
	e.server.send(t, 1, []byte{0, 0, 0, 2, 0, 0, 9})
	if pk := e.client.next(t); pk.payload[6] != 0 {
		t.Fatalf("client got the identity statement's answer")
	}
	e.client.none(t)
	// An identity that cannot be set again ends the session.
	e.client.send(t, 0, []byte{comResetConnection})
	e.server.next(t)
	e.server.next(t)
	e.server.send(t, 1, []byte{0, 0, 0, 2, 0, 0, 0})
	e.server.send(t, 1, errPacket(1, 1064, "42000", "nope")[4:])
	e.client.next(t)
	select {
	case st := <-e.stats:
		e.stats <- st
		if st.Err == nil || !strings.Contains(st.Err.Error(), "@sigil_identity") {
			t.Fatalf("session end error = %v", st.Err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("session did not end")
	}
}

func TestRelayKill(t *testing.T) {
	e := startRelay(t, "read")
	e.client.send(t, 0, query("KILL QUERY 1073741829"))
	if pk := e.server.next(t); string(pk.payload) != "\x03KILL QUERY 77" {
		t.Fatalf("server got %q", pk.payload)
	}
	e.server.send(t, 1, []byte{0, 0, 0, 2, 0, 0, 0})
	e.client.next(t)
	e.client.send(t, 0, query("kill 77"))
	if pk := e.server.next(t); string(pk.payload) != "\x03KILL CONNECTION 77" {
		t.Fatalf("server got %q", pk.payload)
	}
	e.server.send(t, 1, []byte{0, 0, 0, 2, 0, 0, 0})
	e.client.next(t)
	e.client.send(t, 0, query("KILL QUERY 12"))
	wantErr(t, e.client.next(t), 1, erNoSuchThread, "Unknown thread id: 12")
	e.client.send(t, 0, []byte{comProcessKill, 77, 0, 0, 0})
	if pk := e.server.next(t); !slices.Equal(pk.payload, []byte{comProcessKill, 77, 0, 0, 0}) {
		t.Fatalf("server got %q", pk.payload)
	}
	if q := e.rec.find(audit.EventDBQuery); len(q) != 3 || q[0].Details["kill_session"] != "s2" {
		t.Fatalf("db.query events = %v", q)
	}
}

func TestRelayLargePackets(t *testing.T) {
	e := startRelay(t, "admin")
	// A 16 MiB COM_QUERY spans two packets: refused, answered after the
	// last one.
	big := make([]byte, maxPayload)
	big[0] = comQuery
	go func() {
		w := e.client.conn
		_, _ = w.Write(appendPacket(nil, 0, big))
		_, _ = w.Write(appendPacket(nil, 1, []byte("tail")))
	}()
	wantErr(t, e.client.next(t), 2, erNetPacketTooLarge, "exceeds")
	// A large COM_STMT_SEND_LONG_DATA is streamed through whole.
	long := make([]byte, maxPayload)
	long[0] = comStmtSendLongData
	go func() {
		w := e.client.conn
		_, _ = w.Write(appendPacket(nil, 0, long))
		_, _ = w.Write(appendPacket(nil, 1, []byte("end")))
	}()
	if pk := e.server.next(t); len(pk.payload) != maxPayload || pk.seq != 0 {
		t.Fatalf("first part: %d bytes seq %d", len(pk.payload), pk.seq)
	}
	if pk := e.server.next(t); string(pk.payload) != "end" || pk.seq != 1 {
		t.Fatalf("second part: %q seq %d", pk.payload, pk.seq)
	}
	// Server packets of 16 MiB and more pass through.
	go func() {
		_, _ = e.server.conn.Write(appendPacket(nil, 1, big))
		_, _ = e.server.conn.Write(appendPacket(nil, 2, nil))
	}()
	if pk := e.client.next(t); len(pk.payload) != maxPayload {
		t.Fatalf("client got %d bytes", len(pk.payload))
	}
	if pk := e.client.next(t); len(pk.payload) != 0 || pk.seq != 2 {
		t.Fatalf("client got %q seq %d", pk.payload, pk.seq)
	}
}

func TestRelayLockTerminates(t *testing.T) {
	e := startRelay(t, "read")
	e.client.send(t, 0, query("select sleep(30)"))
	e.server.next(t)
	close(e.done)
	wantErr(t, e.client.next(t), 1, erConnectionKilled, "sigil: session terminated: user alice is locked: laptop stolen")
	select {
	case st := <-e.stats:
		e.stats <- st
		if st.Err == nil || st.Statements != 1 || st.BytesIn == 0 {
			t.Fatalf("stats = %+v", st)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("session did not end within 2s")
	}
}

func TestRelayQuit(t *testing.T) {
	e := startRelay(t, "read")
	e.client.send(t, 0, []byte{comQuit})
	if pk := e.server.next(t); string(pk.payload) != "\x01" {
		t.Fatalf("server got %q", pk.payload)
	}
	select {
	case st := <-e.stats:
		e.stats <- st
		if st.Err != nil {
			t.Fatalf("quit ended with %v", st.Err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("session did not end")
	}
	// Out-of-order packets end a session.
	e2 := startRelay(t, "read")
	e2.client.send(t, 3, query("select 1"))
	wantErr(t, e2.client.next(t), 0, 1156, "where a command (packet 0) was expected")
	st := <-e2.stats
	e2.stats <- st
	if st.Err == nil {
		t.Fatal("no error for an out-of-order packet")
	}
}

func TestHandshakeRoundTrip(t *testing.T) {
	hs := &serverHandshake{version: serverVersion, connID: 1<<30 + 7, authData: newScramble(), caps: serverCaps,
		collation: defaultCollation, status: statusAutocommit, plugin: nativePasswordPlugin}
	got, err := parseServerHandshake(hs.encode())
	if err != nil {
		t.Fatal(err)
	}
	if got.version != hs.version || got.connID != hs.connID || string(got.authData) != string(hs.authData) ||
		got.caps != hs.caps || got.plugin != hs.plugin || got.collation != hs.collation {
		t.Fatalf("round trip: %+v, want %+v", got, hs)
	}
	for _, caps := range []uint32{serverCaps, serverCaps &^ capPluginAuthLenenc, serverCaps &^ (capPluginAuthLenenc | capSecureConn)} {
		req := &handshakeResponse{caps: caps, maxPacket: 1 << 24, collation: 45, user: "reader", authResp: []byte("xyz"),
			db: "app", plugin: nativePasswordPlugin, attrs: map[string]string{"_os": "linux", "program_name": "mysql"},
			attrsOrder: []string{"_os", "program_name"}}
		back, err := parseHandshakeResponse(req.encode())
		if err != nil {
			t.Fatal(err)
		}
		if back.user != "reader" || back.db != "app" || string(back.authResp) != "xyz" || back.plugin != nativePasswordPlugin ||
			back.attrs["program_name"] != "mysql" || back.caps != caps {
			t.Fatalf("caps %x: round trip %+v", caps, back)
		}
	}
	if _, err := parseHandshakeResponse(make([]byte, 40)); err == nil || !strings.Contains(err.Error(), "protocol 4.1") {
		t.Fatalf("pre-4.1 client: %v", err)
	}
}

func TestDecodeValues(t *testing.T) {
	tests := []struct {
		typ      byte
		unsigned bool
		in       []byte
		want     string
	}{
		{typeTiny, false, []byte{0xff}, "-1"},
		{typeTiny, true, []byte{0xff}, "255"},
		{typeShort, false, []byte{0xfe, 0xff}, "-2"},
		{typeLong, true, []byte{0xff, 0xff, 0xff, 0xff}, "4294967295"},
		{typeDouble, false, binary.LittleEndian.AppendUint64(nil, 0x400921fb54442d18), "3.141592653589793"},
		{typeDate, false, []byte{4, 0xe8, 0x07, 2, 29}, "2024-02-29"},
		{typeDateTime, false, []byte{7, 0xe8, 0x07, 2, 29, 13, 14, 15}, "2024-02-29 13:14:15"},
		{typeTime, false, []byte{8, 1, 1, 0, 0, 0, 2, 3, 4}, "-26:03:04"},
		{typeBlob, false, appendLenencString(nil, strings.Repeat("a", 300)), strings.Repeat("a", 256-len("…[truncated]")) + "…[truncated]"},
	}
	for _, tt := range tests {
		got, rest, ok := decodeValue(tt.in, tt.typ, tt.unsigned)
		if !ok || got != tt.want || len(rest) != 0 {
			t.Errorf("decode type %#x %x = %q, %v, rest %d; want %q", tt.typ, tt.in, got, ok, len(rest), tt.want)
		}
	}
	if _, _, ok := decodeValue([]byte{1, 2}, typeLong, false); ok {
		t.Error("short value decoded")
	}
	// More parameters than an event holds.
	st := &stmt{numParams: 100}
	p := []byte{comStmtExecute, 1, 0, 0, 0, 0, 1, 0, 0, 0}
	p = append(p, make([]byte, 13)...)
	p = append(p, 1)
	for range 100 {
		p = append(p, typeTiny, 0)
	}
	for i := range 100 {
		p = append(p, byte(i))
	}
	out := decodeExecuteParams(p, st, len(p))
	if len(out) != audit.MaxParameters+1 || out[63] != "63" || out[64] != "…[36 more parameters]" {
		t.Fatalf("bounded parameters: %d %v", len(out), out[60:])
	}
}

func TestReadPacketLimit(t *testing.T) {
	_, _, err := readPacket(strings.NewReader("\xff\xff\x00\x00"), nil, 1024)
	if err == nil || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Fatalf("oversized packet: %v", err)
	}
	_, _, err = readPacket(strings.NewReader("\x05\x00\x00\x00ab"), nil, 1024)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated packet: %v", err)
	}
}
