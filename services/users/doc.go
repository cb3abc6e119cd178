// Package users manages local users: the user resources, their
// credentials (argon2id password hashes, TOTP secrets; never part of the
// resource) and one-time signup tokens.
package users
