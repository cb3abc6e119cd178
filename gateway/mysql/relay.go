package mysql

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/gateway/session"
	"github.com/sigilhq/sigil/gateway/sqlpolicy"
)

const (
	// maxStatementLen bounds COM_QUERY and COM_STMT_PREPARE texts the
	// gateway reads to classify; larger ones are refused, never forwarded
	// unchecked.
	maxStatementLen = 4 << 20
	// maxTracked bounds the prepared statements remembered per connection
	// for audit; beyond it, executions are still relayed and recorded,
	// only without their text.
	maxTracked = 10000
	// serverChunk is the buffer server bytes are copied through.
	serverChunk = 64 << 10
	// prepareOKLen is how much of COM_STMT_PREPARE_OK the tap needs:
	// status, statement id, column and parameter counts.
	prepareOKLen = 9
)

// relayConfig configures a relay. Function fields keep the relay
// testable without a session manager.
type relayConfig struct {
	policy   sqlpolicy.Grant
	classify func(string) sqlpolicy.Result
	// identity is the statement that sets @sigil_identity.
	identity string
	// emit records an audit event and takes it over
	// (audit.OwningEmitter): the relay builds each event fresh and never
	// touches it again. It must not block on storage for db.query.
	emit func(*audit.Event)
	// checkDBName re-checks a database the client switches to.
	checkDBName func(ctx context.Context, name string) error
	// findKill returns the session a KILL id names when it belongs to the
	// same Sigil user and database, else nil.
	findKill func(id uint64) *killEntry
	// done is closed when the session must end; doneErr says why.
	done    <-chan struct{}
	doneErr func() error
	// approve asks for a human approval of a write (see
	// session.Session.ApproveWrite); used when policy.WriteApproval.
	approve session.Approver
	// awaitTimeout bounds how long an execution under write approval
	// waits for the server to answer the prepares before it; default
	// defaultAwaitTimeout.
	awaitTimeout time.Duration
	// deprecateEOF is the client's CLIENT_DEPRECATE_EOF (the server
	// follows it): no EOF packets after column definitions.
	deprecateEOF bool
}

// stmt is a prepared statement the tap saw the server accept.
type stmt struct {
	text      string
	res       sqlpolicy.Result
	numParams int
	// types are the parameter types last bound (2 bytes each).
	types []byte
	// Under WriteApproval: sql is the exact text, for the fingerprint;
	// approval says each execution needs a human approval; longData that
	// COM_STMT_SEND_LONG_DATA sent parameters since the last execution.
	sql      string
	approval bool
	longData bool
}

type expectKind int

const (
	expectForward expectKind = iota
	// expectPrepare captures the statement id of a COM_STMT_PREPARE_OK.
	expectPrepare
	// expectSwallow drops the response to a statement the gateway sent.
	expectSwallow
)

// expectation applies to the first packet of a coming response.
type expectation struct {
	kind expectKind
	text string
	res  sqlpolicy.Result
	// sql and approval are kept under WriteApproval (see stmt).
	sql      string
	approval bool
}

// relay moves one session's packets between client and server.
type relay struct {
	cfg relayConfig

	// Client → server, owned by the client goroutine.
	cr       *bufio.Reader
	up       net.Conn
	uw       *bufio.Writer
	body     []byte
	lastStmt uint32

	// Client writes, from both goroutines.
	client net.Conn
	wmu    sync.Mutex
	cw     *bufio.Writer

	stmtMu sync.Mutex
	stmts  map[uint32]*stmt

	expectMu sync.Mutex
	expect   []expectation

	// Server tap state, owned by the server goroutine.
	hdr    [4]byte
	hdrN   int
	inBody bool
	remain int
	cont   bool
	drop   bool
	cur    *expectation
	capBuf []byte
	// nextSeq is the sequence id the client expects next from the
	// server, for an ERR written when the session is cut.
	nextSeq atomic.Uint32

	bytesIn    atomic.Int64
	bytesOut   atomic.Int64
	statements atomic.Int64

	// approvals is policy.WriteApproval. Then pendingPrepares counts the
	// COM_STMT_PREPAREs the server has not answered, answered is
	// signalled at each answer and serverGone closed when the server loop
	// ends (see awaitPrepares). prepareRest, owned by the server
	// goroutine, counts the packets of a prepare response still to come.
	approvals       bool
	pendingPrepares atomic.Int32
	prepareRest     int
	answered        chan struct{}
	serverGone      chan struct{}
}

