// Package saml is the service-provider side of a SAML 2.0 login, built on
// github.com/crewjam/saml: AuthnRequests over the HTTP-Redirect binding,
// responses on an HTTP-POST assertion consumer service, with signed
// assertions required and audience, recipient, InResponseTo and validity
// checked. Replay protection (remembering assertion ids) is the caller's:
// it needs shared storage.
package saml
