package web

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit"
)

const (
	// auditPage is how many events one page shows.
	auditPageSize = 100
	// formTime is the value format of <input type="datetime-local">.
	formTime = "2006-01-02T15:04"
)

type auditData struct {
	Since, Until, User, Kind, Type, Resource, Session string
	Kinds, Types                                      []string
	Events                                            []eventRow
	Detail                                            *eventDetail
	LiveURL, Next                                     string
}

type eventRow struct {
	ID, Time, Type, User, Kind, Resource, MFADevice string
	Success                                         bool
	Error, ShortError, DetailURL                    string
}

type eventDetail struct {
	ID, Time, Type, User, Kind, OnBehalfOf, MFADevice, CertSerial string
	Roles                                                         []string
	Resource, SessionID, ClientAddr, Error                        string
	Statement, Classification, Hash                               string
	Success                                                       bool
	Details                                                       map[string]string
}

func resourceText(r *sigilv1.AuditResource) string {
	if r == nil || (r.Kind == "" && r.Name == "") {
		return ""
	}
	s := r.Kind
	if r.Name != "" {
		s += " " + r.Name
	}
	switch {
	case r.DbUser != "":
		s += " as " + r.DbUser
		if r.DbName != "" {
			s += "/" + r.DbName
		}
	case r.Login != "":
		s += " as " + r.Login
	}
	return strings.TrimSpace(s)
}

// parseFormTime reads a datetime-local value as UTC (the page says so).
func parseFormTime(field, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(formTime, v)
	if err != nil {
		return time.Time{}, trace.BadParameter("%s: %q is not a date and time", field, v)
	}
	return t.UTC(), nil
}

func (h *Handler) auditPage(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	q := r.URL.Query()
	d := &auditData{
		Since: q.Get("since"), Until: q.Get("until"), User: q.Get("user"), Kind: q.Get("kind"),
		Type: q.Get("type"), Resource: q.Get("resource"), Session: q.Get("session"),
		Kinds: []string{"human", "bot", "agent"}, Types: audit.EventTypes(),
	}
	v := &view{Title: "Audit log", Nav: "audit", Session: s, Data: d}
	req := &sigilv1.SearchAuditRequest{User: d.User, Kind: d.Kind, Resource: d.Resource, SessionId: d.Session, Limit: auditPageSize, PageToken: q.Get("page")}
	if d.Type != "" {
		req.Types = []string{d.Type}
	}
	since, err := parseFormTime("From", d.Since)
	if err == nil && !since.IsZero() {
		req.Since = timestamppb.New(since)
	}
	until, uerr := parseFormTime("To", d.Until)
	if err == nil {
		err = uerr
	}
	if err == nil && !until.IsZero() {
		req.Until = timestamppb.New(until)
	}
	if err != nil {
		v.Error = trace.UserMessage(err)
		h.renderPage(w, http.StatusBadRequest, "audit", v)
		return
	}
	ctx := h.as(r, s)
	if id := q.Get("event"); id != "" {
		d.Detail, err = h.findEvent(ctx, id, q.Get("at"))
		if err != nil {
			_, v.Error = h.errorStatus(err)
		}
	}
	resp, err := h.console.api.audit.Search(ctx, connect.NewRequest(req))
	if err != nil {
		status, msg := h.errorStatus(err)
		v.Error = msg
		h.renderPage(w, status, "audit", v)
		return
	}
	filters := url.Values{}
	for _, k := range []string{"since", "until", "user", "kind", "type", "resource", "session"} {
		if val := q.Get(k); val != "" {
			filters.Set(k, val)
		}
	}
	for _, ev := range resp.Msg.Events {
		row := eventRow{
			ID: ev.Id, Time: ev.GetTime().AsTime().UTC().Format("2006-01-02 15:04:05"), Type: ev.Type,
			User: ev.GetIdentity().GetUser(), Kind: ev.GetIdentity().GetKind(), MFADevice: ev.GetIdentity().GetMfaDevice(),
			Resource: resourceText(ev.Resource), Success: ev.Success, Error: ev.Error, ShortError: clip(ev.Error, 60),
		}
		dq := url.Values{}
		for k, vals := range filters {
			dq[k] = vals
		}
		dq.Set("event", ev.Id)
		dq.Set("at", ev.GetTime().AsTime().UTC().Format(time.RFC3339Nano))
		row.DetailURL = "/web/audit?" + dq.Encode() + "#event"
		d.Events = append(d.Events, row)
	}
	if resp.Msg.NextPageToken != "" {
		nq := url.Values{}
		for k, vals := range filters {
			nq[k] = vals
		}
		nq.Set("page", resp.Msg.NextPageToken)
		d.Next = "/web/audit?" + nq.Encode()
	}
	lq := url.Values{}
	for k, vals := range filters {
		lq[k] = vals
	}
	lq.Set("fragment", "1")
	d.LiveURL = "/web/audit?" + lq.Encode()
	if q.Get("fragment") != "" {
		h.renderFragment(w, "audit", "events", v)
		return
	}
	h.renderPage(w, http.StatusOK, "audit", v)
}

// findEvent finds one event by id near its time (the store searches by
// time, not id).
func (h *Handler) findEvent(ctx context.Context, id, at string) (*eventDetail, error) {
	t, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		return nil, trace.BadParameter("the event link is malformed")
	}
	resp, err := h.console.api.audit.Search(ctx, connect.NewRequest(&sigilv1.SearchAuditRequest{
		Since: timestamppb.New(t.Add(-time.Second)), Until: timestamppb.New(t.Add(time.Second)), Limit: 1000,
	}))
	if err != nil {
		return nil, trace.Wrap(err)
	}
	for _, ev := range resp.Msg.Events {
		if ev.Id != id {
			continue
		}
		idn := ev.GetIdentity()
		return &eventDetail{
			ID: ev.Id, Time: ev.GetTime().AsTime().UTC().Format("2006-01-02 15:04:05.000"), Type: ev.Type,
			User: idn.GetUser(), Kind: idn.GetKind(), Roles: idn.GetRoles(), OnBehalfOf: idn.GetOnBehalfOf(),
			MFADevice: idn.GetMfaDevice(), CertSerial: idn.GetCertSerial(),
			Resource: resourceText(ev.Resource), SessionID: ev.SessionId, ClientAddr: ev.ClientAddr, Error: ev.Error,
			Statement: ev.Statement, Classification: ev.Classification, Hash: ev.Hash, Success: ev.Success, Details: ev.Details,
		}, nil
	}
	return nil, trace.NotFound("event %s is not in the audit log (or not yours to read)", id)
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
