// Package session is the protocol-independent part of a gateway connection:
// it proves who the client is from its certificate, checks the route, locks
// and policy, records the durable session start, watches locks for the life
// of the session and mints the upstream client certificates. Protocol
// engines (gateway/postgres, later MySQL and SSH) only speak their wire
// protocol on top of a Session.
package session
