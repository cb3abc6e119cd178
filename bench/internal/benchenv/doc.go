// Package benchenv is what the gateway benchmarks under bench/ share: a
// testing.TB for main packages so they can use integration/testenv, the
// Sigil side of the setup (daemon, user, routed certificate, tunnel, a
// direct client certificate), and the statistics and report helpers, so
// that every benchmark computes its ratios and percentiles the same way.
package benchenv
