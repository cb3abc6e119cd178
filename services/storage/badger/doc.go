// Package badger is the embedded storage.Backend, built on BadgerDB. It is the
// default for single-node installs; everything it promises is checked by
// storagetest.Run.
//
// Writes are serialised through one mutex so that revisions, commit order and
// the order of Watch events are all the same order. The control plane writes
// rarely, so this costs little and makes Watch easy to reason about.
//
// Watch guarantees:
//   - events for one backend arrive in revision order;
//   - a watcher that falls more than Config.WatchBufferSize events behind has
//     its channel closed (it is never allowed to stall writers); a closed
//     channel while ctx is still live means "re-sync with List and Watch
//     again";
//   - an item whose Expires passes is removed by a background sweep, which
//     emits an EventDelete roughly Config.SweepInterval after expiry. Get,
//     List and CompareAndSwap hide the item at the exact expiry time, so a
//     reader may see an item disappear slightly before its delete event. Items
//     that expire while the process is down are dropped silently (badger's
//     own TTL, a minute after expiry) and produce no event.
package badger
