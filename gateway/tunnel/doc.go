// Package tunnel serves a local, plain PostgreSQL listener on loopback and
// carries each connection to the Sigil gateway over TLS 1.3 (ALPN
// "sigil-postgres") with a certificate routed to one database.
//
// Applications and connection pools then need no TLS settings and no
// certificates: the tunnel answers their SSLRequest with 'N', forwards the
// StartupMessage unchanged and copies bytes both ways. The client
// certificate comes from a CertSource; RenewingCerts replaces it before it
// expires, and because a certificate only matters during the TLS handshake,
// open connections are never disturbed by a renewal.
package tunnel
