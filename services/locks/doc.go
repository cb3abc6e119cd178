// Package locks stores locks (on a user, role or bot) and answers whether
// an identity is locked. The API checks on every call and login; the
// gateway's live-session watch builds on Watch later.
package locks
