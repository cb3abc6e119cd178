// Package process turns a configuration into a running all-in-one daemon:
// storage, CAs, services, the Connect API, the web console and the gateway
// listener with its protocol mux, plus the local admin identity that
// sigilctl --data-dir uses on the same host.
package process
