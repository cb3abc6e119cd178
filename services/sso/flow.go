package sso

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"time"

	"github.com/gravitational/trace"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/authn/oidc"
	authnsso "github.com/sigilhq/sigil/identity/authn/sso"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/resources"
	"github.com/sigilhq/sigil/services/storage"
)

// cookiePrefix names the cookie binding a login to the browser that
// started it; the request id follows, so that two logins in one browser
// do not clash.
const cookiePrefix = "sigil_sso_"

var newVerifier = oidc.NewVerifier

// Login is a user the identity provider vouched for, mapped to roles and
// traits, with what the client asked to be signed.
type Login struct {
	Connector     string
	ConnectorKind string
	// Method is oidc or saml (for audit).
	Method string
	Name   string
	Roles  []string
	Traits map[string][]string
	// TLSPublicKey is empty for a web login: nothing is signed then.
	TLSPublicKey []byte
	SSHPublicKey []byte
	TTL          time.Duration
	ClientAddr   string
}

// Finisher turns a Login into certificates (or, for a web login, just
// checks and records it). Errors are shown to the user as they are.
type Finisher interface {
	FinishSSOLogin(ctx context.Context, login *Login) (*sigilv1.LoginResponse, error)
}

// Outcome is how a browser request of the flow ends.
type Outcome struct {
	// Redirect, when set, is where to send the browser.
	Redirect string
	// Cookie, when set, goes with the redirect.
	Cookie *http.Cookie
	// Login is the finished web login to show.
	Login *Login
	// Err is the failure to show when there is no client to send it to.
	Err error
}

// Start runs when the browser opens a login's auth URL: it binds the login
// to this browser (a cookie) and sends it to the provider.
func (s *Service) Start(ctx context.Context, id string) *Outcome {
	req, err := s.get(ctx, id)
	if err != nil {
		return &Outcome{Err: err}
	}
	if req.Stage != stageCreated {
		return &Outcome{Err: trace.AccessDenied("this login link was already opened in a browser; each link works once, start the login again")}
	}
	// A login that cannot even reach the provider ends here, and the
	// waiting CLI learns why at once.
	fail := func(err error) *Outcome {
		return s.finish(ctx, req, s.newLogin(req, describeKind(req.ConnectorKind)), err, nil)
	}
	browser, err := randomHex(32)
	if err != nil {
		return fail(err)
	}
	c, err := s.connector(ctx, req.Connector)
	if err != nil {
		return fail(err)
	}
	var redirect string
	switch c := c.(type) {
	case *types.OIDCConnector:
		client, err := s.oidcClient(ctx, c)
		if err != nil {
			return fail(err)
		}
		redirect = client.AuthCodeURL(req.State, req.Nonce, req.PKCEVerifier)
	case *types.SAMLConnector:
		sp, err := s.serviceProvider(ctx, c)
		if err != nil {
			return fail(err)
		}
		u, reqID, err := sp.AuthnRequestURL(req.State)
		if err != nil {
			return fail(err)
		}
		redirect, req.SAMLRequestID = u.String(), reqID
	default:
		return fail(trace.BadParameter("connector %q has unexpected kind %s", req.Connector, c.GetKind()))
	}
	req.Stage = stageStarted
	req.BrowserHash = hashOf([]byte(browser))
	if err := s.update(ctx, req); err != nil {
		return &Outcome{Err: err}
	}
	return &Outcome{
		Redirect: redirect,
		Cookie: &http.Cookie{
			Name:     cookiePrefix + req.ID,
			Value:    browser,
			Path:     "/web/sso/",
			Expires:  req.Expires,
			MaxAge:   int(time.Until(req.Expires).Seconds()) + 1,
			Secure:   true,
			HttpOnly: true,
			// The SAML answer is a cross-site POST: Lax would keep the
			// cookie from coming along.
			SameSite: http.SameSiteNoneMode,
		},
	}
}

// BeginWeb starts a login from the web login page and returns the start
// page to send the browser to.
func (s *Service) BeginWeb(ctx context.Context, connector, clientAddr string) *Outcome {
	b, err := s.Begin(ctx, BeginRequest{Connector: connector, ClientAddr: clientAddr, Web: true})
	if err != nil {
		return &Outcome{Err: err}
	}
	return &Outcome{Redirect: b.AuthURL}
}

// forBrowser finds the login a provider's answer belongs to and checks it
// comes through the browser that started it.
func (s *Service) forBrowser(ctx context.Context, r *http.Request, state, kind string) (*request, error) {
	req, err := s.byState(ctx, state)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	cookie, err := r.Cookie(cookiePrefix + req.ID)
	if err != nil || req.BrowserHash == nil || subtle.ConstantTimeCompare(hashOf([]byte(cookie.Value)), req.BrowserHash) != 1 {
		return nil, trace.AccessDenied("state mismatch: this browser did not start the login the identity provider answered; finish the login in the browser that opened the login link, or start again")
	}
	if req.ConnectorKind != kind {
		return nil, trace.AccessDenied("state mismatch: the login was started with %s connector %q", describeKind(req.ConnectorKind), req.Connector)
	}
	return req, nil
}

