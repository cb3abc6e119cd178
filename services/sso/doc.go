// Package sso runs SSO logins through oidc_connector and saml_connector
// resources: it keeps connector secrets (the OIDC client secret, the SAML
// service-provider key) sealed apart from the resources, stores pending
// login requests with a short TTL, and drives the browser part of a login
// (start page, OIDC callback, SAML ACS) up to a mapped Login. Issuing
// certificates for that Login is the caller's (the API server's) job,
// handed in as a Finisher, so that local and SSO logins issue through one
// path.
package sso
