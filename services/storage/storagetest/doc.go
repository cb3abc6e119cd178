// Package storagetest is the conformance suite every storage.Backend must
// pass. A backend's own tests call Run with a constructor for a fresh, empty
// backend.
package storagetest
