package testenv

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"
)

// OIDCUser is a user of the test OpenID provider.
type OIDCUser struct {
	// Username is what the login form takes; it is also the
	// preferred_username claim.
	Username string
	Password string
	Email    string
	// Groups is the groups claim (scope "groups").
	Groups []string
	// Claims are more claims put in ID tokens and userinfo.
	Claims map[string]any
}

// OIDCClient is a client registration at the test provider.
type OIDCClient struct {
	ID     string
	Secret string
	// RedirectURIs are matched exactly.
	RedirectURIs []string
	// IDTokenLifetime defaults to an hour; a negative one makes the
	// provider issue ID tokens that are already expired.
	IDTokenLifetime time.Duration
	// TokenAudience, when set, is the client the provider issues this
	// client's tokens to (aud and azp): a token meant for someone else.
	TokenAudience string
}

// OIDCProvider is a real OpenID provider on a loopback port: the example
// OP that ships with github.com/zitadel/oidc (authorization code flow,
// PKCE, discovery, JWKS, login form), with users, groups and clients set
// by the test.
type OIDCProvider struct {
	// Issuer is http://127.0.0.1:PORT/ (with the trailing slash the
	// provider's discovery document names).
	Issuer string
	srv    *httptest.Server
	store  *oidcStorage

	mu     sync.Mutex
	tamper func(idToken string) string
}

// StartOIDCProvider starts the provider with users; it stops at the end
// of the test.
func StartOIDCProvider(t testing.TB, users ...OIDCUser) *OIDCProvider {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &OIDCProvider{Issuer: "http://" + ln.Addr().String() + "/"}
	us := &oidcUsers{users: map[string]*storage.User{}}
	p.store = &oidcStorage{
		users:   us,
		clients: map[string]*oidcClient{},
		groups:  map[string][]string{},
		claims:  map[string]map[string]any{},
	}
	for i, u := range users {
		id := "user-" + strconv.Itoa(i+1)
		us.users[id] = &storage.User{
			ID:                id,
			Username:          u.Username,
			Password:          u.Password,
			FirstName:         u.Username,
			LastName:          "Test",
			Email:             u.Email,
			EmailVerified:     true,
			PreferredLanguage: language.English,
		}
		p.store.groups[id] = u.Groups
		p.store.claims[id] = u.Claims
	}
	p.store.Storage = storage.NewStorageWithClients(us, map[string]*storage.Client{})
	router := exampleop.SetupServer(p.Issuer, p.store, nil, false)
	p.srv = &httptest.Server{Listener: ln, Config: &http.Server{Handler: p.tamperTokens(router), ReadHeaderTimeout: 10 * time.Second}}
	p.srv.Start()
	t.Cleanup(p.srv.Close)
	return p
}

// AddClient registers a client.
func (p *OIDCProvider) AddClient(c OIDCClient) {
	lifetime := c.IDTokenLifetime
	if lifetime == 0 {
		lifetime = time.Hour
	}
	p.store.mu.Lock()
	defer p.store.mu.Unlock()
	p.store.clients[c.ID] = &oidcClient{
		Client:   storage.WebClient(c.ID, c.Secret, c.RedirectURIs...),
		secret:   c.Secret,
		lifetime: lifetime,
		issueAs:  c.TokenAudience,
	}
}

// SetGroups changes a user's groups, as an IdP admin would.
func (p *OIDCProvider) SetGroups(username string, groups []string) {
	p.store.mu.Lock()
	defer p.store.mu.Unlock()
	for id, u := range p.store.users.users {
		if u.Username == username {
			p.store.groups[id] = groups
		}
	}
}

// TamperIDTokens rewrites the ID token of every token response with fn
// (nil stops): what an attacker on the path between the gateway and the
// provider could do.
func (p *OIDCProvider) TamperIDTokens(fn func(idToken string) string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tamper = fn
}

