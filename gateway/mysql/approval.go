package mysql

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/gateway/session"
	"github.com/sigilhq/sigil/gateway/sqlpolicy"
)

// Write approvals (role write_approval: true). A COM_QUERY that needs one
// is decided as it arrives, over its whole text (all its statements). A
// prepared statement is decided at each COM_STMT_EXECUTE, over its text
// and the bound values: drivers prepare once and execute many times with
// other values, and an approval covers one execution. Statement ids come
// from the server's COM_STMT_PREPARE_OK, so an execution waits until every
// prepare sent before it is answered (a pipelining client may execute id
// -1, "the last prepared", before the gateway has seen it).

// defaultAwaitTimeout bounds the wait for the server's answers to the
// prepares sent before an execution.
const defaultAwaitTimeout = 30 * time.Second

// approveQuery asks for the approval of a COM_QUERY: it returns the
// db.query details naming it, or the refusal and the approval it names.
func (r *relay) approveQuery(ctx context.Context, text string, res sqlpolicy.Result) (details map[string]string, refusal, approvalID string) {
	if sqlpolicy.PreparesStatement(sqlpolicy.DialectMySQL, text) {
		return nil, fmt.Sprintf("sigil: statement refused: role %q requires a human approval for each write, and a write approval covers one execution, not a SQL PREPARE that could run it again; run the statement itself", r.cfg.policy.Role), ""
	}
	fp, err := sqlpolicy.Fingerprint(sqlpolicy.DialectMySQL, text, nil)
	if err != nil {
		return nil, "sigil: statement refused: " + trace.UserMessage(err), ""
	}
	id, reviewer, err := r.cfg.approve(ctx, text, fp, string(res.Class))
	if err != nil {
		return nil, session.Message(err), session.ApprovalID(err)
	}
	return map[string]string{"protocol": "query", "approval_id": id, "approved_by": reviewer}, "", ""
}

// prepareResponse follows the response to a COM_STMT_PREPARE after its
// first packet: an OK is followed by a definition packet per parameter
// and per column, each list ended by an EOF packet unless the client
// negotiated CLIENT_DEPRECATE_EOF. Called by the server goroutine.
func (r *relay) prepareResponse() {
	if len(r.capBuf) < prepareOKLen || r.capBuf[0] != 0x00 {
		r.prepareAnswered()
		return
	}
	rest := 0
	for _, n := range []int{int(binary.LittleEndian.Uint16(r.capBuf[5:])), int(binary.LittleEndian.Uint16(r.capBuf[7:]))} {
		if n > 0 {
			rest += n
			if !r.cfg.deprecateEOF {
				rest++
			}
		}
	}
	if rest == 0 {
		r.prepareAnswered()
		return
	}
	r.prepareRest = rest
}

// prepareAnswered counts down a prepare the server answered. Called by
// the server goroutine.
func (r *relay) prepareAnswered() {
	r.pendingPrepares.Add(-1)
	select {
	case r.answered <- struct{}{}:
	default:
	}
}

// awaitPrepares waits until the server has answered every prepare sent
// so far, so that the statement an execution names is known.
func (r *relay) awaitPrepares(ctx context.Context) error {
	if r.pendingPrepares.Load() <= 0 {
		return nil
	}
	if err := r.uw.Flush(); err != nil {
		return trace.Wrap(err)
	}
	timer := time.NewTimer(r.cfg.awaitTimeout)
	defer timer.Stop()
	for r.pendingPrepares.Load() > 0 {
		select {
		case <-r.answered:
		case <-r.serverGone:
			return trace.ConnectionProblem(nil, "the database connection ended")
		case <-ctx.Done():
			return trace.Wrap(ctx.Err())
		case <-timer.C:
			return trace.LimitExceeded("the database did not answer within %s", r.cfg.awaitTimeout)
		}
	}
	return nil
}

// lookup returns the statement an execution payload names.
func (r *relay) lookup(p []byte) *stmt {
	if len(p) < 5 {
		return nil
	}
	id := binary.LittleEndian.Uint32(p[1:])
	r.stmtMu.Lock()
	defer r.stmtMu.Unlock()
	if id == 0xffffffff {
		id = r.lastStmt
	}
	return r.stmts[id]
}

// markLongData notes COM_STMT_SEND_LONG_DATA (set) or COM_STMT_RESET
// (clear) for the statement the command names: parameters sent apart
// from the execution are not in its fingerprint.
func (r *relay) markLongData(n int, set bool) {
	peek, err := r.cr.Peek(min(n, 5))
	if err != nil {
		return
	}
	if st := r.lookup(peek); st != nil {
		st.longData = set
	}
}

