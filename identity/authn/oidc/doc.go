// Package oidc is the relying-party side of an OpenID Connect login:
// authorization code flow with PKCE (S256), a nonce bound to the login,
// and ID token verification (signature against the provider's published
// keys, issuer, audience, expiry) by github.com/coreos/go-oidc. It keeps no
// state: the caller stores state, nonce and verifier with its login
// request.
package oidc