func newRelay(cfg relayConfig, cr *bufio.Reader, up, client net.Conn) *relay {
	if cfg.approve == nil {
		cfg.approve = session.NoApprovals(cfg.policy.Role)
	}
	if cfg.awaitTimeout == 0 {
		cfg.awaitTimeout = defaultAwaitTimeout
	}
	var answered, serverGone chan struct{}
	if cfg.policy.WriteApproval {
		answered, serverGone = make(chan struct{}, 1), make(chan struct{})
	}
	return &relay{
		approvals:  cfg.policy.WriteApproval,
		answered:   answered,
		serverGone: serverGone,
		cfg:        cfg,
		cr:         cr,
		up:         up,
		uw:         bufio.NewWriterSize(up, 32<<10),
		client:     client,
		cw:         bufio.NewWriterSize(client, 16<<10),
		stmts:      make(map[uint32]*stmt),
	}
}

// errTerminated is returned by the client loop after COM_QUIT.
var errTerminated = errors.New("client quit")

// run relays until either side ends, the session is cut or ctx is done.
func (r *relay) run(ctx context.Context, upR io.Reader) session.Stats {
	clientDone := make(chan error, 1)
	serverDone := make(chan error, 1)
	go func() { clientDone <- r.clientLoop(ctx) }()
	go func() { serverDone <- r.serverLoop(upR) }()
	stopBoth := func() {
		_ = r.up.Close()
		_ = r.client.Close()
	}
	var endErr error
	select {
	case err := <-clientDone:
		var ce *clientError
		switch {
		case errors.As(err, &ce):
			endErr = err
			r.terminate(serverDone, ce.code, ce.state, ce.msg)
		case err != nil && !errors.Is(err, errTerminated):
			endErr = err
			stopBoth()
			<-serverDone
		default:
			stopBoth()
			<-serverDone
		}
	case err := <-serverDone:
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
			endErr = err
		}
		stopBoth()
		<-clientDone
	case <-r.cfg.done:
		endErr = r.cfg.doneErr()
		r.terminate(serverDone, erConnectionKilled, stateConnectionKill, "sigil: session terminated: "+session.Message(endErr))
		<-clientDone
	case <-ctx.Done():
		endErr = trace.ConnectionProblem(ctx.Err(), "gateway shutting down")
		r.terminate(serverDone, erServerShutdown, stateConnection, "sigil: the gateway is shutting down")
		<-clientDone
	}
	return session.Stats{
		BytesIn:    r.bytesIn.Load(),
		BytesOut:   r.bytesOut.Load(),
		Statements: r.statements.Load(),
		Err:        endErr,
	}
}

// terminate stops the server side first, so that the ERR packet is not
// interleaved with a server packet, then tells the client and closes.
func (r *relay) terminate(serverDone <-chan error, code uint16, state, msg string) {
	_ = r.up.Close()
	_ = r.client.SetWriteDeadline(time.Now().Add(time.Second))
	<-serverDone
	if !r.inBody && r.hdrN == 0 {
		r.wmu.Lock()
		_, _ = r.cw.Write(errPacket(byte(r.nextSeq.Load()), code, state, msg))
		_ = r.cw.Flush()
		r.wmu.Unlock()
	}
	_ = r.client.Close()
}

