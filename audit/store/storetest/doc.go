// Package storetest is the conformance suite every audit store.Store
// implementation must pass (badger today, PostgreSQL later).
package storetest
