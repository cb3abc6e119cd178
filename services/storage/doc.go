// Package storage defines Backend, the key/value interface every piece of
// control-plane state is kept in, with an embedded badger implementation
// (storage/badger) and a conformance suite (storage/storagetest) that every
// implementation must pass.
package storage