// clientLoop relays client commands until the client leaves or an error.
func (r *relay) clientLoop(ctx context.Context) error {
	var hdr [4]byte
	for {
		// Coalesce what the client sent together into one upstream
		// write.
		if r.cr.Buffered() == 0 {
			if err := r.uw.Flush(); err != nil {
				return trace.Wrap(err)
			}
		}
		if _, err := io.ReadFull(r.cr, hdr[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return trace.Wrap(err)
		}
		n := packetLen(hdr)
		r.bytesIn.Add(int64(4 + n))
		if hdr[3] != 0 {
			return &clientError{code: 1156, state: stateConnection, msg: fmt.Sprintf("sigil: got packet %d where a command (packet 0) was expected", hdr[3])}
		}
		if n == 0 {
			return &clientError{code: erUnknownCommand, state: stateConnection, msg: "sigil: empty command packet"}
		}
		if err := r.command(ctx, hdr, n); err != nil {
			return err
		}
		if cap(r.body) > 1<<20 {
			// Do not keep a huge statement's buffer for the whole session.
			r.body = nil
		}
	}
}

func packetLen(hdr [4]byte) int { return int(hdr[0]) | int(hdr[1])<<8 | int(hdr[2])<<16 }

// command handles one client command whose first packet header is hdr.
func (r *relay) command(ctx context.Context, hdr [4]byte, n int) error {
	b, err := r.cr.Peek(1)
	if err != nil {
		return trace.Wrap(unexpectedEOF(err))
	}
	cmd := b[0]
	switch cmd {
	case comQuery, comStmtPrepare, comInitDB, comProcessKill, comStmtClose:
		if n == maxPayload || n > maxStatementLen {
			last, err := r.discard(n)
			if err != nil {
				return err
			}
			msg := fmt.Sprintf("sigil: command of %d bytes or more exceeds the gateway's %d byte limit", n, maxStatementLen)
			r.deny("", sqlpolicy.Result{Class: sqlpolicy.ClassUnknown, Reason: "statement too large"}, msg, commandName(cmd))
			return r.refuse(last+1, erNetPacketTooLarge, stateConnection, msg)
		}
		body, err := r.readBody(n)
		if err != nil {
			return err
		}
		switch cmd {
		case comQuery:
			return r.query(ctx, hdr, body)
		case comStmtPrepare:
			return r.prepare(ctx, hdr, body)
		case comInitDB:
			return r.initDB(ctx, hdr, body)
		case comProcessKill:
			if len(body) < 5 {
				return &clientError{code: erUnknownCommand, state: stateConnection, msg: "sigil: malformed COM_PROCESS_KILL"}
			}
			id := uint64(binary.LittleEndian.Uint32(body[1:]))
			return r.kill(fmt.Sprintf("<COM_PROCESS_KILL %d>", id), false, id, true)
		default: // comStmtClose
			if len(body) >= 5 {
				r.stmtMu.Lock()
				delete(r.stmts, binary.LittleEndian.Uint32(body[1:]))
				r.stmtMu.Unlock()
			}
			return r.forward(hdr, body, false)
		}
	case comStmtExecute:
		if r.approvals {
			return r.executeApproval(ctx, hdr, n)
		}
		return r.execute(hdr, n)
	case comStmtSendLongData:
		if r.approvals {
			r.markLongData(n, true)
		}
		// No response from the server.
		return r.stream(hdr, n)
	case comStmtReset, comPing, comStatistics, comSetOption, comStmtFetch, comFieldList, comProcessInfo:
		if cmd == comStmtReset && r.approvals {
			r.markLongData(n, false)
		}
		r.nextSeq.Store(1)
		return r.stream(hdr, n)
	case comQuit:
		if err := r.stream(hdr, n); err != nil {
			return err
		}
		if err := r.uw.Flush(); err != nil {
			return trace.Wrap(err)
		}
		return errTerminated
	case comResetConnection:
		return r.resetConnection(hdr, n)
	case comChangeUser:
		last, err := r.discard(n)
		if err != nil {
			return err
		}
		msg := "sigil: change user is not allowed; connect again with another certificate"
		r.deny("", sqlpolicy.Result{Class: sqlpolicy.ClassAdmin, Reason: "COM_CHANGE_USER"}, msg, "COM_CHANGE_USER")
		return r.refuse(last+1, erAccessDenied, stateAccessDenied, msg)
	case comRefresh, comShutdown, comDebug, comCreateDB, comDropDB:
		res := sqlpolicy.Result{Class: sqlpolicy.ClassAdmin, Reason: commandName(cmd), Statements: 1}
		if msg, ok := r.cfg.policy.Refusal(res); !ok {
			last, err := r.discard(n)
			if err != nil {
				return err
			}
			r.deny("", res, msg, commandName(cmd))
			return r.refuse(last+1, erTableAccessDenied, stateSyntaxOrAccess, msg)
		}
		if r.cfg.policy.NeedsApproval(res) {
			last, err := r.discard(n)
			if err != nil {
				return err
			}
			msg := fmt.Sprintf("sigil: statement refused: %s is an admin command and role %q requires a human approval for each write, which cannot be given for this command; use the SQL statement instead", commandName(cmd), r.cfg.policy.Role)
			r.deny("", res, msg, commandName(cmd))
			return r.refuse(last+1, erTableAccessDenied, stateSyntaxOrAccess, msg)
		}
		r.statements.Add(1)
		r.cfg.emit(&audit.Event{Type: audit.EventDBQuery, Success: true, Statement: "<" + commandName(cmd) + ">",
			Classification: string(res.Class), Details: map[string]string{"protocol": commandName(cmd)}})
		r.nextSeq.Store(1)
		return r.stream(hdr, n)
	default:
		last, err := r.discard(n)
		if err != nil {
			return err
		}
		msg := fmt.Sprintf("sigil: command 0x%02x is not supported through the gateway", cmd)
		r.deny("", sqlpolicy.Result{Class: sqlpolicy.ClassUnknown, Reason: commandName(cmd)}, msg, commandName(cmd))
		return r.refuse(last+1, erUnknownCommand, stateConnection, msg)
	}
}

func commandName(cmd byte) string {
	switch cmd {
	case comQuery:
		return "COM_QUERY"
	case comStmtPrepare:
		return "COM_STMT_PREPARE"
	case comInitDB:
		return "COM_INIT_DB"
	case comProcessKill:
		return "COM_PROCESS_KILL"
	case comStmtClose:
		return "COM_STMT_CLOSE"
	case comRefresh:
		return "COM_REFRESH"
	case comShutdown:
		return "COM_SHUTDOWN"
	case comDebug:
		return "COM_DEBUG"
	case comCreateDB:
		return "COM_CREATE_DB"
	case comDropDB:
		return "COM_DROP_DB"
	}
	return fmt.Sprintf("command 0x%02x", cmd)
}

// readBody reads an n-byte payload into the reusable buffer; it grows
// with the bytes actually received.
func (r *relay) readBody(n int) ([]byte, error) {
	b := r.body[:0]
	for len(b) < n {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(n-len(b), max(cap(b), 4096)))
		}
		m, err := io.ReadFull(r.cr, b[len(b):min(n, cap(b))])
		b = b[:len(b)+m]
		if err != nil {
			return nil, trace.Wrap(unexpectedEOF(err))
		}
	}
	r.body = b
	return b, nil
}

