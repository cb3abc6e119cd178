// Command sshbench measures the SSH gateway against a direct connection
// with real OpenSSH: scp throughput of one large file, and the time to
// open a session (ssh NODE true), for stock scp/ssh straight to sshd, to
// the gateway port as LOGIN@NODE, and through "sigil proxy ssh" as the
// ProxyCommand. It starts its own sigild and sshd through
// integration/testenv (as root: sshd switches to a test login), reports
// ratios against the direct leg measured in the same run, and writes the
// report as Markdown. It is a main package so that "go test ./..." never
// runs it; "make bench-ssh" does.
package main
