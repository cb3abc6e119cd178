package web

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/storage"
)

const (
	// sessionCookie holds the console session token. __Host- makes the
	// browser refuse it unless Secure, for path / and without a domain.
	sessionCookie = "__Host-sigil_session"
	// preCookie binds the sign-in and signup forms (and a sign-in's MFA
	// challenge) to the browser before there is a session.
	preCookie = "__Host-sigil_pre"
	// sessionPrefix keys sessions by the SHA-256 of their token: a storage
	// dump holds no usable cookie.
	sessionPrefix = "/web/sessions/"
	// touchEvery bounds the writes idle tracking costs: last-seen is
	// stored at most once a minute per session.
	touchEvery = time.Minute
	// DefaultIdleTimeout signs a session out after this long unused.
	DefaultIdleTimeout = 30 * time.Minute
	// DefaultSessionTTL is the longest a session lives, used or not.
	DefaultSessionTTL = 8 * time.Hour
)

// consoleSession is one signed-in browser.
type consoleSession struct {
	User   string              `json:"user"`
	Kind   string              `json:"kind"`
	Roles  []string            `json:"roles"`
	Traits map[string][]string `json:"traits,omitempty"`
	// Method is how they signed in: local, or the SSO connector.
	Method   string    `json:"method"`
	CSRF     string    `json:"csrf"`
	Created  time.Time `json:"created"`
	LastSeen time.Time `json:"last_seen"`
	Expires  time.Time `json:"expires"`
	ClientIP string    `json:"client_ip,omitempty"`

	// hash names the session (it binds MFA challenges made in it).
	hash string
}

// identity is who the session acts as when it calls the API.
func (s *consoleSession) identity() *certid.Identity {
	return &certid.Identity{
		Name:     s.User,
		Kind:     certid.Kind(s.Kind),
		Roles:    s.Roles,
		Traits:   s.Traits,
		ClientIP: s.ClientIP,
		Expires:  s.Expires,
	}
}

func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", trace.Wrap(err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func hashToken(t string) string {
	sum := sha256.Sum256([]byte(t))
	return hex.EncodeToString(sum[:])
}

// sessions stores console sessions in the backend.
type sessions struct {
	backend storage.Backend
	idle    time.Duration
	clock   func() time.Time
}

// create stores a session for id and returns its cookie.
func (st *sessions) create(ctx context.Context, id *certid.Identity, method string, ttl time.Duration) (*http.Cookie, error) {
	token, err := randomToken()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	csrf, err := randomToken()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	now := st.clock().UTC()
	if ttl <= 0 {
		ttl = DefaultSessionTTL
	}
	s := &consoleSession{
		User: id.Name, Kind: string(id.Kind), Roles: id.Roles, Traits: id.Traits, Method: method,
		CSRF: csrf, Created: now, LastSeen: now, Expires: now.Add(ttl), ClientIP: id.ClientIP,
	}
	if err := st.put(ctx, hashToken(token), s); err != nil {
		return nil, trace.Wrap(err)
	}
	return &http.Cookie{
		Name: sessionCookie, Value: token, Path: "/",
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode,
	}, nil
}

func (st *sessions) put(ctx context.Context, hash string, s *consoleSession) error {
	data, err := json.Marshal(s)
	if err != nil {
		return trace.Wrap(err)
	}
	expires := s.LastSeen.Add(st.idle)
	if s.Expires.Before(expires) {
		expires = s.Expires
	}
	_, err = st.backend.Put(ctx, storage.Item{Key: sessionPrefix + hash, Value: data, Expires: expires})
	return trace.Wrap(err)
}

// get returns the live session of r, nil when there is none; it counts
// as use (idle timeout).
func (st *sessions) get(r *http.Request) (*consoleSession, error) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" || len(c.Value) > 128 {
		return nil, nil
	}
	hash := hashToken(c.Value)
	item, err := st.backend.Get(r.Context(), sessionPrefix+hash)
	if trace.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}
	s := &consoleSession{}
	if err := json.Unmarshal(item.Value, s); err != nil {
		return nil, trace.Wrap(err)
	}
	s.hash = hash
	now := st.clock()
	if !now.Before(s.Expires) || !now.Before(s.LastSeen.Add(st.idle)) {
		return nil, nil
	}
	if now.Sub(s.LastSeen) >= touchEvery {
		s.LastSeen = now.UTC()
		if err := st.put(r.Context(), hash, s); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	return s, nil
}

// remove deletes r's session (sign out).
func (st *sessions) remove(r *http.Request) error {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" || len(c.Value) > 128 {
		return nil
	}
	if err := st.backend.Delete(r.Context(), sessionPrefix+hashToken(c.Value)); err != nil && !trace.IsNotFound(err) {
		return trace.Wrap(err)
	}
	return nil
}

func clearCookie(name string) *http.Cookie {
	return &http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode}
}

// preToken returns the browser's pre-session token, setting a new cookie
// when there is none; forms before sign-in carry it as their CSRF token.
func preToken(w http.ResponseWriter, r *http.Request) (string, error) {
	if c, err := r.Cookie(preCookie); err == nil && len(c.Value) >= 32 && len(c.Value) <= 128 {
		return c.Value, nil
	}
	t, err := randomToken()
	if err != nil {
		return "", trace.Wrap(err)
	}
	http.SetCookie(w, &http.Cookie{Name: preCookie, Value: t, Path: "/", MaxAge: 3600, Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	return t, nil
}

// checkPreToken checks a form's token against the pre-session cookie.
func checkPreToken(r *http.Request, got string) error {
	c, err := r.Cookie(preCookie)
	if err != nil || got == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(got)) != 1 {
		return trace.AccessDenied("the form expired or came from another page; reload the page and try again")
	}
	return nil
}

// checkCSRF checks a signed-in request's token (form field or header).
func checkCSRF(s *consoleSession, got string) error {
	if got == "" || subtle.ConstantTimeCompare([]byte(s.CSRF), []byte(got)) != 1 {
		return trace.AccessDenied("the form expired or came from another page; reload the page and try again")
	}
	return nil
}
