// Package sso turns what an identity provider says about a user (OIDC
// claims, SAML attributes) into Sigil roles and traits, following a
// connector's claims_to_roles / attributes_to_roles and traits. It is pure:
// the OIDC and SAML ceremonies that produce the claims live elsewhere, and
// both share this one mapping so they cannot drift apart.
package sso
