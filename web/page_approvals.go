package web

import (
	"net/http"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/services/mfa"
)

type approveData struct {
	What, User, ClientAddr   string
	Database, DBUser, DBName string
	Expires                  time.Time
	Pending                  bool
	Options, VerifyURL, Ref  string
}

type approvalsData struct {
	Live bool
	// KeysElsewhere is the origin where keys work, when this is not it.
	KeysElsewhere string
	Items         []*approveData
}

// describe says in a sentence what approving c does.
func describe(c *mfa.Challenge) string {
	switch c.Target.Kind {
	case mfa.TargetDatabase:
		return c.User + " asks to open a session to database " + c.Target.Database + " as db user " + c.Target.DBUser + "."
	case mfa.TargetLogin:
		return c.User + " is signing in."
	case mfa.TargetDevice:
		return c.User + " asks to add a new MFA device."
	}
	return "Approve an MFA check for " + c.User + "."
}

func approveView(c *mfa.Challenge, verifyURL string) *approveData {
	return &approveData{
		What: describe(c), User: c.User, ClientAddr: c.ClientAddr,
		Database: c.Target.Database, DBUser: c.Target.DBUser, DBName: c.Target.DBName,
		Expires: c.Expires, Pending: c.Pending() && len(c.WebAuthnOptions) > 0,
		Options: string(c.WebAuthnOptions), VerifyURL: verifyURL, Ref: c.Ref,
	}
}

// approvePage is where "sigil db connect" sends people to approve a
// challenge with a security key. It needs no sign-in: the challenge id is
// a secret only the terminal showed, and only a key registered to the
// challenge's user can approve it.
func (h *Handler) approvePage(w http.ResponseWriter, r *http.Request) {
	s, _ := h.console.sessions.get(r)
	id := r.PathValue("id")
	c, err := h.console.cfg.MFA.Challenge(r.Context(), id)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	v := &view{Title: "Approve with your security key", Nav: "approvals", Session: s, Data: approveView(c, "/web/mfa/"+id+"/verify")}
	if s == nil {
		token, err := preToken(w, r)
		if err != nil {
			h.consoleError(w, r, nil, err)
			return
		}
		v.CSRF = token
	}
	h.renderPage(w, http.StatusOK, "approve", v)
}

// verifyChallenge takes the browser's assertion for a challenge (JSON).
func (h *Handler) verifyChallenge(w http.ResponseWriter, r *http.Request) {
	s, err := h.console.sessions.get(r)
	if err != nil {
		h.consoleError(w, r, nil, err)
		return
	}
	token := r.Header.Get("X-CSRF-Token")
	if s == nil || checkCSRF(s, token) != nil {
		if err := checkPreToken(r, token); err != nil {
			h.consoleError(w, r, s, err)
			return
		}
	}
	body, err := readJSONBody(w, r)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	c, err := h.console.cfg.MFA.VerifyWebAuthn(r.Context(), r.PathValue("id"), body)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"device": c.Device.Name})
}

func (h *Handler) approvalsPage(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	list, err := h.console.cfg.MFA.Pending(r.Context(), s.User)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	d := &approvalsData{Live: true, KeysElsewhere: h.keysElsewhere(r)}
	for _, c := range list {
		d.Items = append(d.Items, approveView(c, ""))
	}
	v := &view{Title: "MFA approvals", Nav: "approvals", Session: s, Data: d}
	if r.URL.Query().Get("fragment") != "" {
		h.renderFragment(w, "approvals", "pending", v)
		return
	}
	h.renderPage(w, http.StatusOK, "approvals", v)
}

// ownChallenge loads a challenge of the signed-in user by its ref.
func (h *Handler) ownChallenge(r *http.Request, s *consoleSession) (*mfa.Challenge, error) {
	c, err := h.console.cfg.MFA.ChallengeByRef(r.Context(), r.PathValue("ref"))
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if c.User != s.User {
		return nil, trace.NotFound("unknown or expired MFA challenge")
	}
	return c, nil
}

func (h *Handler) approveRefPage(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	c, err := h.ownChallenge(r, s)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	h.renderPage(w, http.StatusOK, "approve", &view{Title: "Approve with your security key", Nav: "approvals", Session: s,
		Data: approveView(c, "/web/approvals/"+c.Ref+"/verify")})
}

func (h *Handler) verifyRef(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	c, err := h.ownChallenge(r, s)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	body, err := readJSONBody(w, r)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	c, err = h.console.cfg.MFA.VerifyWebAuthnRef(r.Context(), c.Ref, body)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"device": c.Device.Name})
}
