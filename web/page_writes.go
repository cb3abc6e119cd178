package web

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	"connectrpc.com/connect"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

// maxRecentWrites bounds the decisions the agent writes page shows.
const maxRecentWrites = 50

type writesData struct {
	// Unavailable says why there is no approval service.
	Unavailable string
	// Pending waits for a review; Recent are the latest other approvals.
	Pending, Recent []writeRow
	ReviewMFA
}

type writeRow struct {
	ID, Agent, AgentKind, Person, Database, DBUser, DBName string
	Statement, Class, State, StateClass                    string
	Created, Expires, Reviewer, Reason                     string
}

// writesPage lists the writes agents ask to run (write_approval roles):
// pending ones to approve or deny, and recent decisions. MFA approvals of
// the user's own sessions are another page (/web/approvals).
func (h *Handler) writesPage(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	h.renderWrites(w, r, s, &view{})
}

func (h *Handler) renderWrites(w http.ResponseWriter, r *http.Request, s *consoleSession, v *view) {
	v.Title, v.Nav, v.Session = "Agent writes", "writes", s
	d := &writesData{}
	v.Data = d
	if msg := r.URL.Query().Get("done"); msg != "" && v.Error == "" {
		v.Notice = msg
	}
	resp, err := h.console.api.approvals.ListApprovals(h.as(r, s), connect.NewRequest(&sigilv1.ListApprovalsRequest{}))
	var ce *connect.Error
	if errors.As(err, &ce) && ce.Code() == connect.CodeUnimplemented {
		d.Unavailable = ce.Message()
		h.renderPage(w, http.StatusOK, "writes", v)
		return
	}
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	if d.ReviewMFA, err = h.reviewMFAOf(r, s); err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	// The API lists newest first.
	for _, a := range resp.Msg.Approvals {
		row := writeRow{
			ID: a.Id, Agent: a.Agent, AgentKind: a.AgentKind, Person: a.OnBehalfOf, Database: a.Database, DBUser: a.DbUser, DBName: a.DbName,
			Statement: a.Statement, Class: a.Class, State: a.State, Reviewer: a.Reviewer, Reason: a.Reason,
			Created: a.GetCreated().AsTime().UTC().Format("2006-01-02 15:04"), Expires: a.GetExpires().AsTime().UTC().Format("15:04"),
		}
		switch a.State {
		case "pending":
			d.Pending = append(d.Pending, row)
			continue
		case "approved", "used":
			row.StateClass = "ok"
		default:
			row.StateClass = "bad"
		}
		if len(d.Recent) < maxRecentWrites {
			d.Recent = append(d.Recent, row)
		}
	}
	status := http.StatusOK
	if v.Error != "" {
		status = http.StatusBadRequest
	}
	h.renderPage(w, status, "writes", v)
}

func (h *Handler) reviewWrite(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	id := r.PathValue("id")
	reviewer, err := h.reviewer(r, s, id)
	if err != nil {
		_, msg := h.errorStatus(err)
		h.renderWrites(w, r, s, &view{Error: msg})
		return
	}
	approve := r.PostForm.Get("decision") == "approve"
	resp, err := h.console.api.approvals.ReviewApproval(h.asIdentity(r, s, reviewer), connect.NewRequest(&sigilv1.ReviewApprovalRequest{
		Id: id, Approve: approve, Reason: strings.TrimSpace(r.PostForm.Get("reason")),
	}))
	if err != nil {
		_, msg := h.errorStatus(err)
		h.renderWrites(w, r, s, &view{Error: msg})
		return
	}
	a := resp.Msg.Approval
	msg := "Denied the write " + a.Agent + " asked to run on " + a.Database + "."
	if approve {
		msg = "Approved: " + a.Agent + " may run the statement once on " + a.Database + " until " + a.GetExpires().AsTime().UTC().Format("15:04") + " UTC."
	}
	http.Redirect(w, r, "/web/writes?done="+url.QueryEscape(msg), http.StatusSeeOther)
}
