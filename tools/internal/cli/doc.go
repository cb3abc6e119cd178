// Package cli holds what the sigil and sigilctl commands share: output
// formats (--format text|json|yaml) and turning errors, including Connect
// errors from the gateway, into one clear line for the user.
package cli
