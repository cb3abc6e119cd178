package postgres

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
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
	// serverChunk is the buffer server bytes are copied through.
	serverChunk = 64 << 10
	// maxTracked bounds the prepared statements and portals remembered per
	// connection for audit; beyond it, executions are still relayed and
	// recorded, only without their text.
	maxTracked = 10000
	// Parameter bounds for db.query events.
	maxAuditParams     = audit.MaxParameters
	maxAuditParamBytes = audit.MaxParameterBytes
	// maxPendingEvents bounds the events held back until the client's
	// batch is flushed upstream.
	maxPendingEvents = 64
)

// relayConfig configures a relay.
type relayConfig struct {
	policy   sqlpolicy.Grant
	classify func(string) sqlpolicy.Result
	// emit records an audit event (db.query, db.denied) and takes it over
	// (audit.OwningEmitter): the relay never touches an event again, except
	// the per-connection Details maps of db.query, which hold constant,
	// already bounded values and are only used from the client goroutine.
	// It is called from the client goroutine, after the statements are
	// flushed upstream, and must not block on storage for db.query.
	emit func(*audit.Event)
	// approve asks for a human approval of a write (see
	// session.Session.ApproveWrite); used when policy.WriteApproval.
	approve session.Approver
	// awaitTimeout bounds how long a Bind under write approval waits for
	// the server to answer the batch that prepared its statement;
	// default defaultAwaitTimeout.
	awaitTimeout time.Duration
}

type prepared struct {
	text string
	res  sqlpolicy.Result
	// track is set only under WriteApproval (see approval.go).
	track *tracking
}

type portal struct {
	stmt   *prepared
	params []string
	// appr is set only under WriteApproval, for a portal whose statement
	// needed an approval (see approval.go).
	appr *portalApproval
}

// injection is an ErrorResponse to write to the client just before the
// server's ReadyForQuery number before.
type injection struct {
	before uint64
	data   []byte
}

// relay moves one session's protocol messages between client and server.
type relay struct {
	cfg relayConfig

	// Client → server, owned by the client goroutine.
	cr          *bufio.Reader
	uw          *bufio.Writer
	body        []byte
	rfqExpected uint64
	discarding  bool
	denial      []byte
	stmts       map[string]*prepared
	portals     map[string]*portal
	// pending are audit events of the current client batch, emitted once
	// the batch is on its way upstream so the database works meanwhile.
	pending []*audit.Event
	// Details of db.query events, one map per protocol for the whole
	// connection instead of one per query.
	simpleDetails, extendedDetails, fastPathDetails map[string]string
	// approvals is policy.WriteApproval: writes wait for a human approval
	// and prepared statements are tracked with their history.
	approvals bool

	// Server → client.
	cw         io.Writer
	wmu        sync.Mutex
	midMessage bool
	hdr        [5]byte
	hdrN       int
	remaining  int
	rfqSeen    uint64
	inject     []injection
	// Under WriteApproval: the Parse and Close entries whose batch the
	// server has not answered yet, and whether it sent an ErrorResponse
	// since its last ReadyForQuery.
	inflight []*prepared
	batchErr bool
	// answered is signalled at each settle; serverGone is closed when the
	// server loop ends. Both exist only under WriteApproval.
	answered   chan struct{}
	serverGone chan struct{}

	bytesIn    atomic.Int64
	bytesOut   atomic.Int64
	statements atomic.Int64
}

func newRelay(cfg relayConfig, cr *bufio.Reader, uw *bufio.Writer, cw io.Writer) *relay {
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
		answered:        answered,
		serverGone:      serverGone,
		approvals:       cfg.policy.WriteApproval,
		cfg:             cfg,
		cr:              cr,
		uw:              uw,
		cw:              cw,
		stmts:           make(map[string]*prepared),
		portals:         make(map[string]*portal),
		simpleDetails:   map[string]string{"protocol": "simple"},
		extendedDetails: map[string]string{"protocol": "extended"},
		fastPathDetails: map[string]string{"protocol": "function_call"},
	}
}

// record queues ev for emission after the current batch is flushed.
func (r *relay) record(ev *audit.Event) {
	r.pending = append(r.pending, ev)
	if len(r.pending) >= maxPendingEvents {
		r.emitPending()
	}
}

