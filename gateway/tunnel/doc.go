// Package tunnel serves a local, plain database listener on loopback and
// carries each connection to the Sigil gateway over TLS 1.3 with a
// certificate routed to one database: ALPN "sigil-postgres" for
// PostgreSQL, "sigil-mysql" for MySQL/MariaDB.
//
// Applications and connection pools then need no TLS settings and no
// certificates. For PostgreSQL the tunnel answers their SSLRequest with
// 'N', forwards the StartupMessage unchanged and copies bytes both ways.
// MySQL servers speak first, so a MySQL connection is dialled at once and
// relayed; the gateway's handshake offers no CLIENT_SSL inside the
// tunnel, and the tunnel clears that flag should it ever be set, so a
// local client never tries to start TLS a second time.
//
// The client certificate comes from a CertSource; RenewingCerts replaces
// it before it expires, and because a certificate only matters during the
// TLS handshake, open connections are never disturbed by a renewal.
package tunnel
