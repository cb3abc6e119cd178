package web

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"html/template"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/apiserver"
	"github.com/sigilhq/sigil/services/mfa"
	"github.com/sigilhq/sigil/services/storage"
)

//go:embed static
var staticFS embed.FS

// consoleCSP allows our own scripts, styles and images only: no inline
// script or style, no third party, no framing. QR codes are inline SVG.
const consoleCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// maxFormBytes bounds every console form and JSON body.
const maxFormBytes = 64 << 10

// ConsoleAuth signs people in to the console (apiserver.Server).
type ConsoleAuth interface {
	WebLogin(ctx context.Context, req apiserver.WebLoginRequest) (*apiserver.WebLoginResult, error)
	WebLoginMFA(ctx context.Context, user, challengeID, otp string, binding []byte, clientAddr string) (*apiserver.WebLoginResult, error)
	WebSignup(ctx context.Context, token string, password []byte, clientAddr string) (*apiserver.WebLoginResult, error)
	SecondFactorAllows() (totp, webAuthn bool)
	// SessionMFARole names a role of id requiring per-session MFA, which
	// reviewing access requests needs too ("" when none).
	SessionMFARole(ctx context.Context, id *certid.Identity) (string, error)
	ReviewChallenge(ctx context.Context, user, requestID string, binding []byte, clientAddr string, webAuthn bool) (string, *mfa.Challenge, error)
	ReviewMFA(ctx context.Context, user, requestID, challengeID, otp string, binding []byte, clientAddr string) (*mfa.Used, error)
}

// Challenges is what the MFA approval pages need (services/mfa).
type Challenges interface {
	Challenge(ctx context.Context, id string) (*mfa.Challenge, error)
	ChallengeByRef(ctx context.Context, ref string) (*mfa.Challenge, error)
	Pending(ctx context.Context, user string) ([]*mfa.Challenge, error)
	VerifyWebAuthn(ctx context.Context, id string, response []byte) (*mfa.Challenge, error)
	VerifyWebAuthnRef(ctx context.Context, ref string, response []byte) (*mfa.Challenge, error)
	Registration(ctx context.Context, user, id string) (*mfa.Registration, error)
	// WebAuthn is nil when security keys are unavailable.
	WebAuthn() *authn.WebAuthn
}

