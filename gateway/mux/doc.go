// Package mux lets every Sigil protocol share one TCP listener.
//
// The mux peeks at the first bytes of each accepted connection (a TLS ClientHello,
// a PostgreSQL SSLRequest/GSSENCRequest or plain startup packet, an SSH banner),
// under a read deadline and a size limit, and hands the raw connection, with the
// peeked bytes replayed, to the handler registered for that protocol. TLS
// connections are routed further by the ALPN values in the ClientHello.
//
// The mux never terminates TLS: each handler wraps the connection with its own
// tls.Config, so every protocol picks its own certificates and client-certificate
// policy. New protocols plug in by registering a Handler (Handle, HandleALPN,
// HandleDefaultTLS) without changing this package; ConnListener adapts a Handler
// into a net.Listener so an http.Server can sit behind the mux.
package mux
