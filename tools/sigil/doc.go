// Command sigil is the Sigil user CLI: it signs up and logs in to a
// gateway, keeps the resulting short-lived certificates in a profile under
// $SIGIL_HOME (default ~/.sigil) and shows what they grant. The db commands
// get certificates routed to one database (kept under <profile>/db/NAME/)
// for psql and libpq clients, and "proxy db --tunnel" serves a database as
// plain PostgreSQL on loopback through gateway/tunnel.
//
// The commands are built in run so that tests drive them in-process with
// their own stdin/stdout/stderr and terminal.
package main