// ConsoleConfig turns the web handler into the console: sign-in, resources,
// MFA devices and approvals, audit log, sessions and access requests.
type ConsoleConfig struct {
	// API is the Connect API handler; the console calls it in-process as
	// the signed-in user (Caller marks the context).
	API    http.Handler
	Caller CallerFunc
	Auth   ConsoleAuth
	MFA    Challenges
	// Backend stores console sessions.
	Backend storage.Backend
	// IdleTimeout signs a session out after this long without a request.
	IdleTimeout time.Duration
	// SessionTTL bounds a session's life (roles may shorten it).
	SessionTTL time.Duration
	// Origin is the console's canonical origin (https://HOST:PORT), where
	// security keys work; visitors without a session are sent there.
	Origin string
	Clock  func() time.Time
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *ConsoleConfig) CheckAndSetDefaults() error {
	switch {
	case c.API == nil:
		return trace.BadParameter("web console: missing API")
	case c.Caller == nil:
		return trace.BadParameter("web console: missing Caller")
	case c.Auth == nil:
		return trace.BadParameter("web console: missing Auth")
	case c.MFA == nil:
		return trace.BadParameter("web console: missing MFA")
	case c.Backend == nil:
		return trace.BadParameter("web console: missing Backend")
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.SessionTTL <= 0 {
		c.SessionTTL = DefaultSessionTTL
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return nil
}

// console is the signed-in part of the web handler.
type console struct {
	cfg      *ConsoleConfig
	sessions *sessions
	api      *apiClients
	pages    map[string]*template.Template
}

// pageFiles are the console pages; each is parsed with the layout and
// the console chrome (navigation).
var pageFiles = []string{"login", "signin_mfa", "resources", "devices", "register", "approve", "approvals", "audit", "sessions", "requests", "error", "sso_done", "recording", "writes"}

func newConsole(cfg *ConsoleConfig) (*console, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	c := &console{
		cfg:      cfg,
		sessions: &sessions{backend: cfg.Backend, idle: cfg.IdleTimeout, clock: cfg.Clock},
		api:      newAPIClients(cfg.API),
		pages:    map[string]*template.Template{},
	}
	for _, name := range pageFiles {
		t, err := template.New(name).Funcs(templateFuncs()).ParseFS(templateFS, "templates/layout.html", "templates/console.html", "templates/"+name+".html")
		if err != nil {
			return nil, trace.Wrap(err, "parsing console page %s", name)
		}
		c.pages[name] = t
	}
	return c, nil
}

func templateFuncs() template.FuncMap {
	return template.FuncMap{
		"when": func(t time.Time) string {
			if t.IsZero() {
				return "—"
			}
			return t.UTC().Format("2006-01-02 15:04:05")
		},
		"ago": func(t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			return humanSince(time.Since(t))
		},
		"join":       strings.Join,
		"reviewForm": newReviewForm,
		"split":      strings.Split,
		"upper": func(s string) string {
			if s == "" {
				return s
			}
			return strings.ToUpper(s[:1]) + s[1:]
		},
		"sortedKeys": func(m map[string]string) []string {
			keys := make([]string, 0, len(m))
			for k := range m {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			return keys
		},
	}
}

func humanSince(d time.Duration) string {
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return plural(int(d/time.Minute), "minute") + " ago"
	case d < 48*time.Hour:
		return plural(int(d/time.Hour), "hour") + " ago"
	}
	return plural(int(d/(24*time.Hour)), "day") + " ago"
}

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return strconv.Itoa(n) + " " + unit + "s"
}

// view is what every console page gets.
type view struct {
	Title string
	// Nav is the active navigation entry.
	Nav     string
	Session *consoleSession
	// CSRF is the token forms and scripts send back.
	CSRF   string
	Proxy  string
	Notice string
	Error  string
	// Data is the page's own content.
	Data any
}

// registerConsole adds the console's routes.
func (h *Handler) registerConsole() error {
	c, err := newConsole(h.cfg.Console)
	if err != nil {
		return trace.Wrap(err)
	}
	h.console = c
	h.mux.HandleFunc("GET /web/login", h.getLogin)
	h.mux.HandleFunc("POST /web/login", h.postLogin)
	h.mux.HandleFunc("POST /web/login/mfa", h.postLoginMFA)
	h.mux.HandleFunc("POST /web/logout", h.postLogout)
	h.mux.HandleFunc("GET /web/resources", h.signedIn(h.resourcesPage))
	h.mux.HandleFunc("GET /web/devices", h.signedIn(h.devicesPage))
	h.mux.HandleFunc("POST /web/devices/remove", h.signedIn(h.removeDevice))
	h.mux.HandleFunc("POST /web/devices/totp", h.signedIn(h.beginTOTP))
	h.mux.HandleFunc("POST /web/devices/totp/finish", h.signedIn(h.finishTOTP))
	h.mux.HandleFunc("POST /web/devices/proof", h.signedIn(h.deviceProof))
	h.mux.HandleFunc("POST /web/devices/webauthn/begin", h.signedIn(h.beginWebAuthn))
	h.mux.HandleFunc("POST /web/devices/webauthn/finish", h.signedIn(h.finishWebAuthn))
	h.mux.HandleFunc("GET /web/devices/register/{id}", h.signedIn(h.registerPage))
	h.mux.HandleFunc("GET /web/mfa/{id}", h.approvePage)
	h.mux.HandleFunc("POST /web/mfa/{id}/verify", h.verifyChallenge)
	h.mux.HandleFunc("GET /web/approvals", h.signedIn(h.approvalsPage))
	h.mux.HandleFunc("GET /web/approvals/{ref}", h.signedIn(h.approveRefPage))
	h.mux.HandleFunc("POST /web/approvals/{ref}/verify", h.signedIn(h.verifyRef))
	h.mux.HandleFunc("GET /web/audit", h.signedIn(h.auditPage))
	h.mux.HandleFunc("GET /web/sessions", h.signedIn(h.sessionsPage))
	h.mux.HandleFunc("GET /web/recordings/{id}", h.signedIn(h.recordingPage))
	h.mux.HandleFunc("GET /web/recordings/{id}/cast", h.signedIn(h.recordingCast))
	h.mux.HandleFunc("POST /web/sessions/terminate", h.signedIn(h.terminateSession))
	h.mux.HandleFunc("GET /web/requests", h.signedIn(h.requestsPage))
	h.mux.HandleFunc("POST /web/requests", h.signedIn(h.createRequest))
	h.mux.HandleFunc("POST /web/requests/{id}/review", h.signedIn(h.reviewRequest))
	h.mux.HandleFunc("POST /web/requests/{id}/challenge", h.signedIn(h.reviewChallenge))
	h.mux.HandleFunc("GET /web/writes", h.signedIn(h.writesPage))
	h.mux.HandleFunc("POST /web/writes/{id}/review", h.signedIn(h.reviewWrite))
	h.mux.HandleFunc("POST /web/writes/{id}/challenge", h.signedIn(h.reviewChallenge))
	return nil
}

type pageHandler func(w http.ResponseWriter, r *http.Request, s *consoleSession)

// signedIn runs next for a signed-in user: others are sent to the sign-in
// page (GET) or refused; every other method must carry the session's CSRF
// token (form field csrf, or header X-CSRF-Token for scripts).
func (h *Handler) signedIn(next pageHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, err := h.console.sessions.get(r)
		if err != nil {
			h.consoleError(w, r, nil, err)
			return
		}
		if s == nil {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/web/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			h.consoleError(w, r, nil, trace.AccessDenied("you are signed out (the session ended or was idle too long); sign in again"))
			return
		}
		if r.Method != http.MethodGet {
			r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
			token := r.Header.Get("X-CSRF-Token")
			if token == "" {
				if err := r.ParseForm(); err != nil {
					h.consoleError(w, r, s, trace.BadParameter("the form could not be read"))
					return
				}
				token = r.PostForm.Get("csrf")
			}
			if err := checkCSRF(s, token); err != nil {
				h.consoleError(w, r, s, err)
				return
			}
		}
		next(w, r, s)
	}
}

