// Package testenv starts real Sigil processes for end-to-end tests: it
// builds (or reuses, via $SIGIL_BIN_DIR) the binaries, starts sigild on a
// free loopback port in a temp data dir, and runs the CLIs against it.
package testenv
