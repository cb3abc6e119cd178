// Package postgres is the gateway's PostgreSQL engine: it terminates the
// client's TLS (SSLRequest or libpq 17 direct TLS), starts a session from
// the client certificate, connects upstream with a DB-CA certificate for
// the routed db user, and relays the protocol, classifying every statement
// before the database sees it and recording it in the audit log.
//
// Client frames are forwarded byte for byte; only Query, Parse, Bind,
// Execute, Close, Sync, FunctionCall and Terminate are looked at. Server
// frames are copied in large chunks; a side tap follows only the frame
// boundaries so that refusals are inserted between whole messages, in the
// order the client expects them.
package postgres
