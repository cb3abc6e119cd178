// Package web serves the web console: sign-in (password with a second
// factor, SSO buttons), signup links, resources, MFA devices and approvals,
// the audit log, active sessions and access requests, plus the browser side
// of SSO logins (start, OIDC callback, SAML ACS and SP metadata, driven by
// services/sso). Signed-in pages call the Connect API in-process as the
// user, so the console can do exactly what that user's CLI could. Pages
// are html/template files and static assets embedded in the binary; there
// is no JavaScript build step.
package web