// discard drops a command's packets; it returns the last sequence id.
func (r *relay) discard(n int) (byte, error) {
	var seq byte
	for {
		if _, err := r.cr.Discard(n); err != nil {
			return 0, trace.Wrap(unexpectedEOF(err))
		}
		if n < maxPayload {
			return seq, nil
		}
		var hdr [4]byte
		if _, err := io.ReadFull(r.cr, hdr[:]); err != nil {
			return 0, trace.Wrap(unexpectedEOF(err))
		}
		n, seq = packetLen(hdr), hdr[3]
		r.bytesIn.Add(int64(4 + n))
	}
}

// stream forwards a command's packets without buffering them whole.
func (r *relay) stream(hdr [4]byte, n int) error {
	for {
		if _, err := r.uw.Write(hdr[:]); err != nil {
			return trace.Wrap(err)
		}
		if _, err := io.CopyN(r.uw, r.cr, int64(n)); err != nil {
			return trace.Wrap(unexpectedEOF(err))
		}
		if n < maxPayload {
			return nil
		}
		if _, err := io.ReadFull(r.cr, hdr[:]); err != nil {
			return trace.Wrap(unexpectedEOF(err))
		}
		n = packetLen(hdr)
		r.bytesIn.Add(int64(4 + n))
	}
}

// forward writes a single-packet command upstream unchanged.
func (r *relay) forward(hdr [4]byte, body []byte, response bool) error {
	if response {
		r.nextSeq.Store(1)
	}
	if _, err := r.uw.Write(hdr[:]); err != nil {
		return trace.Wrap(err)
	}
	_, err := r.uw.Write(body)
	return trace.Wrap(err)
}

// refuse answers a command the server never saw with an ERR packet.
func (r *relay) refuse(seq byte, code uint16, state, msg string) error {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if _, err := r.cw.Write(errPacket(seq, code, state, msg)); err != nil {
		return trace.Wrap(err)
	}
	return trace.Wrap(r.cw.Flush())
}

func (r *relay) deny(text string, res sqlpolicy.Result, msg, proto string) {
	r.cfg.emit(&audit.Event{
		Type:           audit.EventDBDenied,
		Statement:      strings.ToValidUTF8(text, "\uFFFD"),
		Classification: string(res.Class),
		Error:          msg,
		Details:        map[string]string{"protocol": proto, "reason": res.Reason},
	})
}

