// Command mysqlbench measures the MySQL gateway against a direct
// connection to MariaDB with a Go load driver (go-sql-driver/mysql): 8
// clients, each on its own connection, run a select-only point query
// (server-side prepared and plain text) on three legs: direct TLS 1.3,
// the gateway with a routed Sigil certificate, and "sigil proxy db
// --tunnel"; it also measures new connections per second. It starts its
// own sigild and MariaDB through integration/testenv, reports QPS as a
// ratio against the direct leg measured in the same run plus the added
// p50/p99 latency, and writes the report as Markdown. It is a main
// package so that "go test ./..." never runs it; "make bench-mysql" does.
package main
