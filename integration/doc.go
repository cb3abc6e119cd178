// Package integration holds end-to-end tests that run the real binaries
// (sigild, sigilctl, sigil) against each other, and later real PostgreSQL,
// MariaDB, OpenSSH and Chromium, through the testenv harness.
package integration
