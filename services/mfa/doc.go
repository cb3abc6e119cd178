// Package mfa keeps each user's second-factor devices (TOTP apps and
// WebAuthn security keys) and the short-lived challenges that prove a
// device was used: per-session MFA before a database session, a login's
// second factor, and the proof needed to add another device. The
// ceremonies themselves live in identity/authn; this package stores their
// state and enforces single use, binding and expiry.
package mfa
