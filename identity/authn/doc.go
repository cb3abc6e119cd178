// Package authn holds the primitives local-user authentication is built from:
// argon2id password hashes in PHC string form, a password policy, TOTP second
// factors with replay protection, random bearer tokens, and a login rate
// limiter keyed by user and by client address.
//
// Nothing here stores state durably; callers persist hashes and TOTP secrets
// and keep one RateLimiter and one TOTPReplayCache per process.
package authn