// emitPending hands the queued events to the emitter, in order.
func (r *relay) emitPending() {
	for i, ev := range r.pending {
		r.cfg.emit(ev)
		r.pending[i] = nil
	}
	r.pending = r.pending[:0]
}

// errTerminated is returned by the client loop after a Terminate message.
var errTerminated = fmt.Errorf("client terminated the session")

// clientError is a refusal that ends the connection with a FATAL error.
type clientError struct {
	code, msg string
}

func (e *clientError) Error() string { return e.msg }

// clientLoop relays client messages until the client leaves or an error.
func (r *relay) clientLoop(ctx context.Context) error {
	// Whatever ends the loop, what was relayed is recorded.
	defer r.emitPending()
	var hdr [5]byte
	for {
		// Coalesce pipelined messages into one upstream write, flushing
		// whenever the client has nothing more buffered; the batch's audit
		// events are built while the server answers.
		if r.cr.Buffered() == 0 {
			if err := r.uw.Flush(); err != nil {
				return trace.Wrap(err)
			}
			r.emitPending()
		}
		if _, err := io.ReadFull(r.cr, hdr[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return trace.Wrap(err)
		}
		length := int(binary.BigEndian.Uint32(hdr[1:5]))
		if length < 4 || length > maxMessageLen {
			return &clientError{code: codeProtocolViolation, msg: fmt.Sprintf("sigil: invalid message length %d", length)}
		}
		n := length - 4
		r.bytesIn.Add(int64(length + 1))
		typ := hdr[0]
		if err := r.handle(ctx, typ, hdr[:], n); err != nil {
			return err
		}
		if cap(r.body) > 1<<20 {
			// Do not keep a huge statement's buffer for the whole session.
			r.body = nil
		}
	}
}

// readBody reads an n-byte body into the reusable buffer. The buffer
// grows with the bytes actually received, so a client announcing a large
// message costs memory only once it sends it.
func (r *relay) readBody(n int) ([]byte, error) {
	if cap(r.body) >= n {
		b := r.body[:n]
		if _, err := io.ReadFull(r.cr, b); err != nil {
			return nil, trace.Wrap(err)
		}
		return b, nil
	}
	b := r.body[:0]
	for len(b) < n {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(n-len(b), max(cap(b), 4096)))
		}
		m, err := io.ReadFull(r.cr, b[len(b):min(n, cap(b))])
		b = b[:len(b)+m]
		if err != nil {
			return nil, trace.Wrap(err)
		}
	}
	r.body = b
	return b, nil
}

// forward writes a buffered frame upstream unchanged.
func (r *relay) forward(hdr, body []byte) error {
	if _, err := r.uw.Write(hdr); err != nil {
		return trace.Wrap(err)
	}
	_, err := r.uw.Write(body)
	return trace.Wrap(err)
}

// stream forwards (or with discard, drops) a frame whose body is not
// inspected, without buffering it whole. It copies from the read buffer
// itself: io.CopyN would allocate per message (Sync, Describe...).
func (r *relay) stream(hdr []byte, n int, discard bool) error {
	if discard {
		_, err := r.cr.Discard(n)
		return trace.Wrap(err)
	}
	if _, err := r.uw.Write(hdr); err != nil {
		return trace.Wrap(err)
	}
	for n > 0 {
		if r.cr.Buffered() == 0 {
			// Wait for the next read from the client.
			if _, err := r.cr.Peek(1); err != nil {
				return trace.Wrap(err)
			}
		}
		b, err := r.cr.Peek(min(n, r.cr.Buffered()))
		if err != nil {
			return trace.Wrap(err)
		}
		if _, err := r.uw.Write(b); err != nil {
			return trace.Wrap(err)
		}
		_, _ = r.cr.Discard(len(b))
		n -= len(b)
	}
	return nil
}

