package web

import (
	"net/http"
	"net/url"
	"sort"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit"
)

// sessionWindow is how far back the sessions page looks for sessions
// that started and have not ended.
const sessionWindow = 24 * time.Hour

type sessionsData struct {
	Window   string
	Sessions []sessionRow
}

type sessionRow struct {
	ID, User, Kind, OnBehalfOf, Protocol, Resource, As, Client, MFADevice, Started, Age string
	started                                                                             time.Time
}

// activeSessions pairs start and end events of the window: a start without
// an end is a live session (or one whose gateway died; the lock still
// applies to its user).
func (h *Handler) activeSessions(r *http.Request, s *consoleSession) ([]sessionRow, error) {
	now := h.console.cfg.Clock()
	req := &sigilv1.SearchAuditRequest{
		Since: timestamppb.New(now.Add(-sessionWindow)),
		Types: []string{audit.EventDBSessionStart, audit.EventDBSessionEnd, audit.EventSSHSessionStart, audit.EventSSHSessionEnd},
		Limit: 1000,
	}
	ctx := h.as(r, s)
	ended := map[string]bool{}
	var starts []*sigilv1.AuditEvent
	for page := 0; page < 10; page++ {
		resp, err := h.console.api.audit.Search(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, trace.Wrap(err)
		}
		for _, ev := range resp.Msg.Events {
			switch ev.Type {
			case audit.EventDBSessionEnd, audit.EventSSHSessionEnd:
				ended[ev.SessionId] = true
			default:
				if ev.Success && ev.SessionId != "" {
					starts = append(starts, ev)
				}
			}
		}
		if resp.Msg.NextPageToken == "" {
			break
		}
		req.PageToken = resp.Msg.NextPageToken
	}
	var rows []sessionRow
	for _, ev := range starts {
		if ended[ev.SessionId] {
			continue
		}
		res := ev.GetResource()
		row := sessionRow{
			ID: ev.SessionId, User: ev.GetIdentity().GetUser(), Kind: ev.GetIdentity().GetKind(), OnBehalfOf: ev.GetIdentity().GetOnBehalfOf(),
			Protocol: ev.Details["protocol"], Resource: res.GetName(), Client: ev.ClientAddr,
			MFADevice: ev.GetIdentity().GetMfaDevice(), started: ev.GetTime().AsTime(),
		}
		switch {
		case res.GetDbUser() != "":
			row.As = res.GetDbUser()
			if res.GetDbName() != "" {
				row.As += " / " + res.GetDbName()
			}
		case res.GetLogin() != "":
			row.As = res.GetLogin()
		}
		if row.Protocol == "" {
			row.Protocol = res.GetKind()
		}
		row.Started = row.started.UTC().Format("2006-01-02 15:04:05")
		row.Age = humanSince(now.Sub(row.started))
		rows = append(rows, row)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].started.After(rows[j].started) })
	return rows, nil
}

func (h *Handler) sessionsPage(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	rows, err := h.activeSessions(r, s)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	v := &view{Title: "Active sessions", Nav: "sessions", Session: s, Data: &sessionsData{Window: "24 hours", Sessions: rows}}
	if msg := r.URL.Query().Get("locked"); msg != "" {
		v.Notice = "Locked " + msg + ": their sessions end within a second."
	}
	if r.URL.Query().Get("fragment") != "" {
		h.renderFragment(w, "sessions", "active", v)
		return
	}
	h.renderPage(w, http.StatusOK, "sessions", v)
}

// terminateSession ends a session the only way that also stops its user
// from starting another: a lock on the user.
func (h *Handler) terminateSession(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	f := r.PostForm
	user := f.Get("user")
	ttl, err := time.ParseDuration(f.Get("ttl"))
	if err != nil || ttl <= 0 || ttl > 24*time.Hour {
		ttl = time.Hour
	}
	req := &sigilv1.AddLockRequest{TtlSeconds: int64(ttl / time.Second), Message: "session " + f.Get("session") + " terminated from the web console by " + s.User}
	switch f.Get("kind") {
	case "bot", "agent":
		req.Bot = user
	default:
		req.User = user
	}
	if _, err := h.console.api.locks.AddLock(h.as(r, s), connect.NewRequest(req)); err != nil {
		rows, lerr := h.activeSessions(r, s)
		if lerr != nil {
			h.consoleError(w, r, s, err)
			return
		}
		status, msg := h.errorStatus(err)
		h.renderPage(w, status, "sessions", &view{Title: "Active sessions", Nav: "sessions", Session: s, Error: msg, Data: &sessionsData{Window: "24 hours", Sessions: rows}})
		return
	}
	http.Redirect(w, r, "/web/sessions?locked="+url.QueryEscape(user+" for "+ttl.String()), http.StatusSeeOther)
}
