package web

import (
	"context"
	"net/http"
	"time"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/sso"
)

// consoleFinisher remembers what an SSO login was issued, so that the
// console signs the browser in with the identity the gateway recorded
// (roles that do not exist are left out there).
type consoleFinisher struct {
	next   sso.Finisher
	issued *sigilv1.LoginResponse
}

func (f *consoleFinisher) FinishSSOLogin(ctx context.Context, login *sso.Login) (*sigilv1.LoginResponse, error) {
	resp, err := f.next.FinishSSOLogin(ctx, login)
	if err == nil {
		f.issued = resp
	}
	return resp, err
}

func (h *Handler) ssoFinisher() *consoleFinisher {
	return &consoleFinisher{next: h.cfg.Finisher}
}

type ssoDoneData struct {
	User, Connector string
	Roles           []string
}

// finishSSO ends a browser's SSO login: with the console, a finished web
// login becomes a console session; everything else is finish's.
func (h *Handler) finishSSO(w http.ResponseWriter, r *http.Request, out *sso.Outcome, fin *consoleFinisher) {
	if h.console == nil || out.Login == nil || out.Err != nil || out.Redirect != "" || fin.issued == nil || fin.issued.GetIdentity() == nil {
		h.finish(w, r, out)
		return
	}
	idp := fin.issued.GetIdentity()
	id := &certid.Identity{Name: idp.GetName(), Kind: certid.KindHuman, Roles: idp.GetRoles(), ClientIP: idp.GetClientIp()}
	if len(idp.GetTraits()) > 0 {
		id.Traits = map[string][]string{}
		for k, v := range idp.GetTraits() {
			id.Traits[k] = v.GetValues()
		}
	}
	var ttl time.Duration
	if out.Login.TTL > 0 {
		ttl = out.Login.TTL
	}
	if err := h.startSession(w, r, id, out.Login.Connector, ttl); err != nil {
		h.ssoError(w, err)
		return
	}
	// The session cookie is SameSite=Strict and this answer ends a
	// navigation that came from the identity provider's site: the browser
	// would not send the cookie with a redirect. A link on a page of ours
	// is a same-site navigation.
	h.renderPage(w, http.StatusOK, "sso_done", &view{Title: "Signed in", Data: &ssoDoneData{User: id.Name, Connector: out.Login.Connector, Roles: id.Roles}})
}