// as returns a context that calls the API as s's user.
func (h *Handler) as(r *http.Request, s *consoleSession) context.Context {
	return h.asIdentity(r, s, s.identity())
}

// asIdentity is as with an identity derived from s's (one that just
// passed an MFA check).
func (h *Handler) asIdentity(r *http.Request, s *consoleSession, id *certid.Identity) context.Context {
	ctx := withRemoteAddr(r.Context(), r.RemoteAddr)
	return h.console.cfg.Caller(ctx, id, s.hash)
}

// render writes a console page.
func (h *Handler) renderPage(w http.ResponseWriter, status int, name string, v *view) {
	if v.Session != nil {
		v.CSRF = v.Session.CSRF
	}
	v.Proxy = h.cfg.PublicAddr
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := h.console.pages[name].ExecuteTemplate(w, "layout", v); err != nil {
		h.cfg.Logger.Warn("Rendering a console page failed.", "page", name, "error", err)
	}
}

// renderFragment writes one named block of a page (live updates).
func (h *Handler) renderFragment(w http.ResponseWriter, name, block string, v *view) {
	if v.Session != nil {
		v.CSRF = v.Session.CSRF
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := h.console.pages[name].ExecuteTemplate(w, block, v); err != nil {
		h.cfg.Logger.Warn("Rendering a console fragment failed.", "page", name, "error", err)
	}
}

// consoleError shows err: as JSON to scripts, else as a page.
func (h *Handler) consoleError(w http.ResponseWriter, r *http.Request, s *consoleSession, err error) {
	status, msg := h.errorStatus(err)
	if wantsJSON(r) {
		writeJSON(w, status, map[string]string{"error": msg})
		return
	}
	h.renderPage(w, status, "error", &view{Title: "Something went wrong", Session: s, Error: msg})
}

func (h *Handler) errorStatus(err error) (int, string) {
	var ce *connect.Error
	if errors.As(err, &ce) {
		msg := ce.Message()
		switch ce.Code() {
		case connect.CodePermissionDenied, connect.CodeUnauthenticated:
			return http.StatusForbidden, msg
		case connect.CodeNotFound:
			return http.StatusNotFound, msg
		case connect.CodeInvalidArgument, connect.CodeFailedPrecondition, connect.CodeAlreadyExists:
			return http.StatusBadRequest, msg
		case connect.CodeResourceExhausted:
			return http.StatusTooManyRequests, msg
		case connect.CodeUnimplemented:
			return http.StatusNotImplemented, msg
		}
		h.cfg.Logger.Error("Console API call failed.", "error", err)
		return http.StatusInternalServerError, "internal error; see the sigild log"
	}
	status := statusFor(err)
	switch {
	case trace.IsAccessDenied(err):
		status = http.StatusForbidden
	case trace.IsAlreadyExists(err):
		status = http.StatusBadRequest
	case trace.IsNotImplemented(err):
		status = http.StatusNotImplemented
	}
	if status == http.StatusInternalServerError {
		h.cfg.Logger.Error("Console request failed.", "error", err)
		return status, "internal error; see the sigild log"
	}
	return status, strings.TrimSpace(trace.UserMessage(err))
}

func wantsJSON(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "application/json") || r.Header.Get("X-CSRF-Token") != ""
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// readJSONBody reads a script's JSON body, bounded.
func readJSONBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxFormBytes))
	if err != nil {
		return nil, trace.BadParameter("the request body could not be read (at most %d bytes)", maxFormBytes)
	}
	return data, nil
}

