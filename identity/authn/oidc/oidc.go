package oidc

import (
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/gravitational/trace"
	"golang.org/x/oauth2"

	"github.com/sigilhq/sigil/identity/authn/sso"
)

// Config describes one provider registration.
type Config struct {
	IssuerURL    string
	ClientID     string
	ClientSecret string
	RedirectURL  string
	Scopes       []string
	// UserInfo also reads the userinfo endpoint after the exchange.
	UserInfo bool
	// HTTPClient reaches the provider (discovery, keys, token, userinfo);
	// it should bound response sizes and time.
	HTTPClient *http.Client
	Clock      func() time.Time
}

// CheckAndSetDefaults validates the config.
func (c *Config) CheckAndSetDefaults() error {
	switch {
	case c.IssuerURL == "":
		return trace.BadParameter("oidc: missing IssuerURL")
	case c.ClientID == "":
		return trace.BadParameter("oidc: missing ClientID")
	case c.RedirectURL == "":
		return trace.BadParameter("oidc: missing RedirectURL")
	case c.HTTPClient == nil:
		return trace.BadParameter("oidc: missing HTTPClient")
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return nil
}

// Client runs logins against one provider.
type Client struct {
	cfg      Config
	provider *gooidc.Provider
	oauth    *oauth2.Config
	verifier *gooidc.IDTokenVerifier
}

// New discovers the provider (GET /.well-known/openid-configuration): the
// document must name IssuerURL as its issuer.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	ctx = gooidc.ClientContext(ctx, cfg.HTTPClient)
	provider, err := gooidc.NewProvider(ctx, cfg.IssuerURL)
	if err != nil {
		return nil, trace.ConnectionProblem(err, "discovering the OpenID provider at %s failed: %v", cfg.IssuerURL, err)
	}
	return &Client{
		cfg:      cfg,
		provider: provider,
		oauth: &oauth2.Config{
			ClientID:     cfg.ClientID,
			ClientSecret: cfg.ClientSecret,
			RedirectURL:  cfg.RedirectURL,
			Endpoint:     provider.Endpoint(),
			Scopes:       cfg.Scopes,
		},
		verifier: provider.VerifierContext(ctx, &gooidc.Config{ClientID: cfg.ClientID, Now: cfg.Clock}),
	}, nil
}

// NewVerifier returns a fresh PKCE code verifier.
func NewVerifier() string { return oauth2.GenerateVerifier() }

// AuthCodeURL is where the browser goes to log in: the provider's
// authorization endpoint with state, nonce and the S256 challenge of
// verifier.
func (c *Client) AuthCodeURL(state, nonce, verifier string) string {
	return c.oauth.AuthCodeURL(state, gooidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier))
}

// Exchange trades the authorization code for tokens, verifies the ID
// token (signature, issuer, audience, expiry, nonce) and returns its
// claims, merged with the userinfo claims when configured.
func (c *Client) Exchange(ctx context.Context, code, verifier, nonce string) (sso.Claims, error) {
	ctx = gooidc.ClientContext(ctx, c.cfg.HTTPClient)
	tok, err := c.oauth.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.ErrorCode != "" {
			return nil, trace.AccessDenied("the OpenID provider refused the authorization code: %s %s", re.ErrorCode, re.ErrorDescription)
		}
		return nil, trace.ConnectionProblem(err, "exchanging the authorization code at %s failed: %v", c.cfg.IssuerURL, err)
	}
	raw, ok := tok.Extra("id_token").(string)
	if !ok || raw == "" {
		return nil, trace.AccessDenied("the OpenID provider returned no ID token (is the openid scope allowed for client %q?)", c.cfg.ClientID)
	}
	idt, err := c.verifier.Verify(ctx, raw)
	if err != nil {
		return nil, trace.AccessDenied("the ID token from %s failed verification: %v", c.cfg.IssuerURL, err)
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(nonce)) != 1 {
		return nil, trace.AccessDenied("the ID token from %s failed verification: its nonce does not belong to this login", c.cfg.IssuerURL)
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		return nil, trace.AccessDenied("the ID token from %s has unreadable claims: %v", c.cfg.IssuerURL, err)
	}
	out := sso.FromJSON(claims)
	if c.cfg.UserInfo {
		info, err := c.provider.UserInfo(ctx, oauth2.StaticTokenSource(tok))
		if err != nil {
			return nil, trace.ConnectionProblem(err, "reading userinfo from %s failed: %v", c.cfg.IssuerURL, err)
		}
		// OIDC Core 5.3.2: userinfo about another subject must be ignored.
		if info.Subject != idt.Subject {
			return nil, trace.AccessDenied("the userinfo of %s is about subject %q, the ID token about %q", c.cfg.IssuerURL, info.Subject, idt.Subject)
		}
		var more map[string]any
		if err := info.Claims(&more); err != nil {
			return nil, trace.AccessDenied("the userinfo of %s has unreadable claims: %v", c.cfg.IssuerURL, err)
		}
		for k, v := range sso.FromJSON(more) {
			if _, ok := out[k]; !ok {
				out.Add(k, v...)
			}
		}
	}
	return out, nil
}