var (
	killRe = regexp.MustCompile(`(?is)^\s*kill\s+(?:(query|connection)\s+)?([0-9]+)\s*;?\s*$`)
	useRe  = regexp.MustCompile("(?is)(?:^|;)\\s*use\\s+(`(?:[^`]|``)+`|[0-9a-z_$\\x80-\\xff]+)")
	wordRe = regexp.MustCompile(`(?i)\b(set|into)\b|:=`)
)

// identityRefusal refuses statements that could change @sigil_identity.
// It is deliberately coarse: any mention of the variable together with an
// assignment form.
func identityRefusal(text string) (string, bool) {
	if !strings.Contains(strings.ToLower(text), "sigil_identity") || !wordRe.MatchString(text) {
		return "", false
	}
	return "sigil: statement refused: @sigil_identity is set by the gateway and cannot be changed", true
}

func (r *relay) query(ctx context.Context, hdr [4]byte, body []byte) error {
	text := string(body[1:])
	if m := killRe.FindStringSubmatch(text); m != nil {
		id, err := strconv.ParseUint(m[2], 10, 64)
		if err == nil {
			return r.kill(text, strings.EqualFold(m[1], "query"), id, false)
		}
	}
	for _, m := range useRe.FindAllStringSubmatch(text, 8) {
		name := m[1]
		if strings.HasPrefix(name, "`") {
			name = strings.ReplaceAll(name[1:len(name)-1], "``", "`")
		}
		if err := r.cfg.checkDBName(ctx, name); err != nil {
			msg := "sigil: " + session.Message(err)
			r.deny(text, sqlpolicy.Result{Class: sqlpolicy.ClassRead, Reason: "USE " + name}, msg, "query")
			return r.refuse(1, erDBAccessDenied, stateSyntaxOrAccess, msg)
		}
	}
	if msg, bad := identityRefusal(text); bad {
		r.deny(text, sqlpolicy.Result{Class: sqlpolicy.ClassAdmin, Reason: "assignment to @sigil_identity"}, msg, "query")
		return r.refuse(1, erTableAccessDenied, stateSyntaxOrAccess, msg)
	}
	res := r.cfg.classify(text)
	if msg, ok := r.cfg.policy.Refusal(res); !ok {
		r.deny(text, res, msg, "query")
		return r.refuse(1, erTableAccessDenied, stateSyntaxOrAccess, msg)
	}
	details := map[string]string{"protocol": "query"}
	if r.cfg.policy.NeedsApproval(res) {
		var refusal, id string
		if details, refusal, id = r.approveQuery(ctx, text, res); refusal != "" {
			r.denyApproval(text, res, refusal, "query", id)
			return r.refuse(1, erTableAccessDenied, stateSyntaxOrAccess, refusal)
		}
	}
	if err := r.forward(hdr, body, true); err != nil {
		return err
	}
	r.statements.Add(1)
	r.cfg.emit(&audit.Event{
		Type:           audit.EventDBQuery,
		Success:        true,
		Statement:      strings.ToValidUTF8(text, "\uFFFD"),
		Classification: string(res.Class),
		Details:        details,
	})
	return nil
}

// kill runs KILL [QUERY|CONNECTION] id for a session of the same user,
// translated to its upstream thread id, on the client's own upstream
// connection.
func (r *relay) kill(text string, query bool, id uint64, viaCommand bool) error {
	res := sqlpolicy.Result{Class: sqlpolicy.ClassAdmin, Reason: "KILL", Statements: 1}
	target := r.cfg.findKill(id)
	if target == nil {
		msg := fmt.Sprintf("Unknown thread id: %d", id)
		r.deny(text, res, "sigil: "+msg+" (only your own sessions on this database can be killed)", "query")
		return r.refuse(1, erNoSuchThread, stateGeneral, msg)
	}
	var payload []byte
	if viaCommand {
		payload = binary.LittleEndian.AppendUint32([]byte{comProcessKill}, target.threadID)
	} else {
		kw := "CONNECTION"
		if query {
			kw = "QUERY"
		}
		payload = fmt.Appendf([]byte{comQuery}, "KILL %s %d", kw, target.threadID)
	}
	r.nextSeq.Store(1)
	if _, err := r.uw.Write(appendPacket(nil, 0, payload)); err != nil {
		return trace.Wrap(err)
	}
	r.statements.Add(1)
	r.cfg.emit(&audit.Event{
		Type:           audit.EventDBQuery,
		Success:        true,
		Statement:      strings.ToValidUTF8(text, "\uFFFD"),
		Classification: string(res.Class),
		Details:        map[string]string{"protocol": "query", "kill_session": target.sessionID, "reason": "KILL of the user's own session"},
	})
	return nil
}

