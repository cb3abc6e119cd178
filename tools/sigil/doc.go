// Command sigil is the Sigil user CLI: it signs up and logs in to a
// gateway, keeps the resulting short-lived certificates in a profile under
// $SIGIL_HOME (default ~/.sigil) and shows what they grant.
//
// The commands are built in run so that tests drive them in-process with
// their own stdin/stdout/stderr and terminal.
package main
