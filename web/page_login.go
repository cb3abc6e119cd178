package web

import (
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"

	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/apiserver"
)

type loginData struct {
	User, Next          string
	AllowTOTP, AllowKey bool
	// Connectors are the SSO buttons (SSOService.ListConnectors).
	Connectors []*sigilv1.ConnectorInfo
}

type signinMFAData struct {
	User, Next, ChallengeID string
	Options                 string
	HasKey, AllowTOTP       bool
}

func (h *Handler) getLogin(w http.ResponseWriter, r *http.Request) {
	if s, err := h.console.sessions.get(r); err == nil && s != nil {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	h.renderLogin(w, r, http.StatusOK, r.URL.Query().Get("user"), "")
}

func (h *Handler) renderLogin(w http.ResponseWriter, r *http.Request, status int, user, errMsg string) {
	token, err := preToken(w, r)
	if err != nil {
		h.consoleError(w, r, nil, err)
		return
	}
	d := &loginData{User: user, Next: safeNext(r.FormValue("next"))}
	d.AllowTOTP, d.AllowKey = h.console.cfg.Auth.SecondFactorAllows()
	if h.cfg.SSO != nil {
		// The API's list, as the CLI sees it (no sign-in needed).
		resp, err := h.console.api.sso.ListConnectors(r.Context(), connect.NewRequest(&sigilv1.ListConnectorsRequest{}))
		if err != nil {
			h.cfg.Logger.Warn("Listing SSO connectors for the sign-in page failed.", "error", err)
		} else {
			d.Connectors = resp.Msg.Connectors
		}
	}
	h.renderPage(w, status, "login", &view{Title: "Sign in to Sigil", CSRF: token, Error: errMsg, Data: d})
}

// preForm reads a form posted before sign-in and checks its CSRF token.
func (h *Handler) preForm(w http.ResponseWriter, r *http.Request) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		return trace.BadParameter("the form could not be read")
	}
	return trace.Wrap(checkPreToken(r, r.PostForm.Get("csrf")))
}

// preBinding names the browser before sign-in (its pre-session cookie):
// a sign-in's security key challenge is bound to it.
func preBinding(r *http.Request) []byte {
	c, err := r.Cookie(preCookie)
	if err != nil {
		return nil
	}
	return []byte("web-pre:" + hashToken(c.Value))
}

func (h *Handler) postLogin(w http.ResponseWriter, r *http.Request) {
	if err := h.preForm(w, r); err != nil {
		h.renderLogin(w, r, http.StatusForbidden, "", trace.UserMessage(err))
		return
	}
	f := r.PostForm
	user := strings.TrimSpace(f.Get("user"))
	res, err := h.console.cfg.Auth.WebLogin(r.Context(), apiserver.WebLoginRequest{
		User: user, Password: f.Get("password"), OTP: f.Get("otp"), Binding: preBinding(r), ClientAddr: r.RemoteAddr,
	})
	if err != nil {
		status, msg := h.errorStatus(err)
		h.renderLogin(w, r, status, user, msg)
		return
	}
	h.loginResult(w, r, user, res)
}

// loginResult signs the browser in, or shows the security key step.
func (h *Handler) loginResult(w http.ResponseWriter, r *http.Request, user string, res *apiserver.WebLoginResult) {
	next := safeNext(r.PostForm.Get("next"))
	if res.Identity == nil {
		token, err := preToken(w, r)
		if err != nil {
			h.consoleError(w, r, nil, err)
			return
		}
		h.renderPage(w, http.StatusOK, "signin_mfa", &view{Title: "Confirm it is you", CSRF: token, Data: &signinMFAData{
			User: user, Next: next, ChallengeID: res.ChallengeID, Options: string(res.WebAuthnOptions),
			HasKey: len(res.WebAuthnOptions) > 0, AllowTOTP: res.AllowTOTP,
		}})
		return
	}
	if err := h.startSession(w, r, res.Identity, "local", res.TTL); err != nil {
		h.consoleError(w, r, nil, err)
		return
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (h *Handler) postLoginMFA(w http.ResponseWriter, r *http.Request) {
	if err := h.preForm(w, r); err != nil {
		h.renderLogin(w, r, http.StatusForbidden, "", trace.UserMessage(err))
		return
	}
	f := r.PostForm
	user := f.Get("user")
	res, err := h.console.cfg.Auth.WebLoginMFA(r.Context(), user, f.Get("challenge"), f.Get("otp"), preBinding(r), r.RemoteAddr)
	if err != nil {
		status, msg := h.errorStatus(err)
		h.renderLogin(w, r, status, user, msg)
		return
	}
	h.loginResult(w, r, user, res)
}

// startSession creates a console session and sets its cookie. The
// pre-session token is replaced, so a challenge bound to it dies too.
func (h *Handler) startSession(w http.ResponseWriter, r *http.Request, id *certid.Identity, method string, ttl time.Duration) error {
	if ttl <= 0 || ttl > h.console.cfg.SessionTTL {
		ttl = h.console.cfg.SessionTTL
	}
	cookie, err := h.console.sessions.create(r.Context(), id, method, ttl)
	if err != nil {
		return trace.Wrap(err)
	}
	http.SetCookie(w, cookie)
	http.SetCookie(w, clearCookie(preCookie))
	return nil
}

func (h *Handler) postLogout(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	s, err := h.console.sessions.get(r)
	if err != nil {
		h.consoleError(w, r, nil, err)
		return
	}
	if s != nil {
		if err := r.ParseForm(); err != nil || checkCSRF(s, r.PostForm.Get("csrf")) != nil {
			h.consoleError(w, r, s, trace.AccessDenied("the form expired; reload the page and sign out again"))
			return
		}
		if err := h.console.sessions.remove(r); err != nil {
			h.consoleError(w, r, s, err)
			return
		}
	}
	http.SetCookie(w, clearCookie(sessionCookie))
	http.Redirect(w, r, "/web/login", http.StatusSeeOther)
}