func (r *relay) initDB(ctx context.Context, hdr [4]byte, body []byte) error {
	name := string(body[1:])
	if err := r.cfg.checkDBName(ctx, name); err != nil {
		msg := "sigil: " + session.Message(err)
		r.deny("USE "+name, sqlpolicy.Result{Class: sqlpolicy.ClassRead, Reason: "COM_INIT_DB " + name}, msg, "COM_INIT_DB")
		return r.refuse(1, erDBAccessDenied, stateSyntaxOrAccess, msg)
	}
	return r.forward(hdr, body, true)
}

func (r *relay) prepare(ctx context.Context, hdr [4]byte, body []byte) error {
	text := string(body[1:])
	if msg, bad := identityRefusal(text); bad {
		r.deny(text, sqlpolicy.Result{Class: sqlpolicy.ClassAdmin, Reason: "assignment to @sigil_identity"}, msg, "prepare")
		return r.refuse(1, erTableAccessDenied, stateSyntaxOrAccess, msg)
	}
	res := r.cfg.classify(text)
	if msg, ok := r.cfg.policy.Refusal(res); !ok {
		r.deny(text, res, msg, "prepare")
		return r.refuse(1, erTableAccessDenied, stateSyntaxOrAccess, msg)
	}
	e := expectation{kind: expectPrepare, text: strings.ToValidUTF8(text, "\uFFFD"), res: res}
	if r.approvals {
		if e.approval = r.cfg.policy.NeedsApproval(res); e.approval {
			e.sql = text
		}
		r.pendingPrepares.Add(1)
	}
	r.expectMu.Lock()
	r.expect = append(r.expect, e)
	r.expectMu.Unlock()
	return r.forward(hdr, body, true)
}

func (r *relay) execute(hdr [4]byte, n int) error {
	peek, err := r.cr.Peek(min(n, r.cr.Size()))
	if err != nil {
		return trace.Wrap(unexpectedEOF(err))
	}
	ev := &audit.Event{Type: audit.EventDBQuery, Success: true, Details: map[string]string{"protocol": "prepared"}}
	if len(peek) >= 5 {
		id := binary.LittleEndian.Uint32(peek[1:])
		r.stmtMu.Lock()
		if id == 0xffffffff {
			id = r.lastStmt
		}
		st := r.stmts[id]
		r.stmtMu.Unlock()
		if st != nil {
			ev.Statement = st.text
			ev.Classification = string(st.res.Class)
			ev.Parameters = decodeExecuteParams(peek, st, n)
		}
	}
	if ev.Statement == "" {
		ev.Statement = "<statement not tracked>"
	}
	r.statements.Add(1)
	r.cfg.emit(ev)
	r.nextSeq.Store(1)
	return r.stream(hdr, n)
}

// resetConnection forwards COM_RESET_CONNECTION and sets @sigil_identity
// again right after it, dropping that statement's response.
func (r *relay) resetConnection(hdr [4]byte, n int) error {
	body, err := r.readBody(n)
	if err != nil {
		return err
	}
	if n == maxPayload {
		return &clientError{code: erUnknownCommand, state: stateConnection, msg: "sigil: malformed COM_RESET_CONNECTION"}
	}
	r.expectMu.Lock()
	r.expect = append(r.expect, expectation{kind: expectForward}, expectation{kind: expectSwallow})
	r.expectMu.Unlock()
	r.stmtMu.Lock()
	clear(r.stmts)
	r.stmtMu.Unlock()
	if err := r.forward(hdr, body, true); err != nil {
		return err
	}
	_, err = r.uw.Write(appendPacket(nil, 0, append([]byte{comQuery}, r.cfg.identity...)))
	return trace.Wrap(err)
}