func (r *relay) handle(ctx context.Context, typ byte, hdr []byte, n int) error {
	switch typ {
	case 'S': // Sync
		if err := r.stream(hdr, n, false); err != nil {
			return err
		}
		r.rfqExpected++
		if r.discarding {
			r.discarding = false
			r.queueInjection(r.denial)
			r.denial = nil
		}
		return nil
	case 'X': // Terminate
		if err := r.stream(hdr, n, false); err != nil {
			return err
		}
		if err := r.uw.Flush(); err != nil {
			return trace.Wrap(err)
		}
		return errTerminated
	}
	if r.discarding {
		// After a refusal in the extended protocol everything up to Sync
		// is dropped, as the server itself does after an error.
		return r.stream(hdr, n, true)
	}
	switch typ {
	case 'Q', 'P':
		if n > maxStatementLen {
			return &clientError{code: codeProgramLimit, msg: fmt.Sprintf("sigil: statement of %d bytes exceeds the gateway's %d byte limit", n, maxStatementLen)}
		}
		body, err := r.readBody(n)
		if err != nil {
			return err
		}
		if typ == 'Q' {
			return r.query(ctx, hdr, body)
		}
		return r.parse(ctx, hdr, body)
	case 'B', 'E', 'C':
		if n > maxBufferedLen {
			// Only a Bind with huge parameters gets here; it is relayed
			// without its parameters being recorded.
			if typ == 'B' {
				if r.approvals {
					return r.bindUnrecordedApproval(ctx, hdr, n)
				}
				r.bindUnrecorded(n)
			}
			return r.stream(hdr, n, false)
		}
		body, err := r.readBody(n)
		if err != nil {
			return err
		}
		switch typ {
		case 'B':
			if r.approvals {
				if refused := r.bindApproval(ctx, body); refused {
					return nil
				}
				break
			}
			r.bind(body)
		case 'E':
			if r.approvals && r.executeRefused(ctx, body) {
				return nil
			}
			r.execute(ctx, body)
		case 'C':
			r.close(body)
		}
		return r.forward(hdr, body)
	case 'F': // FunctionCall: calls any function by OID, unclassifiable.
		res := sqlpolicy.Result{Class: sqlpolicy.ClassUnknown, Reason: "a fast-path function call"}
		if msg, ok := r.cfg.policy.Refusal(res); !ok {
			if _, err := r.cr.Discard(n); err != nil {
				return trace.Wrap(err)
			}
			r.deny(ctx, "", res, msg, "function_call")
			return r.simpleDenial(msg)
		}
		if r.cfg.policy.NeedsApproval(res) {
			msg := fmt.Sprintf("sigil: statement refused: a fast-path function call cannot be classified and role %q requires a human approval for each write, which cannot be given for a fast-path call; run the function with SELECT", r.cfg.policy.Role)
			if _, err := r.cr.Discard(n); err != nil {
				return trace.Wrap(err)
			}
			r.deny(ctx, "", res, msg, "function_call")
			return r.simpleDenial(msg)
		}
		if err := r.stream(hdr, n, false); err != nil {
			return err
		}
		r.rfqExpected++
		r.statements.Add(1)
		r.record(&audit.Event{Type: audit.EventDBQuery, Success: true, Statement: "<fast-path function call>", Classification: string(res.Class), Details: r.fastPathDetails})
		return nil
	default:
		return r.stream(hdr, n, false)
	}
}

// deny records a refused statement.
func (r *relay) deny(ctx context.Context, text string, res sqlpolicy.Result, msg, proto string) {
	r.record(&audit.Event{
		Type:           audit.EventDBDenied,
		Statement:      validUTF8(text),
		Classification: string(res.Class),
		Error:          msg,
		Details:        map[string]string{"protocol": proto, "reason": res.Reason},
	})
}

// simpleDenial answers a refused simple-protocol message: the server gets
// a Sync instead, so that the client receives the refusal followed by the
// server's own ReadyForQuery, in order after any response still pending.
func (r *relay) simpleDenial(msg string) error {
	r.rfqExpected++
	r.queueInjection(errorResponse("ERROR", codeInsufficientPriv, msg))
	_, err := r.uw.Write(syncMessage)
	return trace.Wrap(err)
}

func (r *relay) queueInjection(data []byte) {
	r.wmu.Lock()
	r.inject = append(r.inject, injection{before: r.rfqExpected, data: data})
	r.wmu.Unlock()
}

