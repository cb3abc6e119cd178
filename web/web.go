package web

import (
	"context"
	"crypto/subtle"
	"embed"
	"html/template"
	"log/slog"
	"net/http"
	"strings"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/services/sso"
)

//go:embed templates/*.html
var templateFS embed.FS

// Signups is what the signup page needs from the users service.
type Signups interface {
	SignupUser(ctx context.Context, token string) (string, error)
	Signup(ctx context.Context, token string, password []byte, clientAddr string) (string, error)
}

// Config configures the web handler.
type Config struct {
	Signups Signups
	// PublicAddr is the gateway address shown in instructions.
	PublicAddr string
	// SSO serves the browser side of SSO logins; nil leaves it out.
	SSO SSO
	// Finisher issues what an SSO login gets; required with SSO.
	Finisher sso.Finisher
	// Console, when set, serves the web console (sign-in, resources, MFA,
	// audit, sessions, access requests); nil leaves only signup and SSO.
	Console *ConsoleConfig
	Logger  *slog.Logger
}

// CheckAndSetDefaults validates the config.
func (c *Config) CheckAndSetDefaults() error {
	if c.Signups == nil {
		return trace.BadParameter("web: missing Signups")
	}
	if c.PublicAddr == "" {
		return trace.BadParameter("web: missing PublicAddr")
	}
	if c.SSO != nil && c.Finisher == nil {
		return trace.BadParameter("web: SSO needs a Finisher")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Handler serves /web/.
type Handler struct {
	cfg     Config
	signup  *template.Template
	sso     *ssoPages
	console *console
	mux     *http.ServeMux
}

// New returns the web handler.
func New(cfg Config) (*Handler, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	t, err := template.ParseFS(templateFS, "templates/layout.html", "templates/signup.html")
	if err != nil {
		return nil, trace.Wrap(err)
	}
	h := &Handler{cfg: cfg, signup: t, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /web/signup/{token}", h.getSignup)
	h.mux.HandleFunc("POST /web/signup/{token}", h.postSignup)
	h.mux.HandleFunc("GET /web/{$}", h.index)
	h.mux.Handle("GET /web/static/", staticHandler())
	if cfg.Console != nil {
		if err := h.registerConsole(); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	if cfg.SSO != nil {
		if err := h.registerSSO(); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	return h, nil
}

// ServeHTTP sets security headers on every page.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", consoleCSP)
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Strict-Transport-Security", "max-age=31536000")
	if !sameOrigin(r) {
		http.Error(w, "cross-site request refused", http.StatusForbidden)
		return
	}
	if h.console != nil && h.toCanonical(w, r) {
		return
	}
	h.mux.ServeHTTP(w, r)
}

type signupPage struct {
	Title, User, Proxy, Error string
	Done, Fatal               bool
	// CSRF binds the form to the browser that loaded it.
	CSRF string
	// Console says the new user is signed in to the console.
	Console bool
}

func (h *Handler) render(w http.ResponseWriter, r *http.Request, status int, p signupPage) {
	p.Title = "Sign up to Sigil"
	p.Proxy = h.cfg.PublicAddr
	if !p.Done && !p.Fatal {
		token, err := preToken(w, r)
		if err != nil {
			status, p = http.StatusInternalServerError, signupPage{Title: p.Title, Fatal: true, Error: "internal error; see the sigild log"}
		}
		p.CSRF = token
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := h.signup.ExecuteTemplate(w, "layout", p); err != nil {
		h.cfg.Logger.Warn("rendering signup page", "error", err)
	}
}

func (h *Handler) index(w http.ResponseWriter, r *http.Request) {
	if h.console != nil {
		h.home(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("Sigil web console. Open the signup link an admin gave you, or use the sigil CLI.\n"))
}

func statusFor(err error) int {
	switch {
	case trace.IsNotFound(err):
		return http.StatusNotFound
	case trace.IsBadParameter(err):
		return http.StatusBadRequest
	case trace.IsLimitExceeded(err):
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}

func (h *Handler) getSignup(w http.ResponseWriter, r *http.Request) {
	user, err := h.cfg.Signups.SignupUser(r.Context(), r.PathValue("token"))
	if err != nil {
		h.render(w, r, statusFor(err), signupPage{Fatal: true, Error: trace.UserMessage(err)})
		return
	}
	h.render(w, r, http.StatusOK, signupPage{User: user})
}

func (h *Handler) postSignup(w http.ResponseWriter, r *http.Request) {
	token := r.PathValue("token")
	user, err := h.cfg.Signups.SignupUser(r.Context(), token)
	if err != nil {
		h.render(w, r, statusFor(err), signupPage{Fatal: true, Error: trace.UserMessage(err)})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		h.render(w, r, http.StatusBadRequest, signupPage{User: user, Error: "the form could not be read"})
		return
	}
	if err := checkPreToken(r, r.PostForm.Get("csrf")); err != nil {
		h.render(w, r, http.StatusForbidden, signupPage{User: user, Error: trace.UserMessage(err)})
		return
	}
	pw, confirm := r.PostForm.Get("password"), r.PostForm.Get("confirm")
	if subtle.ConstantTimeCompare([]byte(pw), []byte(confirm)) != 1 {
		h.render(w, r, http.StatusBadRequest, signupPage{User: user, Error: "the passwords do not match"})
		return
	}
	if h.console != nil {
		h.consoleSignup(w, r, token, user, pw)
		return
	}
	if _, err := h.cfg.Signups.Signup(r.Context(), token, []byte(pw), r.RemoteAddr); err != nil {
		status := statusFor(err)
		h.render(w, r, status, signupPage{User: user, Error: strings.TrimSpace(trace.UserMessage(err)), Fatal: trace.IsNotFound(err)})
		return
	}
	h.render(w, r, http.StatusOK, signupPage{User: user, Done: true})
}

// consoleSignup completes the signup and signs the new user in to the
// console; when sign-in asks for a second factor, they register a device
// right away.
func (h *Handler) consoleSignup(w http.ResponseWriter, r *http.Request, token, user, password string) {
	res, err := h.console.cfg.Auth.WebSignup(r.Context(), token, []byte(password), r.RemoteAddr)
	if err != nil {
		status := statusFor(err)
		h.render(w, r, status, signupPage{User: user, Error: strings.TrimSpace(trace.UserMessage(err)), Fatal: trace.IsNotFound(err)})
		return
	}
	if err := h.startSession(w, r, res.Identity, "local", res.TTL); err != nil {
		h.render(w, r, http.StatusInternalServerError, signupPage{Fatal: true, Error: "your account is ready, but signing in failed; sign in at /web/login"})
		return
	}
	if totp, key := h.console.cfg.Auth.SecondFactorAllows(); totp || key {
		http.Redirect(w, r, "/web/devices?setup=1", http.StatusSeeOther)
		return
	}
	h.render(w, r, http.StatusOK, signupPage{User: user, Done: true, Console: true})
}
