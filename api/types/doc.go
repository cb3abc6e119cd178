// Package types holds the Go shapes of every Sigil resource (role, user,
// database, node, token, lock, ...). They are shared by the server, the CLIs
// and any future Terraform provider, so the JSON/YAML field names here are the
// public contract described in SPEC.md.
//
// Wire form: a resource travels as the whole resource encoded as JSON
// (kind, version, metadata, spec), exactly the same shape as its YAML. Use
// MarshalResource / UnmarshalResource for JSON and ParseYAML for user files.
package types