// OIDCCallback handles the provider's redirect back to the gateway.
func (s *Service) OIDCCallback(ctx context.Context, r *http.Request, fin Finisher) *Outcome {
	q := r.URL.Query()
	req, err := s.forBrowser(ctx, r, q.Get("state"), types.KindOIDCConnector)
	if err != nil {
		s.auditFailure(ctx, nil, "oidc", "", clientAddr(r), err)
		return &Outcome{Err: err}
	}
	if req.Stage != stageStarted {
		return &Outcome{Err: trace.AccessDenied("this login already received an answer from the identity provider; start the login again")}
	}
	if err := s.claim(ctx, req); err != nil {
		return &Outcome{Err: err}
	}
	login, err := s.oidcLogin(ctx, req, q.Get("code"), q.Get("error"), q.Get("error_description"))
	return s.finish(ctx, req, login, err, fin)
}

// claim moves a started request to completing, so that only one answer is
// processed.
func (s *Service) claim(ctx context.Context, req *request) error {
	req.Stage = stageCompleting
	return trace.Wrap(s.update(ctx, req))
}

func (s *Service) oidcClient(ctx context.Context, c *types.OIDCConnector) (*oidc.Client, error) {
	secret, err := s.clientSecret(ctx, c.Metadata.Name)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	client, err := oidc.New(ctx, oidc.Config{
		IssuerURL:    c.Spec.IssuerURL,
		ClientID:     c.Spec.ClientID,
		ClientSecret: secret,
		RedirectURL:  s.oidcRedirectURL(c),
		Scopes:       c.Spec.Scopes,
		UserInfo:     c.Spec.UserInfo,
		HTTPClient:   s.cfg.HTTPClient,
		Clock:        s.cfg.Clock,
	})
	return client, trace.Wrap(err)
}

func (s *Service) oidcLogin(ctx context.Context, req *request, code, errCode, errDesc string) (*Login, error) {
	login := s.newLogin(req, "oidc")
	if errCode != "" {
		return login, trace.AccessDenied("the identity provider refused the login: %s %s", clip(errCode, 100), clip(errDesc, 500))
	}
	if code == "" {
		return login, trace.BadParameter("the identity provider's answer carries no authorization code")
	}
	c, err := resources.Get[*types.OIDCConnector](ctx, s.cfg.Resources, types.KindOIDCConnector, req.Connector)
	if err != nil {
		return login, trace.Wrap(err)
	}
	client, err := s.oidcClient(ctx, c)
	if err != nil {
		return login, trace.Wrap(err)
	}
	claims, err := client.Exchange(ctx, code, req.PKCEVerifier, req.Nonce)
	if err != nil {
		return login, trace.Wrap(err)
	}
	mapper, err := authnsso.ForOIDC(c)
	if err != nil {
		return login, trace.Wrap(err)
	}
	return login, trace.Wrap(s.mapLogin(login, mapper, claims, claims.First(c.Spec.UsernameClaim), "claim "+c.Spec.UsernameClaim))
}

// SAMLACS handles the IdP's HTTP-POST of a response. r's form must be
// parsed.
func (s *Service) SAMLACS(ctx context.Context, r *http.Request, fin Finisher) *Outcome {
	req, err := s.forBrowser(ctx, r, r.PostForm.Get("RelayState"), types.KindSAMLConnector)
	if err != nil {
		s.auditFailure(ctx, nil, "saml", "", clientAddr(r), err)
		return &Outcome{Err: err}
	}
	login := s.newLogin(req, "saml")
	c, err := resources.Get[*types.SAMLConnector](ctx, s.cfg.Resources, types.KindSAMLConnector, req.Connector)
	if err != nil {
		return s.refuse(ctx, req, login, err)
	}
	sp, err := s.serviceProvider(ctx, c)
	if err != nil {
		return s.refuse(ctx, req, login, err)
	}
	assertion, err := sp.ParseResponse(r, req.SAMLRequestID)
	if err != nil {
		return s.refuse(ctx, req, login, err)
	}
	name, from := assertion.NameID, "the assertion's NameID"
	if c.Spec.UsernameAttribute != "" {
		name, from = assertion.Attributes.First(c.Spec.UsernameAttribute), "attribute "+c.Spec.UsernameAttribute
	}
	if types.ValidateName("user", name) == nil {
		// The assertion is verified: name the user in what is audited
		// from here on.
		login.Name = name
	}
	// Remember the assertion for as long as it could be accepted, whatever
	// state the login is in: an assertion is good for one login only.
	_, err = s.cfg.Backend.Create(ctx, storage.Item{
		Key:     assertionPrefix + hashHex(sp.IDPEntityID()+"\x00"+assertion.ID),
		Value:   []byte(req.Connector),
		Expires: assertion.NotOnOrAfter,
	})
	if trace.IsAlreadyExists(err) {
		err = trace.AccessDenied("the SAML assertion %q from %s was already used (replay refused); start the login again", clip(assertion.ID, 100), sp.IDPEntityID())
		return s.refuse(ctx, req, login, err)
	}
	if err != nil {
		return s.refuse(ctx, req, login, err)
	}
	if req.Stage != stageStarted {
		return &Outcome{Err: trace.AccessDenied("this login already received an answer from the identity provider; start the login again")}
	}
	if err := s.claim(ctx, req); err != nil {
		return &Outcome{Err: err}
	}
	mapper, err := authnsso.ForSAML(c)
	if err != nil {
		return s.finish(ctx, req, login, err, fin)
	}
	err = s.mapLogin(login, mapper, assertion.Attributes, name, from)
	return s.finish(ctx, req, login, err, fin)
}

