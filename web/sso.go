package web

import (
	"context"
	"html/template"
	"net/http"
	"sort"
	"strings"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/identity/authn/saml"
	"github.com/sigilhq/sigil/services/sso"
)

// SSO is the browser side of SSO logins (services/sso).
type SSO interface {
	BeginWeb(ctx context.Context, connector, clientAddr string) *sso.Outcome
	Start(ctx context.Context, id string) *sso.Outcome
	OIDCCallback(ctx context.Context, r *http.Request, fin sso.Finisher) *sso.Outcome
	SAMLACS(ctx context.Context, r *http.Request, fin sso.Finisher) *sso.Outcome
	SPMetadata(ctx context.Context, name string) ([]byte, error)
}

type ssoPages struct {
	result *template.Template
}

// registerSSO adds the browser side of SSO logins. The console's sign-in
// page lists the connectors (SSOService.ListConnectors) with links to
// PathWebLogin.
func (h *Handler) registerSSO() error {
	result, err := template.ParseFS(templateFS, "templates/layout.html", "templates/sso.html")
	if err != nil {
		return trace.Wrap(err)
	}
	h.sso = &ssoPages{result: result}
	h.mux.HandleFunc("GET "+sso.PathWebLogin+"{connector}", h.webLogin)
	h.mux.HandleFunc("GET "+sso.PathStart+"{id}", h.ssoStart)
	h.mux.HandleFunc("GET "+sso.PathOIDCCallback, h.oidcCallback)
	h.mux.HandleFunc("POST "+sso.PathSAMLACS, h.samlACS)
	h.mux.HandleFunc("GET "+sso.PathSAMLMetadata+"{connector}", h.samlMetadata)
	return nil
}

type ssoResultPage struct {
	Title, Proxy, Error string
	User, Connector     string
	Roles, Traits       []string
}

func (h *Handler) ssoError(w http.ResponseWriter, err error) {
	status := statusFor(err)
	switch {
	case trace.IsAccessDenied(err):
		status = http.StatusForbidden
	case trace.IsCompareFailed(err):
		status = http.StatusConflict
	case trace.IsConnectionProblem(err), trace.IsNotImplemented(err):
		status = http.StatusBadGateway
	}
	msg := strings.TrimSpace(trace.UserMessage(err))
	if status == http.StatusInternalServerError {
		h.cfg.Logger.Error("SSO login failed", "error", err)
		msg = "internal error; see the sigild log"
	}
	h.renderResult(w, status, ssoResultPage{Error: msg})
}

func (h *Handler) renderResult(w http.ResponseWriter, status int, p ssoResultPage) {
	p.Title = "Sign in to Sigil"
	if p.Error != "" {
		p.Title = "Sign-in failed"
	}
	p.Proxy = h.cfg.PublicAddr
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := h.sso.result.ExecuteTemplate(w, "layout", p); err != nil {
		h.cfg.Logger.Warn("rendering the SSO result page", "error", err)
	}
}

// finish sends the browser where an outcome says, or shows it.
func (h *Handler) finish(w http.ResponseWriter, r *http.Request, out *sso.Outcome) {
	if out.Cookie != nil {
		http.SetCookie(w, out.Cookie)
	}
	switch {
	case out.Redirect != "":
		http.Redirect(w, r, out.Redirect, http.StatusSeeOther)
	case out.Err != nil:
		h.ssoError(w, out.Err)
	case out.Login != nil:
		var traits []string
		for k, vals := range out.Login.Traits {
			traits = append(traits, k+"="+strings.Join(vals, ","))
		}
		sort.Strings(traits)
		h.renderResult(w, http.StatusOK, ssoResultPage{User: out.Login.Name, Connector: out.Login.Connector, Roles: out.Login.Roles, Traits: traits})
	default:
		h.ssoError(w, trace.BadParameter("the login ended without a result; start again"))
	}
}

func (h *Handler) webLogin(w http.ResponseWriter, r *http.Request) {
	h.finish(w, r, h.cfg.SSO.BeginWeb(r.Context(), r.PathValue("connector"), r.RemoteAddr))
}

func (h *Handler) ssoStart(w http.ResponseWriter, r *http.Request) {
	h.finish(w, r, h.cfg.SSO.Start(r.Context(), r.PathValue("id")))
}

func (h *Handler) oidcCallback(w http.ResponseWriter, r *http.Request) {
	fin := h.ssoFinisher()
	h.finishSSO(w, r, h.cfg.SSO.OIDCCallback(r.Context(), r, fin), fin)
}

func (h *Handler) samlACS(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, saml.MaxResponseSize+8<<10)
	if err := r.ParseForm(); err != nil {
		h.ssoError(w, trace.BadParameter("the SAML response could not be read: %v", err))
		return
	}
	fin := h.ssoFinisher()
	h.finishSSO(w, r, h.cfg.SSO.SAMLACS(r.Context(), r, fin), fin)
}

func (h *Handler) samlMetadata(w http.ResponseWriter, r *http.Request) {
	md, err := h.cfg.SSO.SPMetadata(r.Context(), r.PathValue("connector"))
	if err != nil {
		http.Error(w, trace.UserMessage(err), statusFor(err))
		return
	}
	w.Header().Set("Content-Type", "application/samlmetadata+xml")
	_, _ = w.Write(md)
}
