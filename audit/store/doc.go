// Package store keeps the audit log: an append-only, hash-chained sequence
// of events with group commit, indexed search and retention that leaves
// the chain verifiable through a signed checkpoint.
package store
