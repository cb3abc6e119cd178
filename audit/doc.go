// Package audit defines the audit Event every Sigil component records and the
// Emitter interface they record it through. This package holds the simple
// sinks (JSON-lines file, fan-out, discard); the durable hash-chained store
// implements the same Emitter.
//
// Events must never carry secrets: callers must not put passwords, tokens,
// private keys, TOTP codes or session cookies into any field. As a backstop
// the FileEmitter redacts Details values whose key looks secret (see
// Redact), but that deny-list is a safety net, not a licence.
package audit