// executeApproval handles COM_STMT_EXECUTE under write approval.
func (r *relay) executeApproval(ctx context.Context, hdr [4]byte, n int) error {
	if err := r.awaitPrepares(ctx); err != nil {
		return r.refuseExecute(nil, n, "sigil: statement refused: the gateway could not learn which statement is executed: "+trace.UserMessage(err), "")
	}
	peek, err := r.cr.Peek(min(n, 5))
	if err != nil {
		return trace.Wrap(unexpectedEOF(err))
	}
	st := r.lookup(peek)
	switch {
	case st == nil:
		return r.refuseExecute(nil, n, fmt.Sprintf("sigil: statement refused: the statement executed was not prepared through the gateway, and role %q requires a human approval for each write; prepare it again", r.cfg.policy.Role), "")
	case !st.approval:
		st.longData = false
		return r.execute(hdr, n)
	case st.longData:
		return r.refuseExecute(st, n, fmt.Sprintf("sigil: statement refused: parameters sent with COM_STMT_SEND_LONG_DATA cannot be shown to a reviewer, and role %q requires a human approval for each write; bind them with the execution", r.cfg.policy.Role), "")
	case n == maxPayload || n > maxStatementLen:
		return r.refuseExecute(st, n, fmt.Sprintf("sigil: statement refused: an execution of %d bytes or more is too large for the gateway to fingerprint, and role %q requires a human approval for each write; send smaller parameters", n, r.cfg.policy.Role), "")
	}
	body, err := r.readBody(n)
	if err != nil {
		return err
	}
	values, review, ok := executeValues(body, st)
	if !ok {
		return r.refuseRead(st, "sigil: statement refused: the parameters of the execution could not be read, so no approval can be asked for them", "")
	}
	fp, err := sqlpolicy.Fingerprint(sqlpolicy.DialectMySQL, st.sql, values)
	if err != nil {
		return r.refuseRead(st, "sigil: statement refused: "+trace.UserMessage(err), "")
	}
	id, reviewer, err := r.cfg.approve(ctx, st.sql+review, fp, string(st.res.Class))
	if err != nil {
		return r.refuseRead(st, session.Message(err), session.ApprovalID(err))
	}
	st.longData = false
	r.statements.Add(1)
	r.cfg.emit(&audit.Event{
		Type:           audit.EventDBQuery,
		Success:        true,
		Statement:      st.text,
		Classification: string(st.res.Class),
		Parameters:     decodeExecuteParams(body, st, n),
		Details:        map[string]string{"protocol": "prepared", "approval_id": id, "approved_by": reviewer},
	})
	return r.forward(hdr, body, true)
}

// refuseExecute drops an execution not read yet and refuses it.
func (r *relay) refuseExecute(st *stmt, n int, msg, approvalID string) error {
	last, err := r.discard(n)
	if err != nil {
		return err
	}
	r.denyExecute(st, msg, approvalID)
	return r.refuse(last+1, erTableAccessDenied, stateSyntaxOrAccess, msg)
}

// refuseRead refuses an execution whose single packet was read.
func (r *relay) refuseRead(st *stmt, msg, approvalID string) error {
	r.denyExecute(st, msg, approvalID)
	return r.refuse(1, erTableAccessDenied, stateSyntaxOrAccess, msg)
}

func (r *relay) denyExecute(st *stmt, msg, approvalID string) {
	text, res := "<statement not tracked>", sqlpolicy.Result{Class: sqlpolicy.ClassUnknown, Reason: "untracked prepared statement"}
	if st != nil {
		text, res = st.text, st.res
	}
	r.denyApproval(text, res, msg, "prepared", approvalID)
}

// denyApproval records a refusal under write approval, naming the
// approval a reviewer must approve, if any.
func (r *relay) denyApproval(text string, res sqlpolicy.Result, msg, proto, approvalID string) {
	details := map[string]string{"protocol": proto, "reason": res.Reason}
	if approvalID != "" {
		details["approval_id"] = approvalID
	}
	r.cfg.emit(&audit.Event{
		Type:           audit.EventDBDenied,
		Statement:      strings.ToValidUTF8(text, "\uFFFD"),
		Classification: string(res.Class),
		Error:          msg,
		Details:        details,
	})
}

// executeValues reads the parameters of a COM_STMT_EXECUTE payload for a
// fingerprint: each one as its type (bound now or by an earlier
// execution) and its value, a NULL distinct from any value. review renders
// them for a reviewer, bounded. It does not change st; ok is false when
// the payload cannot be read completely.
func executeValues(p []byte, st *stmt) (values [][]byte, review string, ok bool) {
	// command(1) stmt_id(4) flags(1) iteration_count(4)
	const head = 10
	n := st.numParams
	if len(p) < head {
		return nil, "", false
	}
	if n == 0 {
		return nil, "", true
	}
	p = p[head:]
	nullLen := (n + 7) / 8
	if len(p) < nullLen+1 {
		return nil, "", false
	}
	nulls, bound := p[:nullLen], p[nullLen]
	p = p[nullLen+1:]
	types := st.types
	if bound == 1 {
		if len(p) < 2*n {
			return nil, "", false
		}
		types, p = p[:2*n], p[2*n:]
	}
	if len(types) != 2*n {
		return nil, "", false
	}
	var shown strings.Builder
	for i := range n {
		t := types[2*i : 2*i+2]
		enc := append([]byte(nil), t...)
		var rendered string
		if nulls[i/8]&(1<<(i%8)) != 0 {
			enc = append(enc, 0)
			rendered = "NULL"
		} else {
			v, rest, ok := decodeValue(p, t[0], t[1]&0x80 != 0)
			if !ok {
				return nil, "", false
			}
			enc = append(append(enc, 1), p[:len(p)-len(rest)]...)
			p = rest
			rendered = "'" + strings.ReplaceAll(v, "'", "''") + "'"
		}
		values = append(values, enc)
		switch {
		case i == audit.MaxParameters:
			fmt.Fprintf(&shown, ", …[%d more parameters]", n-i)
		case i < audit.MaxParameters:
			fmt.Fprintf(&shown, ", ?%d = %s", i+1, rendered)
		}
	}
	return values, "\n-- parameters: " + strings.TrimPrefix(shown.String(), ", "), true
}
