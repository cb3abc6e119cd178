// Package mysql is the gateway's MySQL/MariaDB engine. MySQL servers speak
// first, so the engine owns a listener of its own: it sends the initial
// handshake, upgrades the client to TLS on its SSLRequest, starts a
// session from the client certificate and connects upstream over TLS with
// a DB-CA certificate for the routed db user. The same exchange also runs
// inside a TLS connection on the main port with ALPN "sigil-mysql" (the
// local tunnel): there the client has already spoken TLS, so the
// handshake offers no CLIENT_SSL and the identity comes from the outer
// TLS connection.
//
// Client commands are forwarded byte for byte; COM_QUERY,
// COM_STMT_PREPARE/EXECUTE, COM_INIT_DB, COM_CHANGE_USER,
// COM_RESET_CONNECTION and KILL are looked at. Server packets are copied
// in large chunks; a side tap follows only packet headers. Clients are
// expected not to pipeline commands that have a response (the MySQL
// protocol is request/response), which is what lets the engine answer a
// refused command with an ERR packet of its own.
//
// Under a role with write_approval, a write runs only with a human
// approval of that exact statement (see approval.go): a COM_QUERY is
// decided over its whole text, a prepared statement at each
// COM_STMT_EXECUTE over its text and bound values.
//
// Connection ids: the handshake carries a gateway connection id (from
// 2^30 up, so it never collides with the small thread ids servers hand
// out). "KILL [QUERY|CONNECTION] n" is allowed whatever the statements
// grant when n is a gateway id or an upstream thread id (what
// CONNECTION_ID() returns) of a live session of the same Sigil user on
// the same database; it runs on the client's own upstream connection with
// the upstream thread id. Any other id gets "Unknown thread id".
package mysql
