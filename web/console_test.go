package web

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/apiserver"
	"github.com/sigilhq/sigil/services/mfa"
	"github.com/sigilhq/sigil/services/storage/badger"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fakeAuth signs in alice with "pw"; nothing else.
type fakeAuth struct{}

func (fakeAuth) WebLogin(_ context.Context, req apiserver.WebLoginRequest) (*apiserver.WebLoginResult, error) {
	if req.User != "alice" || req.Password != "pw" {
		return nil, trace.AccessDenied("invalid username or password")
	}
	return &apiserver.WebLoginResult{Identity: &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"access"}}}, nil
}

func (fakeAuth) WebLoginMFA(context.Context, string, string, string, []byte, string) (*apiserver.WebLoginResult, error) {
	return nil, trace.AccessDenied("no")
}

func (fakeAuth) WebSignup(context.Context, string, []byte, string) (*apiserver.WebLoginResult, error) {
	return nil, trace.NotFound("no")
}

func (fakeAuth) SecondFactorAllows() (bool, bool) { return false, false }

func (fakeAuth) SessionMFARole(context.Context, *certid.Identity) (string, error) { return "", nil }

func (fakeAuth) ReviewChallenge(context.Context, string, string, []byte, string, bool) (string, *mfa.Challenge, error) {
	return "", nil, trace.NotImplemented("no")
}

func (fakeAuth) ReviewMFA(context.Context, string, string, string, string, []byte, string) (*mfa.Used, error) {
	return nil, trace.NotImplemented("no")
}

// fakeChallenges has no challenge at all.
type fakeChallenges struct{}

func (fakeChallenges) Challenge(context.Context, string) (*mfa.Challenge, error) {
	return nil, trace.NotFound("unknown MFA challenge")
}

func (fakeChallenges) ChallengeByRef(context.Context, string) (*mfa.Challenge, error) {
	return nil, trace.NotFound("unknown MFA challenge")
}
func (fakeChallenges) Pending(context.Context, string) ([]*mfa.Challenge, error) { return nil, nil }
func (fakeChallenges) VerifyWebAuthn(context.Context, string, []byte) (*mfa.Challenge, error) {
	return nil, trace.NotFound("unknown MFA challenge")
}

func (fakeChallenges) VerifyWebAuthnRef(context.Context, string, []byte) (*mfa.Challenge, error) {
	return nil, trace.NotFound("unknown MFA challenge")
}

func (fakeChallenges) Registration(context.Context, string, string) (*mfa.Registration, error) {
	return nil, trace.NotFound("unknown registration")
}
func (fakeChallenges) WebAuthn() *authn.WebAuthn { return nil }

type fakeSignups struct{}

func (fakeSignups) SignupUser(context.Context, string) (string, error) {
	return "", trace.NotFound("no")
}

func (fakeSignups) Signup(context.Context, string, []byte, string) (string, error) {
	return "", trace.NotFound("no")
}

// newTestHandler returns a console; opts change its config (an API to
// call, another Auth).
func newTestHandler(t *testing.T, opts ...func(*ConsoleConfig)) (*Handler, *fakeClock) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	backend, err := badger.New(context.Background(), badger.Config{InMemory: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { backend.Close() })
	clock := &fakeClock{now: time.Now()}
	cc := &ConsoleConfig{
		API:         http.NotFoundHandler(),
		Caller:      func(ctx context.Context, _ *certid.Identity, _ string) context.Context { return ctx },
		Auth:        fakeAuth{},
		MFA:         fakeChallenges{},
		Backend:     backend,
		IdleTimeout: 30 * time.Minute,
		Clock:       clock.Now,
	}
	for _, o := range opts {
		o(cc)
	}
	h, err := New(Config{Signups: fakeSignups{}, PublicAddr: "127.0.0.1:3443", Logger: log, Console: cc})
	if err != nil {
		t.Fatal(err)
	}
	return h, clock
}

// browser keeps cookies between requests to h.
type browser struct {
	t       *testing.T
	h       *Handler
	cookies map[string]*http.Cookie
}