func (r *relay) query(ctx context.Context, hdr, body []byte) error {
	text, _, err := cstring(body)
	if err != nil {
		return &clientError{code: codeProtocolViolation, msg: "sigil: malformed Query message"}
	}
	res := r.cfg.classify(text)
	if msg, ok := r.cfg.policy.Refusal(res); !ok {
		r.deny(ctx, text, res, msg, "simple")
		return r.simpleDenial(msg)
	}
	details := r.simpleDetails
	if r.cfg.policy.NeedsApproval(res) {
		var refused bool
		var err error
		if details, refused, err = r.queryApproval(ctx, text, res); refused {
			return err
		}
	}
	if err := r.forward(hdr, body); err != nil {
		return err
	}
	r.rfqExpected++
	r.statements.Add(1)
	r.record(&audit.Event{
		Type:           audit.EventDBQuery,
		Success:        true,
		Statement:      validUTF8(text),
		Classification: string(res.Class),
		Details:        details,
	})
	return nil
}

func (r *relay) parse(ctx context.Context, hdr, body []byte) error {
	name, rest, err := cstring(body)
	if err != nil {
		return &clientError{code: codeProtocolViolation, msg: "sigil: malformed Parse message"}
	}
	text, rest, err := cstring(rest)
	if err != nil {
		return &clientError{code: codeProtocolViolation, msg: "sigil: malformed Parse message"}
	}
	res := r.cfg.classify(text)
	if msg, ok := r.cfg.policy.Refusal(res); !ok {
		r.deny(ctx, text, res, msg, "extended")
		r.discarding = true
		r.denial = errorResponse("ERROR", codeInsufficientPriv, msg)
		return nil
	}
	if r.approvals {
		return r.parseTracked(ctx, hdr, body, name, text, rest, res)
	}
	if _, ok := r.stmts[name]; ok || len(r.stmts) < maxTracked {
		r.stmts[name] = &prepared{text: validUTF8(text), res: res}
	}
	return r.forward(hdr, body)
}

func (r *relay) bind(body []byte) {
	portalName, rest, err := cstring(body)
	if err != nil {
		return
	}
	stmtName, rest, err := cstring(rest)
	if err != nil {
		return
	}
	stmt := r.stmts[stmtName]
	if p := r.portals[portalName]; p != nil {
		// Reuse the portal: events keep the old params slice, which is
		// replaced here, never modified.
		p.stmt, p.params = stmt, bindParams(rest)
		return
	}
	if len(r.portals) >= maxTracked {
		return
	}
	r.portals[portalName] = &portal{stmt: stmt, params: bindParams(rest)}
}

// bindUnrecorded tracks a Bind too large to buffer: its portal and
// statement names are read from the buffered head of the message.
func (r *relay) bindUnrecorded(n int) {
	head, _ := r.cr.Peek(min(n, 4096))
	portalName, rest, err := cstring(head)
	if err != nil {
		return
	}
	stmtName, _, err := cstring(rest)
	if err != nil {
		return
	}
	if _, ok := r.portals[portalName]; !ok && len(r.portals) >= maxTracked {
		return
	}
	r.portals[portalName] = &portal{stmt: r.stmts[stmtName], params: []string{fmt.Sprintf("…[parameters not recorded: Bind message of %d bytes]", n)}}
}

// bindParams renders Bind parameters for the audit log: text as is, binary
// as hex, each bounded, at most maxAuditParams. Malformed input yields what
// could be read; the server rejects the message itself.
func bindParams(b []byte) []string {
	if len(b) < 2 {
		return nil
	}
	nf := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < 2*nf {
		return nil
	}
	formats := b[:2*nf]
	b = b[2*nf:]
	if len(b) < 2 {
		return nil
	}
	np := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	out := make([]string, 0, min(np, maxAuditParams+1))
	for i := 0; i < np; i++ {
		if len(out) == maxAuditParams {
			out = append(out, fmt.Sprintf("…[%d more parameters]", np-i))
			break
		}
		if len(b) < 4 {
			break
		}
		l := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		if l < 0 {
			out = append(out, "NULL")
			continue
		}
		if int(l) > len(b) {
			break
		}
		v := b[:l]
		b = b[l:]
		binaryFormat := false
		switch {
		case nf == 1:
			binaryFormat = binary.BigEndian.Uint16(formats) == 1
		case nf > i:
			binaryFormat = binary.BigEndian.Uint16(formats[2*i:]) == 1
		}
		out = append(out, renderParam(v, binaryFormat))
	}
	return out
}

