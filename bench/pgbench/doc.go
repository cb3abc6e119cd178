// Command pgbench measures the PostgreSQL gateway against a direct
// connection with the real pgbench: select-only TPS and per-transaction
// latency for direct TLS, the gateway (direct TLS with a routed Sigil
// certificate) and "sigil proxy db --tunnel", plus new connections per
// second. It starts its own sigild and PostgreSQL through
// integration/testenv, reports ratios against the direct leg measured in
// the same run, and writes the report as Markdown. It is a main package so
// that "go test ./..." never runs it; "make bench-pg" does.
package main