func (b *browser) do(method, path string, form url.Values, hdr map[string]string) *httptest.ResponseRecorder {
	b.t.Helper()
	var req *http.Request
	if form != nil {
		req = httptest.NewRequest(method, "https://localhost:3443"+path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		req = httptest.NewRequest(method, "https://localhost:3443"+path, nil)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	for _, c := range b.cookies {
		req.AddCookie(c)
	}
	w := httptest.NewRecorder()
	b.h.ServeHTTP(w, req)
	for _, c := range w.Result().Cookies() {
		if c.MaxAge < 0 {
			delete(b.cookies, c.Name)
			continue
		}
		b.cookies[c.Name] = c
	}
	return w
}

func checkStrictCookie(t *testing.T, c *http.Cookie) {
	t.Helper()
	if c == nil {
		t.Fatal("cookie not set")
	}
	if !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Domain != "" {
		t.Fatalf("cookie %s: Secure=%v HttpOnly=%v SameSite=%v Path=%q Domain=%q", c.Name, c.Secure, c.HttpOnly, c.SameSite, c.Path, c.Domain)
	}
}

func TestConsoleSessionsAndCSRF(t *testing.T) {
	h, clock := newTestHandler(t)
	b := &browser{t: t, h: h, cookies: map[string]*http.Cookie{}}

	w := b.do(http.MethodGet, "/web/login", nil, nil)
	if w.Code != http.StatusOK {
		t.Fatalf("login page: %d", w.Code)
	}
	csp := w.Header().Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Fatalf("CSP %q", csp)
	}
	checkStrictCookie(t, b.cookies[preCookie])
	pre := b.cookies[preCookie].Value
	if !strings.Contains(w.Body.String(), `name="csrf" value="`+pre+`"`) {
		t.Fatalf("the sign-in form lacks its CSRF token:\n%s", w.Body.String())
	}

	creds := url.Values{"user": {"alice"}, "password": {"pw"}}
	if w := b.do(http.MethodPost, "/web/login", creds, nil); w.Code != http.StatusForbidden || b.cookies[sessionCookie] != nil {
		t.Fatalf("sign-in without its token: %d", w.Code)
	}
	creds.Set("csrf", pre)
	if w := b.do(http.MethodPost, "/web/login", creds, map[string]string{"Sec-Fetch-Site": "cross-site"}); w.Code != http.StatusForbidden {
		t.Fatalf("cross-site sign-in: %d", w.Code)
	}
	w = b.do(http.MethodPost, "/web/login", creds, map[string]string{"Sec-Fetch-Site": "same-origin"})
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/web/" {
		t.Fatalf("sign-in: %d %s\n%s", w.Code, w.Header().Get("Location"), w.Body.String())
	}
	checkStrictCookie(t, b.cookies[sessionCookie])
	if b.cookies[preCookie] != nil {
		t.Fatal("the pre-session cookie survived the sign-in")
	}

	w = b.do(http.MethodGet, "/web/approvals", nil, nil)
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), ">alice</span>") {
		t.Fatalf("approvals page: %d\n%s", w.Code, w.Body.String())
	}
	token := csrfRe(w.Body.String())

	// Every form needs the session's token.
	if w := b.do(http.MethodPost, "/web/logout", url.Values{"csrf": {"wrong"}}, nil); w.Code != http.StatusForbidden {
		t.Fatalf("sign-out with a wrong token: %d", w.Code)
	}
	if w := b.do(http.MethodPost, "/web/sessions/terminate", url.Values{"user": {"bob"}}, nil); w.Code != http.StatusForbidden {
		t.Fatalf("a form without its token: %d", w.Code)
	}

	// Idle for less than the timeout: still signed in; the request counts
	// as use.
	clock.Advance(29 * time.Minute)
	if w := b.do(http.MethodGet, "/web/approvals", nil, nil); w.Code != http.StatusOK {
		t.Fatalf("after 29 idle minutes: %d", w.Code)
	}
	clock.Advance(29 * time.Minute)
	if w := b.do(http.MethodGet, "/web/approvals", nil, nil); w.Code != http.StatusOK {
		t.Fatalf("29 minutes after the last request: %d", w.Code)
	}
	clock.Advance(31 * time.Minute)
	w = b.do(http.MethodGet, "/web/approvals", nil, nil)
	if w.Code != http.StatusSeeOther || !strings.HasPrefix(w.Header().Get("Location"), "/web/login?next=") {
		t.Fatalf("after 31 idle minutes: %d %s", w.Code, w.Header().Get("Location"))
	}
	if w := b.do(http.MethodPost, "/web/logout", url.Values{"csrf": {token}}, nil); w.Code != http.StatusSeeOther || b.cookies[sessionCookie] != nil {
		t.Fatalf("sign-out of an idle session: %d", w.Code)
	}
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{
		"/web/audit?type=x":   "/web/audit?type=x",
		"https://evil.test/":  "/web/",
		"//evil.test/web/":    "/web/",
		"/web/\\evil":         "/web/",
		"/api/sigil.v1.Auth/": "/web/",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

func csrfRe(body string) string {
	const marker = `name="csrf" value="`
	i := strings.Index(body, marker)
	if i < 0 {
		return ""
	}
	rest := body[i+len(marker):]
	return rest[:strings.Index(rest, `"`)]
}