// serverLoop copies server bytes to the client, following packet
// boundaries on the side.
func (r *relay) serverLoop(up io.Reader) error {
	if r.serverGone != nil {
		defer close(r.serverGone)
	}
	buf := make([]byte, serverChunk)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			r.bytesOut.Add(int64(n))
			r.wmu.Lock()
			terr := r.tap(buf[:n])
			if terr == nil {
				terr = r.cw.Flush()
			}
			r.wmu.Unlock()
			if terr != nil {
				return trace.Wrap(terr)
			}
		}
		if err != nil {
			return err
		}
	}
}

// tap writes chunk to the client packet by packet, applying the pending
// expectations to the first packet of responses. Called with wmu held.
func (r *relay) tap(chunk []byte) error {
	for len(chunk) > 0 {
		if !r.inBody {
			k := copy(r.hdr[r.hdrN:], chunk)
			r.hdrN += k
			chunk = chunk[k:]
			if r.hdrN < 4 {
				return nil
			}
			r.hdrN = 0
			n, seq := packetLen(r.hdr), r.hdr[3]
			r.nextSeq.Store(uint32(seq + 1))
			if !r.cont {
				r.drop, r.cur, r.capBuf = false, nil, r.capBuf[:0]
				if seq == 1 {
					r.cur = r.popExpect()
					r.drop = r.cur != nil && r.cur.kind == expectSwallow
				}
			}
			r.cont = n == maxPayload
			if !r.drop {
				if _, err := r.cw.Write(r.hdr[:]); err != nil {
					return err
				}
			}
			r.remain, r.inBody = n, true
			if n == 0 {
				if err := r.endPacket(); err != nil {
					return err
				}
			}
			continue
		}
		k := min(r.remain, len(chunk))
		seg := chunk[:k]
		if r.cur != nil && len(r.capBuf) < prepareOKLen {
			r.capBuf = append(r.capBuf, seg[:min(k, prepareOKLen-len(r.capBuf))]...)
		}
		if !r.drop {
			if _, err := r.cw.Write(seg); err != nil {
				return err
			}
		}
		chunk = chunk[k:]
		r.remain -= k
		if r.remain == 0 {
			if err := r.endPacket(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (r *relay) popExpect() *expectation {
	r.expectMu.Lock()
	defer r.expectMu.Unlock()
	if len(r.expect) == 0 {
		return nil
	}
	e := r.expect[0]
	r.expect = r.expect[1:]
	if len(r.expect) == 0 {
		r.expect = nil
	}
	return &e
}

// endPacket finishes a packet's expectation once its payload is read.
func (r *relay) endPacket() error {
	r.inBody = false
	if r.prepareRest > 0 && !r.cont {
		if r.prepareRest--; r.prepareRest == 0 {
			r.prepareAnswered()
		}
	}
	if r.cont || r.cur == nil {
		return nil
	}
	e := r.cur
	r.cur = nil
	switch e.kind {
	case expectPrepare:
		if r.approvals {
			// Answered once the whole response went by, so that a
			// refusal waiting for it is not written in its middle.
			defer r.prepareResponse()
		}
		if len(r.capBuf) < prepareOKLen || r.capBuf[0] != 0x00 {
			return nil
		}
		id := binary.LittleEndian.Uint32(r.capBuf[1:])
		st := &stmt{text: e.text, res: e.res, numParams: int(binary.LittleEndian.Uint16(r.capBuf[7:])), sql: e.sql, approval: e.approval}
		r.stmtMu.Lock()
		if _, ok := r.stmts[id]; ok || len(r.stmts) < maxTracked {
			r.stmts[id] = st
		}
		r.lastStmt = id
		r.stmtMu.Unlock()
	case expectSwallow:
		if len(r.capBuf) == 0 || r.capBuf[0] != 0x00 {
			return trace.ConnectionProblem(nil, "setting @sigil_identity again after COM_RESET_CONNECTION failed")
		}
	}
	return nil
}

// renderString bounds a parameter for the audit event.
func renderString(v []byte) string {
	const suffix = "…[truncated]"
	if !utf8.Valid(v) {
		return renderHex(v)
	}
	if len(v) > audit.MaxParameterBytes {
		cut := audit.MaxParameterBytes - len(suffix)
		for cut > 0 && !utf8.RuneStart(v[cut]) {
			cut--
		}
		return string(v[:cut]) + suffix
	}
	return string(v)
}
