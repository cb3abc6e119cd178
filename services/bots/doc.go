// Package bots turns join tokens into bot and agent identities and keeps
// the state that makes their renewals safe: each renewal must present the
// certificate of the latest generation, and an older one (a copy of the
// identity in someone else's hands) locks the bot. It also tells the
// policy whose access an agent acting on behalf of a person is bounded by.
package bots
