// Package export forwards the audit log to SIEMs: a JSON-lines file sink
// with size-based rotation and a webhook sink that POSTs batches as NDJSON.
//
// The audit store is the durable queue. Each sink is driven by a Forwarder
// that tails the store by sequence number from a cursor persisted in a
// small file, so an unreachable SIEM never blocks the gateway (forwarders
// only read) and loses nothing while the backlog stays within audit
// retention. Should retention prune events a forwarder has not delivered
// yet, the forwarder logs an error naming the lost seq range, reports it
// in Status and continues from the first event still stored.
//
// Delivery is at-least-once: a crash between a successful Write and the
// cursor save re-delivers that one batch. The webhook sink sends an
// Idempotency-Key ("<first seq>-<last seq>") so receivers that honour it
// get exactly-once; every event also carries its seq and id.
package export
