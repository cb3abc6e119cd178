// Package version holds the build version shared by the sigild, sigilctl
// and sigil binaries (set with -ldflags "-X ...version.Version=v1.2.3").
package version

// Version is the release version of the binaries.
var Version = "v0.1.0-dev"
