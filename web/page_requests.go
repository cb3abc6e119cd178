package web

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/mfa"
)

type requestsData struct {
	// Unavailable says why there is no request service.
	Unavailable string
	Requests    []requestRow
	ReviewMFA
	// Reviewable says some request waits for this user's review.
	Reviewable bool
}

// ReviewMFA is what a page with review forms needs to ask for the MFA
// check of reviewers whose roles require one (access requests and agents'
// write approvals alike); the "reviewform" template renders it.
type ReviewMFA struct {
	// NeedsMFA: the user's roles require an MFA check per review.
	NeedsMFA        bool
	HasTOTP, HasKey bool
}

// reviewForm is what the "reviewform" template gets: the form posts to
// Path+"/review", the security key check to Path+"/challenge".
type reviewForm struct {
	ReviewMFA
	CSRF, Path string
}

func newReviewForm(csrf string, m ReviewMFA, base, id string) reviewForm {
	return reviewForm{ReviewMFA: m, CSRF: csrf, Path: base + id}
}

func (h *Handler) reviewMFAOf(r *http.Request, s *consoleSession) (ReviewMFA, error) {
	var m ReviewMFA
	role, err := h.console.cfg.Auth.SessionMFARole(r.Context(), s.identity())
	if err != nil || role == "" {
		return m, trace.Wrap(err)
	}
	m.NeedsMFA = true
	devs, err := h.console.api.mfa.ListMFADevices(h.as(r, s), connect.NewRequest(&sigilv1.ListMFADevicesRequest{}))
	if err != nil {
		return m, trace.Wrap(err)
	}
	for _, dev := range devs.Msg.Devices {
		m.HasTOTP = m.HasTOTP || dev.Type == mfa.TypeTOTP
		m.HasKey = m.HasKey || dev.Type == mfa.TypeWebAuthn
	}
	return m, nil
}

// reviewer is s's identity for a review of id (an access request or a
// write approval), carrying the MFA check the form sent, if any, as a
// certificate from the MFA ceremony would.
func (h *Handler) reviewer(r *http.Request, s *consoleSession, id string) (*certid.Identity, error) {
	who := s.identity()
	f := r.PostForm
	if ch, code := f.Get("mfa_challenge"), f.Get("otp"); ch != "" || strings.TrimSpace(code) != "" {
		used, err := h.console.cfg.Auth.ReviewMFA(r.Context(), s.User, id, ch, code, s.binding(), r.RemoteAddr)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		who.MFADevice = used.Name
	}
	return who, nil
}

type requestRow struct {
	ID, User, Reason, State, StateClass, Created, Reviews string
	Roles                                                 []string
	Reviewable, Mine                                      bool
}

func (h *Handler) requestsPage(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	h.renderRequests(w, r, s, &view{})
}

func (h *Handler) renderRequests(w http.ResponseWriter, r *http.Request, s *consoleSession, v *view) {
	v.Title, v.Nav, v.Session = "Access requests", "requests", s
	d := &requestsData{}
	v.Data = d
	if msg := r.URL.Query().Get("done"); msg != "" && v.Error == "" {
		v.Notice = msg
	}
	ctx := h.as(r, s)
	resp, err := h.console.api.requests.ListAccessRequests(ctx, connect.NewRequest(&sigilv1.ListAccessRequestsRequest{}))
	var ce *connect.Error
	if errors.As(err, &ce) && ce.Code() == connect.CodeUnimplemented {
		d.Unavailable = ce.Message()
		h.renderPage(w, http.StatusOK, "requests", v)
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
	list := resp.Msg.Requests
	sort.Slice(list, func(i, j int) bool { return list[i].GetCreated().AsTime().After(list[j].GetCreated().AsTime()) })
	for _, q := range list {
		row := requestRow{
			ID: q.Id, User: q.User, Reason: q.Reason, State: q.State, Roles: q.Roles,
			Created: q.GetCreated().AsTime().UTC().Format("2006-01-02 15:04"), Mine: q.User == s.User,
		}
		approved := 0
		for _, rv := range q.Reviews {
			if rv.Approve {
				approved++
			}
		}
		row.Reviews = fmt.Sprintf("%d of %d approvals", approved, q.ApprovalsNeeded)
		switch q.State {
		case "approved":
			row.StateClass = "ok"
		case "denied", "expired":
			row.StateClass = "bad"
		default:
			row.StateClass = "pending"
		}
		row.Reviewable = q.State == "pending" && !row.Mine
		d.Reviewable = d.Reviewable || row.Reviewable
		d.Requests = append(d.Requests, row)
	}
	status := http.StatusOK
	if v.Error != "" {
		status = http.StatusBadRequest
	}
	h.renderPage(w, status, "requests", v)
}

func (h *Handler) createRequest(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	f := r.PostForm
	req := &sigilv1.CreateAccessRequestRequest{Reason: strings.TrimSpace(f.Get("reason"))}
	for _, role := range strings.Split(f.Get("roles"), ",") {
		if role = strings.TrimSpace(role); role != "" {
			req.Roles = append(req.Roles, role)
		}
	}
	if d := f.Get("duration"); d != "" {
		dur, err := time.ParseDuration(d)
		if err != nil || dur <= 0 {
			h.renderRequests(w, r, s, &view{Error: "the duration is not valid"})
			return
		}
		req.MaxDurationSeconds = int64(dur / time.Second)
	}
	resp, err := h.console.api.requests.CreateAccessRequest(h.as(r, s), connect.NewRequest(req))
	if err != nil {
		_, msg := h.errorStatus(err)
		h.renderRequests(w, r, s, &view{Error: msg})
		return
	}
	http.Redirect(w, r, "/web/requests?done="+url.QueryEscape("Requested "+strings.Join(req.Roles, ", ")+" (request "+resp.Msg.GetRequest().GetId()+")."), http.StatusSeeOther)
}

// binding names s for MFA challenges (as the API's callerBinding does).
func (s *consoleSession) binding() []byte { return []byte("web:" + s.hash) }

// reviewChallenge creates the MFA check a reviewer whose role requires
// one passes before a review (JSON for console.js).
func (h *Handler) reviewChallenge(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	id, c, err := h.console.cfg.Auth.ReviewChallenge(r.Context(), s.User, r.PathValue("id"), s.binding(), r.RemoteAddr, true)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	if len(c.WebAuthnOptions) == 0 {
		h.consoleError(w, r, s, trace.BadParameter("you have no security key; type a code from your authenticator app"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"challenge_id": id, "options": string(c.WebAuthnOptions)})
}

func (h *Handler) reviewRequest(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	f := r.PostForm
	reqID := r.PathValue("id")
	id, err := h.reviewer(r, s, reqID)
	if err != nil {
		_, msg := h.errorStatus(err)
		h.renderRequests(w, r, s, &view{Error: msg})
		return
	}
	approve := f.Get("decision") == "approve"
	_, err = h.console.api.requests.ReviewAccessRequest(h.asIdentity(r, s, id), connect.NewRequest(&sigilv1.ReviewAccessRequestRequest{
		Id: reqID, Approve: approve, Reason: strings.TrimSpace(f.Get("reason")),
	}))
	if err != nil {
		_, msg := h.errorStatus(err)
		h.renderRequests(w, r, s, &view{Error: msg})
		return
	}
	word := "Denied"
	if approve {
		word = "Approved"
	}
	http.Redirect(w, r, "/web/requests?done="+url.QueryEscape(word+" request "+reqID+"."), http.StatusSeeOther)
}