func renderParam(v []byte, binaryFormat bool) string {
	const suffix = "…[truncated]"
	if binaryFormat || !utf8.Valid(v) {
		limit := (maxAuditParamBytes - 2) / 2
		if len(v) > limit {
			return `\x` + hex.EncodeToString(v[:limit-len(suffix)/2]) + suffix
		}
		return `\x` + hex.EncodeToString(v)
	}
	if len(v) > maxAuditParamBytes {
		cut := maxAuditParamBytes - len(suffix)
		for cut > 0 && !utf8.RuneStart(v[cut]) {
			cut--
		}
		return string(v[:cut]) + suffix
	}
	return string(v)
}

func (r *relay) execute(ctx context.Context, body []byte) {
	name, _, err := cstring(body)
	if err != nil {
		return
	}
	r.statements.Add(1)
	ev := &audit.Event{Type: audit.EventDBQuery, Success: true, Details: r.extendedDetails}
	if p := r.portals[name]; p != nil {
		if p.appr != nil {
			ev.Details = p.appr.details
		}
		ev.Parameters = p.params
		if p.stmt != nil {
			ev.Statement = p.stmt.text
			ev.Classification = string(p.stmt.res.Class)
		}
	}
	if ev.Statement == "" && ev.Classification == "" {
		ev.Statement = "<statement not tracked>"
	}
	r.record(ev)
}

func (r *relay) close(body []byte) {
	if len(body) < 2 {
		return
	}
	name, _, err := cstring(body[1:])
	if err != nil {
		return
	}
	switch {
	case body[0] == 'S' && r.approvals:
		r.closeTracked(name)
	case body[0] == 'S':
		delete(r.stmts, name)
	case body[0] == 'P':
		delete(r.portals, name)
	}
}

// serverChunk copies b to the client, inserting queued refusals at
// message boundaries just before the ReadyForQuery they belong to.
func (r *relay) writeServer(b []byte) error {
	r.bytesOut.Add(int64(len(b)))
	r.wmu.Lock()
	defer r.wmu.Unlock()
	start, i := 0, 0
	for i < len(b) {
		if r.remaining > 0 {
			k := min(r.remaining, len(b)-i)
			i += k
			r.remaining -= k
			continue
		}
		if r.hdrN == 0 && b[i] == 'E' && r.approvals {
			r.batchErr = true
		}
		if r.hdrN == 0 && b[i] == 'Z' {
			next := r.rfqSeen + 1
			for len(r.inject) > 0 && r.inject[0].before <= next {
				if _, err := r.cw.Write(b[start:i]); err != nil {
					return trace.Wrap(err)
				}
				start = i
				if _, err := r.cw.Write(r.inject[0].data); err != nil {
					return trace.Wrap(err)
				}
				r.inject = r.inject[1:]
			}
			r.rfqSeen = next
			if r.approvals {
				r.settle(next)
			}
		}
		r.hdr[r.hdrN] = b[i]
		r.hdrN++
		i++
		if r.hdrN == len(r.hdr) {
			l := int(binary.BigEndian.Uint32(r.hdr[1:5]))
			if l < 4 {
				return trace.BadParameter("server sent a message of invalid length %d", l)
			}
			r.remaining = l - 4
			r.hdrN = 0
		}
	}
	r.midMessage = r.hdrN != 0 || r.remaining > 0
	if start < len(b) {
		if _, err := r.cw.Write(b[start:]); err != nil {
			return trace.Wrap(err)
		}
	}
	return nil
}

// serverLoop copies server bytes to the client until an error.
func (r *relay) serverLoop(src io.Reader) error {
	if r.serverGone != nil {
		defer close(r.serverGone)
	}
	buf := make([]byte, serverChunk)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if werr := r.writeServer(buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return trace.Wrap(err)
		}
	}
}

// writeFatal sends a FATAL error to the client if no server message is
// half written (a partial message would corrupt the stream).
func (r *relay) writeFatal(code, msg string) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.midMessage {
		return
	}
	_, _ = r.cw.Write(errorResponse("FATAL", code, msg))
	r.midMessage = true
}

func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
