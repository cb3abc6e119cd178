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
//
// Under a role with write_approval, a write runs only with a human
// approval of that exact statement (see approval.go): a simple Query is
// decided as it arrives, an extended-protocol statement at each Bind, over
// its text and bound parameters, and the approved portal may run once.
package postgres