// refuse ends a login that failed before it was claimed: recorded as
// failed when it was still waiting, merely shown otherwise (a replayed
// answer must not spoil a finished login).
func (s *Service) refuse(ctx context.Context, req *request, login *Login, err error) *Outcome {
	if req.Stage != stageStarted {
		s.auditFailure(ctx, login, login.Method, req.Connector, req.ClientAddr, err)
		return &Outcome{Err: err}
	}
	if cerr := s.claim(ctx, req); cerr != nil {
		return &Outcome{Err: err}
	}
	return s.finish(ctx, req, login, err, nil)
}

func (s *Service) newLogin(req *request, method string) *Login {
	return &Login{
		Connector:     req.Connector,
		ConnectorKind: req.ConnectorKind,
		Method:        method,
		TLSPublicKey:  req.TLSPublicKey,
		SSHPublicKey:  req.SSHPublicKey,
		TTL:           time.Duration(req.TTLSeconds) * time.Second,
		ClientAddr:    req.ClientAddr,
	}
}

// mapLogin fills the user name, roles and traits from claims.
func (s *Service) mapLogin(login *Login, mapper *authnsso.Mapper, claims authnsso.Claims, name, from string) error {
	switch {
	case name == "":
		return trace.AccessDenied("the identity provider sent no %s to name the user (received: %s); set the connector's username claim/attribute to one it sends", from, authnsso.Describe(claims, nil))
	case types.ValidateName("user", name) != nil:
		return trace.AccessDenied("%s is %q, which cannot be a Sigil user name (letters, digits and . _ @ - only); set the connector's username claim/attribute to another one", from, clip(name, 100))
	}
	login.Name = name
	res, err := mapper.Map(claims)
	if err != nil {
		return trace.Wrap(err)
	}
	login.Roles, login.Traits = res.Roles, res.Traits
	return nil
}

// finish issues (through fin) what a mapped login gets, records the
// outcome in the request and tells the browser where to go.
func (s *Service) finish(ctx context.Context, req *request, login *Login, err error, fin Finisher) *Outcome {
	var resp *sigilv1.LoginResponse
	if err == nil && fin != nil {
		resp, err = fin.FinishSSOLogin(ctx, login)
	}
	if err == nil && fin == nil {
		err = trace.BadParameter("no finisher for the SSO login")
	}
	req.Stage = stageDone
	if err != nil {
		s.auditFailure(ctx, login, login.Method, req.Connector, req.ClientAddr, err)
		req.Error = trace.UserMessage(err)
	} else if resp != nil {
		data, merr := proto.Marshal(resp)
		if merr != nil {
			err = merr
			req.Error = "internal error; see the sigild log"
		}
		req.Result = data
	}
	if uerr := s.update(ctx, req); uerr != nil {
		s.cfg.Logger.ErrorContext(ctx, "Recording the outcome of an SSO login failed.", "connector", req.Connector, "error", uerr)
		if err == nil {
			err = uerr
		}
	}
	if req.Web {
		if err != nil {
			return &Outcome{Err: err}
		}
		s.remove(ctx, req)
		return &Outcome{Login: login}
	}
	msg := ""
	if err != nil {
		msg = trace.UserMessage(err)
	}
	return &Outcome{Redirect: clientRedirect(req, msg), Err: err}
}

// auditFailure records a refused SSO login.
func (s *Service) auditFailure(ctx context.Context, login *Login, method, connector, addr string, err error) {
	id := &audit.Identity{Kind: string(certid.KindHuman)}
	if login != nil {
		id.User = login.Name
		id.Roles = login.Roles
		if connector == "" {
			connector = login.Connector
		}
	}
	details := map[string]string{"method": method}
	if connector != "" {
		details["connector"] = connector
	}
	if emitErr := s.cfg.Emitter.Emit(ctx, &audit.Event{
		Type:       audit.EventUserLogin,
		Identity:   id,
		ClientAddr: addr,
		Success:    false,
		Error:      trace.UserMessage(err),
		Details:    details,
	}); emitErr != nil {
		s.cfg.Logger.ErrorContext(ctx, "Recording a refused SSO login failed.", "error", emitErr)
	}
}

func clientAddr(r *http.Request) string { return r.RemoteAddr }

func hashHex(s string) string { return hex.EncodeToString(hashOf([]byte(s))) }