// safeNext keeps a post-sign-in redirect on this console.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/web/") || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return "/web/"
	}
	return next
}

func (h *Handler) home(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, "/web/resources", http.StatusSeeOther)
}

// staticHandler serves the embedded CSS, script and icon.
func staticHandler() http.Handler {
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		// The directory is embedded at build time; this cannot fail.
		panic(err)
	}
	files := http.StripPrefix("/web/static/", http.FileServerFS(static))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		// Versioned by the binary: caching for an hour is harmless.
		w.Header().Set("Cache-Control", "public, max-age=3600")
		files.ServeHTTP(w, r)
	})
}

// sameOrigin refuses state-changing requests from other sites: browsers
// send Origin (or Sec-Fetch-Site) on them. The SAML ACS is the exception:
// identity providers post to it from their own site.
func sameOrigin(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return true
	}
	if strings.HasPrefix(r.URL.Path, "/web/sso/") {
		return true
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		return site == "same-origin" || site == "none"
	}
	// Older browsers: Origin, unless it is "null" (what a form sends under
	// Referrer-Policy: no-referrer); the CSRF token still has to match.
	if o := r.Header.Get("Origin"); o != "" && o != "null" && o != "https://"+r.Host {
		return false
	}
	return true
}

// toCanonical sends visitors to the console's canonical origin for the
// pages where security keys are used (a WebAuthn relying party cannot be
// an IP address, so a loopback gateway is https://localhost:PORT there):
// approvals, and sign-in or signup when they ask for a key. Other pages
// stay on the host the browser used, where its cookies are.
func (h *Handler) toCanonical(w http.ResponseWriter, r *http.Request) bool {
	origin := h.console.cfg.Origin
	if origin == "" || r.Method != http.MethodGet || "https://"+r.Host == origin {
		return false
	}
	totp, key := h.console.cfg.Auth.SecondFactorAllows()
	switch p := r.URL.Path; {
	case strings.HasPrefix(p, "/web/mfa/"):
	case p == "/web/login" && key:
	case strings.HasPrefix(p, "/web/signup/") && (totp || key):
	default:
		return false
	}
	if s, err := h.console.sessions.get(r); err == nil && s != nil && !strings.HasPrefix(r.URL.Path, "/web/mfa/") {
		return false
	}
	http.Redirect(w, r, origin+r.URL.RequestURI(), http.StatusFound)
	return true
}

// keysElsewhere is the origin to use for security keys when r came to
// another host ("" when keys work here or not at all).
func (h *Handler) keysElsewhere(r *http.Request) string {
	origin := h.console.cfg.Origin
	if origin == "" || h.console.cfg.MFA.WebAuthn() == nil || "https://"+r.Host == origin {
		return ""
	}
	return origin
}
