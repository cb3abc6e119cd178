// Package certid is the one place that writes an identity into a
// certificate and reads it back: X.509 (a single versioned protobuf
// extension) and SSH (sigil-* certificate extensions). Every other package
// gets an Identity from here, so the two encodings cannot drift apart.
package certid
