// Package audit defines the audit Event every Sigil component records (the
// sigil.v1.AuditEvent protobuf, aliased here), the Emitter interface they
// record it through, and the one place the hash chain is defined: the
// canonical encoding, Hash, and the streaming Verifier that sigilctl and the
// tests use to prove the log was not altered.
//
// Events must never carry secrets: callers must not put passwords, tokens,
// private keys, TOTP codes or session cookies into any field. As a backstop
// StoreEmitter redacts Details values whose key looks secret (see Redact),
// but that deny-list is a safety net, not a licence.
package audit
