package postgres

import (
	"bytes"
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

// Write approvals (role write_approval: true). A simple-protocol Query
// that needs one is decided as it arrives. In the extended protocol the
// decision is made at Bind, over the statement text, the parameter types
// its Parse declared and the bound values: drivers prepare once and
// execute many times with other values, and an approval covers one
// execution. The portal a Bind approves may then be executed once.
//
// Approving at Bind needs to know which statement the server will run for
// the name bound, and the server skips every message after an error until
// Sync: a Parse or Close the relay saw may not have taken effect. So under
// write approval each Parse and Close is an entry that remembers what the
// name held before (prev), and the server side marks each entry done or
// failed when the ReadyForQuery of its batch arrives (settle). A Bind in
// the batch of the name's last Parse runs that statement or nothing (an
// earlier failure makes the server skip the Bind too); in a later batch,
// the candidates are the entries back to the first one known done. If one
// candidate needs an approval, the approval is asked for that one (should
// the server run another, an approval was spent on a statement that
// needed none); if two different ones do, or the name may hold a
// statement no Parse made (SQL PREPARE), the Bind is refused.

const (
	// maxHistory bounds the entries remembered per statement name.
	maxHistory = 32
	// defaultAwaitTimeout bounds the wait for the server's answer to the
	// batch that prepared a statement being bound.
	defaultAwaitTimeout = 30 * time.Second
)

type outcome int8

const (
	outcomeUnknown outcome = iota
	// outcomeDone: the batch got its ReadyForQuery without an error, so
	// the Parse or Close took effect.
	outcomeDone
	// outcomeFailed: the batch had an error; the entry may or may not
	// have taken effect.
	outcomeFailed
)

// tracking is what a prepared-statement entry carries under write
// approval.
type tracking struct {
	// sql is the exact text, for the fingerprint (prepared.text has
	// invalid UTF-8 replaced).
	sql string
	// approval: each execution needs a human approval.
	approval bool
	// paramTypes are the parameter type OIDs the Parse declared, as sent.
	paramTypes []byte
	// absent marks a Close: no statement by this name.
	absent bool
	// batch is the number of the ReadyForQuery that ends the batch the
	// Parse or Close was sent in.
	batch uint64
	// outcome is written by the server goroutine, under wmu.
	outcome outcome
	// prev is what the name held before, if this did not take effect.
	prev *prepared
	// depth counts the entries behind this one; cut says older ones were
	// dropped, so what the name held before is not known.
	depth int
	cut   bool
}

// portalApproval marks a portal whose execution a human approved.
type portalApproval struct {
	// details of its db.query event: approval id and reviewer.
	details map[string]string
	// used once the portal has been executed: a second Execute is refused.
	used bool
}

// register queues e to be settled by its batch's ReadyForQuery.
func (r *relay) register(e *prepared) {
	r.wmu.Lock()
	r.inflight = append(r.inflight, e)
	r.wmu.Unlock()
}

// settle marks the entries of batches up to ReadyForQuery number k done,
// or failed when the server sent an error since the last one. Called by
// the server goroutine with wmu held.
func (r *relay) settle(k uint64) {
	result := outcomeDone
	if r.batchErr {
		result = outcomeFailed
	}
	r.batchErr = false
	select {
	case r.answered <- struct{}{}:
	default:
	}
	i := 0
	for ; i < len(r.inflight) && r.inflight[i].track.batch <= k; i++ {
		r.inflight[i].track.outcome = result
		r.inflight[i] = nil
	}
	if i > 0 {
		r.inflight = append(r.inflight[:0], r.inflight[i:]...)
	}
}

func (r *relay) outcomeOf(e *prepared) outcome {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	return e.track.outcome
}

// link makes old what the name held before e.
func (r *relay) link(e, old *prepared) {
	if old == nil || old.track == nil {
		return
	}
	if r.outcomeOf(old) == outcomeDone {
		old.track.prev, old.track.depth, old.track.cut = nil, 0, false
	}
	e.track.prev, e.track.depth = old, old.track.depth+1
	if e.track.depth > maxHistory {
		old.track.prev, old.track.cut = nil, true
		e.track.depth = 1
	}
}

// sweep forgets names whose last entry is a Close that took effect.
func (r *relay) sweep() {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	for name, e := range r.stmts {
		if e.track != nil && e.track.absent && e.track.outcome == outcomeDone {
			delete(r.stmts, name)
		}
	}
}

// parseTracked records a Parse under write approval and forwards it.
func (r *relay) parseTracked(ctx context.Context, hdr, body []byte, name, text string, rest []byte, res sqlpolicy.Result) error {
	need := r.cfg.policy.NeedsApproval(res)
	if need && sqlpolicy.PreparesStatement(sqlpolicy.DialectPostgres, text) {
		r.refuseExtended(ctx, text, res, r.prepareRefusal(), "")
		return nil
	}
	e := &prepared{text: validUTF8(text), res: res, track: &tracking{approval: need, batch: r.rfqExpected + 1}}
	if need {
		e.track.sql = text
		e.track.paramTypes = parseParamTypes(rest)
	}
	old, known := r.stmts[name]
	if !known && len(r.stmts) >= maxTracked {
		r.sweep()
		if len(r.stmts) >= maxTracked {
			if need {
				r.refuseExtended(ctx, text, res, fmt.Sprintf("sigil: statement refused: this connection holds %d prepared statements, too many to track one more that needs a human approval; close some and try again", len(r.stmts)), "")
				return nil
			}
			return r.forward(hdr, body)
		}
	}
	r.link(e, old)
	r.stmts[name] = e
	r.register(e)
	return r.forward(hdr, body)
}

// closeTracked records the Close of a statement under write approval:
// the name holds nothing once it takes effect.
func (r *relay) closeTracked(name string) {
	old := r.stmts[name]
	if old == nil {
		return
	}
	e := &prepared{track: &tracking{absent: true, batch: r.rfqExpected + 1}}
	r.link(e, old)
	r.stmts[name] = e
	r.register(e)
}

// awaitOutcomes waits until the server has answered the batches that
// prepared or closed name, if a pipelining client binds it before that:
// only then does the gateway know which statement the name holds.
func (r *relay) awaitOutcomes(ctx context.Context, name string) error {
	current := r.rfqExpected + 1
	var target, seen uint64
	r.wmu.Lock()
	for c := r.stmts[name]; c != nil && c.track != nil; c = c.track.prev {
		t := c.track
		if t.batch == current {
			break
		}
		if t.outcome == outcomeUnknown {
			target = max(target, t.batch)
		}
		if t.outcome == outcomeDone {
			break
		}
	}
	seen = r.rfqSeen
	r.wmu.Unlock()
	if target <= seen {
		return nil
	}
	if err := r.uw.Flush(); err != nil {
		return trace.Wrap(err)
	}
	timer := time.NewTimer(r.cfg.awaitTimeout)
	defer timer.Stop()
	for {
		r.wmu.Lock()
		seen = r.rfqSeen
		r.wmu.Unlock()
		if seen >= target {
			return nil
		}
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
}

// resolve returns what a Bind of statement name will run: shown for the
// audit log, need when that needs an approval, or a refusal message when
// the gateway cannot tell.
func (r *relay) resolve(name string) (shown, need *prepared, problem string) {
	cur := r.stmts[name]
	if cur == nil || cur.track == nil {
		if name != "" {
			// A named statement no Parse made may come from SQL PREPARE,
			// possibly of a write run once under an approval.
			return cur, nil, fmt.Sprintf("sigil: statement refused: prepared statement %q was not prepared by a Parse message the gateway saw, and role %q requires a human approval for each write; prepare it with Parse", name, r.cfg.policy.Role)
		}
		return cur, nil, ""
	}
	current := r.rfqExpected + 1
	r.wmu.Lock()
	defer r.wmu.Unlock()
	for c := cur; c != nil; c = c.track.prev {
		t := c.track
		switch {
		case t.absent && name != "":
			problem = fmt.Sprintf("sigil: statement refused: prepared statement %q was closed, and role %q requires a human approval for each write; prepare it again with Parse", name, r.cfg.policy.Role)
		case t.absent:
		default:
			if shown == nil {
				shown = c
			}
			if t.approval {
				if need != nil && (need.track.sql != t.sql || !bytes.Equal(need.track.paramTypes, t.paramTypes)) {
					problem = fmt.Sprintf("sigil: statement refused: prepared statement %q was redefined in a batch that failed, so the gateway cannot tell which statement the server holds, and role %q requires a human approval for each write; close it and prepare it again", name, r.cfg.policy.Role)
				}
				if need == nil {
					need = c
				}
			}
		}
		if c == cur && t.batch == current {
			// The Bind runs this statement or, if anything before it in
			// the batch failed, nothing.
			break
		}
		if t.outcome == outcomeDone {
			t.prev = nil
			break
		}
		if t.prev == nil && (t.cut || name != "") {
			// What the name held before this entry is not known: for a
			// named statement, possibly one made by SQL PREPARE.
			problem = fmt.Sprintf("sigil: statement refused: the gateway cannot tell which statement the server holds as %q after an error, and role %q requires a human approval for each write; close it and prepare it again", name, r.cfg.policy.Role)
		}
	}
	return shown, need, problem
}

// bindApproval handles a Bind under write approval; refused means it was
// not forwarded and the relay discards until Sync.
func (r *relay) bindApproval(ctx context.Context, body []byte) (refused bool) {
	portalName, rest, err := cstring(body)
	if err != nil {
		return false
	}
	stmtName, rest, err := cstring(rest)
	if err != nil {
		return false
	}
	if err := r.awaitOutcomes(ctx, stmtName); err != nil {
		r.refuseStatement(ctx, nil, "sigil: statement refused: the gateway could not learn which statement the server holds as "+fmt.Sprintf("%q", stmtName)+": "+trace.UserMessage(err), "")
		return true
	}
	shown, need, problem := r.resolve(stmtName)
	if problem != "" {
		r.refuseStatement(ctx, shown, problem, "")
		return true
	}
	_, exists := r.portals[portalName]
	if need == nil {
		if exists || len(r.portals) < maxTracked {
			r.portals[portalName] = &portal{stmt: shown, params: bindParams(rest)}
		}
		return false
	}
	if !exists && len(r.portals) >= maxTracked {
		r.refuseStatement(ctx, need, fmt.Sprintf("sigil: statement refused: this connection holds %d portals, too many to track one more that needs a human approval; close some and try again", len(r.portals)), "")
		return true
	}
	values, review, ok := boundValues(rest, need.track.paramTypes)
	if !ok {
		r.refuseStatement(ctx, need, "sigil: statement refused: the parameters of its Bind message could not be read, so no approval can be asked for them", "")
		return true
	}
	fp, err := sqlpolicy.Fingerprint(sqlpolicy.DialectPostgres, need.track.sql, values)
	if err != nil {
		r.refuseStatement(ctx, need, "sigil: statement refused: "+trace.UserMessage(err), "")
		return true
	}
	id, reviewer, err := r.cfg.approve(ctx, need.track.sql+review, fp, string(need.res.Class))
	if err != nil {
		r.refuseStatement(ctx, need, session.Message(err), session.ApprovalID(err))
		return true
	}
	r.portals[portalName] = &portal{stmt: need, params: bindParams(rest), appr: &portalApproval{
		details: map[string]string{"protocol": "extended", "approval_id": id, "approved_by": reviewer},
	}}
	return false
}

// bindUnrecordedApproval handles, under write approval, a Bind too large
// to buffer: it cannot be fingerprinted, so it is refused if its
// statement needs an approval.
func (r *relay) bindUnrecordedApproval(ctx context.Context, hdr []byte, n int) error {
	head, _ := r.cr.Peek(min(n, 4096))
	portalName, rest, err := cstring(head)
	stmtName := ""
	if err == nil {
		stmtName, _, err = cstring(rest)
	}
	var shown, need *prepared
	problem := "sigil: statement refused: the gateway could not read the names in a Bind message that large, and the role requires a human approval for each write"
	if err == nil {
		if err = r.awaitOutcomes(ctx, stmtName); err != nil {
			problem = "sigil: statement refused: the gateway could not learn which statement the server holds as " + fmt.Sprintf("%q", stmtName) + ": " + trace.UserMessage(err)
		} else {
			shown, need, problem = r.resolve(stmtName)
		}
	}
	if problem == "" && need == nil {
		if _, ok := r.portals[portalName]; ok || len(r.portals) < maxTracked {
			r.portals[portalName] = &portal{stmt: shown, params: []string{fmt.Sprintf("…[parameters not recorded: Bind message of %d bytes]", n)}}
		}
		return r.stream(hdr, n, false)
	}
	if problem == "" {
		shown = need
		problem = fmt.Sprintf("sigil: statement refused: its Bind message of %d bytes is too large for the gateway to fingerprint, and role %q requires a human approval for each write; send smaller parameters", n, r.cfg.policy.Role)
	}
	if _, err := r.cr.Discard(n); err != nil {
		return trace.Wrap(err)
	}
	r.refuseStatement(ctx, shown, problem, "")
	return nil
}

// executeRefused consumes the approval of the portal an Execute names; a
// portal whose approval was used already is refused.
func (r *relay) executeRefused(ctx context.Context, body []byte) bool {
	name, _, err := cstring(body)
	if err != nil {
		return false
	}
	p := r.portals[name]
	if p == nil || p.appr == nil {
		return false
	}
	if !p.appr.used {
		p.appr.used = true
		return false
	}
	id := p.appr.details["approval_id"]
	r.refuseStatement(ctx, p.stmt, fmt.Sprintf("sigil: statement refused: portal %q already ran once under approval %s, and each execution needs its own approval; bind the statement again", name, id), id)
	return true
}

// queryApproval asks for the approval of a simple-protocol write: it
// returns the db.query details naming the approval, or refuses the query
// (refused true, with the error of writing the refusal).
func (r *relay) queryApproval(ctx context.Context, text string, res sqlpolicy.Result) (map[string]string, bool, error) {
	var msg, id string
	if sqlpolicy.PreparesStatement(sqlpolicy.DialectPostgres, text) {
		msg = r.prepareRefusal()
	} else if fp, err := sqlpolicy.Fingerprint(sqlpolicy.DialectPostgres, text, nil); err != nil {
		msg = "sigil: statement refused: " + trace.UserMessage(err)
	} else {
		approvalID, reviewer, err := r.cfg.approve(ctx, text, fp, string(res.Class))
		if err == nil {
			return map[string]string{"protocol": "simple", "approval_id": approvalID, "approved_by": reviewer}, false, nil
		}
		msg, id = session.Message(err), session.ApprovalID(err)
	}
	r.denyApproval(text, res, msg, "simple", id)
	return nil, true, r.simpleDenial(msg)
}

func (r *relay) prepareRefusal() string {
	return fmt.Sprintf("sigil: statement refused: role %q requires a human approval for each write, and a write approval covers one execution, not a SQL PREPARE that could run it again; run the statement itself", r.cfg.policy.Role)
}

// refuseStatement refuses an extended-protocol message about st (nil if
// not known): the relay discards until Sync, which gets the refusal.
func (r *relay) refuseStatement(ctx context.Context, st *prepared, msg, approvalID string) {
	text, res := "", sqlpolicy.Result{Class: sqlpolicy.ClassUnknown, Reason: "untracked prepared statement"}
	if st != nil {
		text, res = st.text, st.res
	}
	r.refuseExtended(ctx, text, res, msg, approvalID)
}

func (r *relay) refuseExtended(_ context.Context, text string, res sqlpolicy.Result, msg, approvalID string) {
	r.denyApproval(text, res, msg, "extended", approvalID)
	r.discarding = true
	r.denial = errorResponse("ERROR", codeInsufficientPriv, msg)
}

// denyApproval records a refusal under write approval, naming the
// approval that a reviewer must approve, if any.
func (r *relay) denyApproval(text string, res sqlpolicy.Result, msg, proto, approvalID string) {
	details := map[string]string{"protocol": proto, "reason": res.Reason}
	if approvalID != "" {
		details["approval_id"] = approvalID
	}
	r.record(&audit.Event{
		Type:           audit.EventDBDenied,
		Statement:      validUTF8(text),
		Classification: string(res.Class),
		Error:          msg,
		Details:        details,
	})
}

// parseParamTypes returns the parameter type OIDs of a Parse message (the
// bytes after the query text), as sent.
func parseParamTypes(b []byte) []byte {
	if len(b) < 2 {
		return nil
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) < 2+4*n {
		return nil
	}
	return bytes.Clone(b[2 : 2+4*n])
}

// boundValues reads the parameters of a Bind message (after its portal
// and statement names) for a fingerprint: each one as its declared type,
// its format and its value, a NULL distinct from any value. review renders
// them for a reviewer, bounded. ok is false for a malformed message.
func boundValues(b, types []byte) (values [][]byte, review string, ok bool) {
	if len(b) < 2 {
		return nil, "", false
	}
	nf := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < 2*nf+2 {
		return nil, "", false
	}
	formats := b[:2*nf]
	b = b[2*nf:]
	np := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if nf > 1 && nf != np {
		return nil, "", false
	}
	var shown strings.Builder
	for i := range np {
		if len(b) < 4 {
			return nil, "", false
		}
		l := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		var v []byte
		if l >= 0 {
			if int(l) > len(b) {
				return nil, "", false
			}
			v, b = b[:l], b[l:]
		}
		var format []byte
		switch {
		case nf == 1:
			format = formats[:2]
		case nf > 1:
			format = formats[2*i : 2*i+2]
		default:
			format = []byte{0, 0}
		}
		enc := make([]byte, 0, 4+2+1+len(v))
		if 4*i+4 <= len(types) {
			enc = append(enc, types[4*i:4*i+4]...)
		} else {
			enc = append(enc, 0, 0, 0, 0)
		}
		enc = append(enc, format...)
		if l < 0 {
			enc = append(enc, 0)
		} else {
			enc = append(append(enc, 1), v...)
		}
		values = append(values, enc)
		switch {
		case i == maxAuditParams:
			fmt.Fprintf(&shown, ", …[%d more parameters]", np-i)
		case i > maxAuditParams:
		case l < 0:
			fmt.Fprintf(&shown, ", $%d = NULL", i+1)
		default:
			fmt.Fprintf(&shown, ", $%d = '%s'", i+1, strings.ReplaceAll(renderParam(v, binary.BigEndian.Uint16(format) == 1), "'", "''"))
		}
	}
	if np == 0 {
		return nil, "", true
	}
	return values, "\n-- parameters: " + strings.TrimPrefix(shown.String(), ", "), true
}