func (p *OIDCProvider) tamperTokens(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		fn := p.tamper
		p.mu.Unlock()
		if fn == nil || r.URL.Path != "/oauth/token" {
			next.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		var resp map[string]any
		if err := json.Unmarshal(body, &resp); err == nil {
			if tok, ok := resp["id_token"].(string); ok {
				resp["id_token"] = fn(tok)
				body, _ = json.Marshal(resp)
			}
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(rec.Code)
		_, _ = w.Write(body)
	})
}

// oidcUsers is the provider's user directory.
type oidcUsers struct {
	users map[string]*storage.User
}

func (u *oidcUsers) GetUserByID(id string) *storage.User { return u.users[id] }

func (u *oidcUsers) GetUserByUsername(name string) *storage.User {
	for _, user := range u.users {
		if user.Username == name {
			return user
		}
	}
	return nil
}

func (u *oidcUsers) ExampleClientID() string { return storage.ServiceUserID }

// oidcStorage is the example OP's storage with test clients, a groups
// claim and extra claims.
type oidcStorage struct {
	*storage.Storage
	users *oidcUsers

	mu      sync.Mutex
	clients map[string]*oidcClient
	groups  map[string][]string
	claims  map[string]map[string]any
}

// oidcClient is a web client (client secret, basic auth) whose ID tokens
// carry the profile and email claims too, with a settable lifetime.
type oidcClient struct {
	*storage.Client
	secret   string
	lifetime time.Duration
	// issueAs replaces the client id in tokens (and, so that the
	// provider's own consistency check passes, in the token exchange).
	issueAs string
}

func (c *oidcClient) GetID() string {
	if c.issueAs != "" {
		return c.issueAs
	}
	return c.Client.GetID()
}

func (c *oidcClient) IDTokenLifetime() time.Duration { return c.lifetime }

func (c *oidcClient) IDTokenUserinfoClaimsAssertion() bool { return true }

func (c *oidcClient) IsScopeAllowed(scope string) bool { return scope == "groups" }

func (s *oidcStorage) client(id string) (*oidcClient, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[id]
	if !ok {
		return nil, errors.New("client not found")
	}
	return c, nil
}

func (s *oidcStorage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	return s.client(id)
}

func (s *oidcStorage) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	c, err := s.client(id)
	if err != nil {
		return err
	}
	if c.secret != secret {
		return errors.New("invalid secret")
	}
	return nil
}

// AuthRequestByCode makes the requests of clients with TokenAudience
// about that other client.
func (s *oidcStorage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	req, err := s.Storage.AuthRequestByCode(ctx, code)
	if err != nil {
		return nil, err
	}
	c, err := s.client(req.GetClientID())
	if err != nil || c.issueAs == "" {
		return req, nil
	}
	return issuedAsRequest{AuthRequest: req, clientID: c.issueAs}, nil
}

type issuedAsRequest struct {
	op.AuthRequest
	clientID string
}

func (r issuedAsRequest) GetClientID() string   { return r.clientID }
func (r issuedAsRequest) GetAudience() []string { return []string{r.clientID} }

func (s *oidcStorage) SetUserinfoFromRequest(ctx context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, info, req, scopes); err != nil {
		return err
	}
	s.addClaims(info, req.GetSubject(), scopes)
	return nil
}

func (s *oidcStorage) SetUserinfoFromToken(ctx context.Context, info *oidc.UserInfo, tokenID, subject, origin string) error {
	if err := s.Storage.SetUserinfoFromToken(ctx, info, tokenID, subject, origin); err != nil {
		return err
	}
	s.addClaims(info, subject, []string{"groups"})
	return nil
}

func (s *oidcStorage) addClaims(info *oidc.UserInfo, subject string, scopes []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Contains(scopes, "groups") {
		info.AppendClaims("groups", append([]string{}, s.groups[subject]...))
	}
	for k, v := range s.claims[subject] {
		info.AppendClaims(k, v)
	}
}
