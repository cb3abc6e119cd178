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
	Logger     *slog.Logger
}

// CheckAndSetDefaults validates the config.
func (c *Config) CheckAndSetDefaults() error {
	if c.Signups == nil {
		return trace.BadParameter("web: missing Signups")
	}
	if c.PublicAddr == "" {
		return trace.BadParameter("web: missing PublicAddr")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Handler serves /web/.
type Handler struct {
	cfg    Config
	signup *template.Template
	mux    *http.ServeMux
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
	return h, nil
}

// ServeHTTP sets security headers on every page.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "no-referrer")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Strict-Transport-Security", "max-age=31536000")
	h.mux.ServeHTTP(w, r)
}

type signupPage struct {
	Title, User, Proxy, Error string
	Done, Fatal               bool
}

func (h *Handler) render(w http.ResponseWriter, status int, p signupPage) {
	p.Title = "Sign up to Sigil"
	p.Proxy = h.cfg.PublicAddr
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := h.signup.ExecuteTemplate(w, "layout", p); err != nil {
		h.cfg.Logger.Warn("rendering signup page", "error", err)
	}
}

func (h *Handler) index(w http.ResponseWriter, r *http.Request) {
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
		h.render(w, statusFor(err), signupPage{Fatal: true, Error: trace.UserMessage(err)})
		return
	}
	h.render(w, http.StatusOK, signupPage{User: user})
}

func (h *Handler) postSignup(w http.ResponseWriter, r *http.Request) {
	token := r.PathValue("token")
	user, err := h.cfg.Signups.SignupUser(r.Context(), token)
	if err != nil {
		h.render(w, statusFor(err), signupPage{Fatal: true, Error: trace.UserMessage(err)})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		h.render(w, http.StatusBadRequest, signupPage{User: user, Error: "the form could not be read"})
		return
	}
	pw, confirm := r.PostForm.Get("password"), r.PostForm.Get("confirm")
	if subtle.ConstantTimeCompare([]byte(pw), []byte(confirm)) != 1 {
		h.render(w, http.StatusBadRequest, signupPage{User: user, Error: "the passwords do not match"})
		return
	}
	if _, err := h.cfg.Signups.Signup(r.Context(), token, []byte(pw), r.RemoteAddr); err != nil {
		status := statusFor(err)
		h.render(w, status, signupPage{User: user, Error: strings.TrimSpace(trace.UserMessage(err)), Fatal: trace.IsNotFound(err)})
		return
	}
	h.render(w, http.StatusOK, signupPage{User: user, Done: true})
}
