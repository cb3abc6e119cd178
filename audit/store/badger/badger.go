package badger

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/gravitational/trace"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/audit/store"
	statebadger "github.com/sigilhq/sigil/services/storage/badger"
)

const (
	// DefaultMaxBatchEvents caps one group commit.
	DefaultMaxBatchEvents = 10000
	// DefaultMaxBatchBytes caps the encoded events of one group commit.
	DefaultMaxBatchBytes = 8 << 20
	// DefaultQueueSize is how many appends may wait for the committer
	// before Append blocks (back-pressure on emitters).
	DefaultQueueSize = 32 * 1024
	// DefaultCommitDelay is how long a non-durable event (db.query) may
	// wait for company before its group is committed.
	DefaultCommitDelay = 50 * time.Millisecond
)

// Field numbers of AuditEvent that the store appends itself; see commit.
const (
	fieldSeq      protowire.Number = 14
	fieldPrevHash protowire.Number = 15
	fieldHash     protowire.Number = 16
)

// Config configures New.
type Config struct {
	// Dir is the audit database directory (not the state database's).
	// Required unless InMemory.
	Dir string
	// InMemory keeps everything in RAM; for tests.
	InMemory bool
	// Signer signs retention checkpoints (the CA's audit key). Required.
	Signer ed25519.PrivateKey
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Clock fills the time of events that have none; defaults to time.Now.
	Clock func() time.Time
	// MaxBatchEvents and MaxBatchBytes cap one group commit.
	MaxBatchEvents int
	MaxBatchBytes  int
	// QueueSize bounds the appends waiting for the committer.
	QueueSize int
	// CommitDelay is how long the committer lets non-durable appends
	// gather before it writes and syncs them; a durable append, a Flush or
	// a half-full queue ends the wait at once. Without it a stream of
	// db.query events costs one committer wake-up, badger write and fsync
	// per handful of queries, which on a small machine is as much CPU as
	// relaying the queries. Zero means DefaultCommitDelay; negative, none.
	CommitDelay time.Duration
}

// CheckAndSetDefaults validates c and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Dir == "" && !c.InMemory {
		return trace.BadParameter("audit store: Dir is required unless InMemory is set")
	}
	if c.Dir != "" && c.InMemory {
		return trace.BadParameter("audit store: Dir and InMemory are mutually exclusive")
	}
	if len(c.Signer) != ed25519.PrivateKeySize {
		return trace.BadParameter("audit store: Signer must be an Ed25519 private key")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.MaxBatchEvents <= 0 {
		c.MaxBatchEvents = DefaultMaxBatchEvents
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if c.QueueSize <= 0 {
		c.QueueSize = DefaultQueueSize
	}
	switch {
	case c.CommitDelay == 0:
		c.CommitDelay = DefaultCommitDelay
	case c.CommitDelay < 0:
		c.CommitDelay = 0
	}
	return nil
}

// pending is one queued Append, or (ev == nil) a Flush marker.
type pending struct {
	// pre is the deterministic encoding of the event without seq,
	// prev_hash and hash; nil for a Flush marker.
	pre []byte
	// idx holds the indexed fields, copied so the caller may reuse its event.
	idx indexFields
	// done receives the commit result; nil for a non-durable append.
	done chan error
}

// Store is the badger store.Store.
type Store struct {
	cfg Config
	log *slog.Logger
	db  *badger.DB

	// closeMu guards closed and sends on queue: Close takes it for writing,
	// so no Append can enqueue after the committer was told to stop.
	closeMu sync.RWMutex
	closed  bool
	queue   chan *pending
	// urgent ends the committer's CommitDelay wait: an append someone
	// waits for, or a queue filling up.
	urgent chan struct{}
	stop   chan struct{}
	wg     sync.WaitGroup

	// failed holds the error that broke the store; Append refuses at once.
	failed atomic.Pointer[error]

	// Owned by the committer goroutine after New.
	lastSeq  uint64
	lastHash string

	durable    atomic.Uint64
	checkpoint atomic.Pointer[sigilv1.AuditCheckpoint]
	pruneMu    sync.Mutex

	notifyMu sync.Mutex
	notify   map[chan uint64]struct{}

	// synced carries written batches from the committer to the syncer.
	synced chan written
	syncWG sync.WaitGroup

	// syncHook replaces DB.Sync in tests that simulate a disk failure.
	syncHook func() error

	// scratch, lens and ix are write's reusable space (committer only).
	scratch []byte
	lens    []int
	ix      postingBuilder
}

var _ store.Store = (*Store)(nil)

// New opens (or creates) the audit store and recovers the chain head.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	log := cfg.Logger.With("component", "audit/store/badger")
	db, err := badger.Open(badgerOptions(cfg, log))
	if err != nil {
		return nil, trace.Wrap(err, "opening audit database at %q", cfg.Dir)
	}
	s := &Store{
		cfg:    cfg,
		log:    log,
		db:     db,
		queue:  make(chan *pending, cfg.QueueSize),
		urgent: make(chan struct{}, 1),
		stop:   make(chan struct{}),
		notify: make(map[chan uint64]struct{}),
		synced: make(chan written, 4),
	}
	if err := s.recover(); err != nil {
		return nil, trace.NewAggregate(err, db.Close())
	}
	s.durable.Store(s.lastSeq)
	s.wg.Add(1)
	go s.run()
	s.syncWG.Add(1)
	go s.syncLoop()
	log.DebugContext(ctx, "Opened audit store.", "last_seq", s.lastSeq)
	return s, nil
}

// badgerOptions sizes badger for a single writer (no conflict detection).
// Chunks of events (tens of KB) exceed the value threshold and go to the
// value log, written once; the LSM holds only their pointers, the posting
// lists and the manifests, which keeps memtable flushes and compactions
// small. Prune reclaims value-log space with RunValueLogGC.
func badgerOptions(cfg Config, log *slog.Logger) badger.Options {
	opts := badger.DefaultOptions(cfg.Dir).
		WithInMemory(cfg.InMemory).
		WithLogger(statebadger.SlogLogger(log)).
		WithSyncWrites(false).
		WithDetectConflicts(false).
		WithMetricsEnabled(false).
		WithNumGoroutines(2).
		WithNumCompactors(2).
		WithNumMemtables(3).
		WithNumLevelZeroTables(4).
		WithNumLevelZeroTablesStall(12).
		WithBlockCacheSize(16 << 20).
		WithValueThreshold(1 << 10).
		WithValueLogFileSize(64 << 20).
		WithMemTableSize(64 << 20).
		WithCompression(options.None)
	if cfg.InMemory {
		// In memory a value may not exceed the value threshold, and one
		// transaction at most 15% of the memtable: both must hold a
		// MaxEventBytes event.
		opts = opts.WithValueThreshold(1 << 20)
	}
	return opts
}

// indexFields are the values an event is indexed by, in indexes order.
type indexFields struct {
	nanos uint64
	vals  [len(indexes)]string
}

func indexFieldsOf(ev *sigilv1.AuditEvent) indexFields {
	f := indexFields{nanos: orderedNanos(ev.GetTime().AsTime())}
	for i, ix := range indexes {
		switch ix.id {
		case idxSession:
			f.vals[i] = ev.SessionId
		case idxUser:
			f.vals[i] = ev.GetIdentity().GetUser()
		case idxRes:
			f.vals[i] = ev.GetResource().GetName()
		case idxType:
			f.vals[i] = ev.Type
		case idxKind:
			f.vals[i] = ev.GetIdentity().GetKind()
		}
	}
	return f
}

func (s *Store) recover() error {
	err := s.db.Update(func(txn *badger.Txn) error {
		if err := checkFormat(txn); err != nil {
			return trace.Wrap(err)
		}
		cp, err := loadCheckpoint(txn)
		if err != nil {
			return trace.Wrap(err)
		}
		if cp != nil {
			s.checkpoint.Store(cp)
			s.lastSeq, s.lastHash = cp.Seq, cp.Hash
		}
		it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: eventPrefix})
		defer it.Close()
		it.Seek(eventKey(^uint64(0)))
		if !it.Valid() {
			return nil
		}
		first, events, err := readChunk(it.Item())
		if err != nil {
			return trace.Wrap(err)
		}
		last := first + uint64(len(events)) - 1
		ev, err := decodeEvent(events[len(events)-1], last)
		if err != nil {
			return trace.Wrap(err)
		}
		if ev.Hash == "" {
			return trace.BadParameter("newest audit event %d has no hash", ev.Seq)
		}
		s.lastSeq, s.lastHash = ev.Seq, ev.Hash
		return nil
	})
	return trace.Wrap(err, "recovering the audit chain head")
}

// checkFormat stamps a new database with formatVersion and refuses one
// written in another layout.
func checkFormat(txn *badger.Txn) error {
	item, err := txn.Get(formatKey)
	if errors.Is(err, badger.ErrKeyNotFound) {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		it.Rewind()
		if it.Valid() {
			return trace.BadParameter("audit database has data but no format version: it was written by an older release")
		}
		return trace.Wrap(txn.Set(formatKey, []byte{formatVersion}))
	}
	if err != nil {
		return trace.Wrap(err)
	}
	return item.Value(func(v []byte) error {
		if len(v) != 1 || v[0] != formatVersion {
			return trace.BadParameter("audit database has format %x, this release reads %d", v, formatVersion)
		}
		return nil
	})
}

func loadCheckpoint(txn *badger.Txn) (*sigilv1.AuditCheckpoint, error) {
	item, err := txn.Get(checkpointKey)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}
	cp := &sigilv1.AuditCheckpoint{}
	err = item.Value(func(v []byte) error { return proto.Unmarshal(v, cp) })
	if err != nil {
		return nil, trace.BadParameter("malformed audit checkpoint: %v", err)
	}
	return cp, nil
}

// readChunk returns a chunk's first seq and its events' encodings (copies,
// safe after the transaction).
func readChunk(item *badger.Item) (uint64, [][]byte, error) {
	first, err := seqOfKey(item.Key(), eventPrefix)
	if err != nil {
		return 0, nil, trace.Wrap(err)
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return 0, nil, trace.Wrap(err)
	}
	events, err := decodeChunk(v)
	if err != nil {
		return 0, nil, trace.BadParameter("audit chunk at event %d is corrupt: %v", first, err)
	}
	if first == 0 || first+uint64(len(events))-1 < first {
		return 0, nil, trace.BadParameter("audit chunk at event %d is out of range", first)
	}
	return first, events, nil
}

// decodeEvent decodes the stored encoding of event seq.
func decodeEvent(raw []byte, seq uint64) (*sigilv1.AuditEvent, error) {
	ev := &sigilv1.AuditEvent{}
	if err := proto.Unmarshal(raw, ev); err != nil {
		return nil, trace.BadParameter("event %d: stored encoding is corrupt: %v", seq, err)
	}
	if ev.Seq != seq {
		return nil, trace.BadParameter("event %d: stored under the wrong seq (%d)", seq, ev.Seq)
	}
	return ev, nil
}

// Append implements store.Store. The store keeps its own copy of ev, so the
// caller may reuse ev at once; ev's seq and hashes are not filled in.
//
// If ctx ends while a durable Append waits for its commit, Append returns
// the context error but the event may still be stored: it was already
// queued. Failing closed on that error is still safe.
func (s *Store) Append(ctx context.Context, ev *sigilv1.AuditEvent, durable bool) error {
	if err := ctx.Err(); err != nil {
		return trace.Wrap(err)
	}
	if err := s.failure(); err != nil {
		return err
	}
	if ev == nil {
		return trace.BadParameter("audit event is nil")
	}
	own := ev
	if needsCopy(ev) {
		own = audit.Clone(ev)
		if err := audit.SetDefaults(own, s.cfg.Clock()); err != nil {
			return trace.Wrap(err)
		}
		own.Seq, own.PrevHash, own.Hash = 0, "", ""
		// The store appends seq and the hashes to the encoding itself,
		// which matches the canonical encoding only if they are the last
		// fields: drop unknown fields, which proto encodes after them.
		own.ProtoReflect().SetUnknown(nil)
		for _, m := range []proto.Message{own.Identity, own.Resource, own.Time} {
			if m != nil && m.ProtoReflect().IsValid() {
				m.ProtoReflect().SetUnknown(nil)
			}
		}
	}
	pre, err := proto.MarshalOptions{Deterministic: true}.Marshal(own)
	if err != nil {
		return trace.Wrap(err, "encoding audit event")
	}
	// Leave room for seq and the two hashes.
	if len(pre)+200 > audit.MaxEventBytes {
		return trace.LimitExceeded("audit event %s is %d bytes, over the %d byte limit", own.Id, len(pre), audit.MaxEventBytes)
	}
	p := &pending{pre: pre, idx: indexFieldsOf(own)}
	if durable {
		p.done = make(chan error, 1)
	}
	if err := s.enqueue(ctx, p); err != nil {
		return trace.Wrap(err)
	}
	if !durable {
		return nil
	}
	select {
	case err := <-p.done:
		return trace.Wrap(err)
	case <-ctx.Done():
		return trace.Wrap(ctx.Err(), "waiting for audit event %s to be stored", own.Id)
	}
}

// needsCopy reports whether ev must be copied before encoding: it lacks
// defaults, carries chain fields a caller may not choose, or has unknown
// fields. Events from audit.StoreEmitter (already a private copy with
// defaults) take the fast path and are only read, never modified.
func needsCopy(ev *sigilv1.AuditEvent) bool {
	if ev.Id == "" || ev.Type == "" || ev.Time == nil || ev.Seq != 0 || ev.PrevHash != "" || ev.Hash != "" {
		return true
	}
	if len(ev.ProtoReflect().GetUnknown()) > 0 || len(ev.Time.ProtoReflect().GetUnknown()) > 0 {
		return true
	}
	if ev.Identity != nil && len(ev.Identity.ProtoReflect().GetUnknown()) > 0 {
		return true
	}
	return ev.Resource != nil && len(ev.Resource.ProtoReflect().GetUnknown()) > 0
}

func (s *Store) failure() error {
	if errp := s.failed.Load(); errp != nil {
		return trace.ConnectionProblem(*errp, "audit store failed earlier and refuses writes: %v", *errp)
	}
	return nil
}

func (s *Store) enqueue(ctx context.Context, p *pending) error {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return trace.ConnectionProblem(nil, "audit store is closed")
	}
	select {
	case s.queue <- p:
	case <-ctx.Done():
		return trace.Wrap(ctx.Err())
	}
	if p.done != nil || len(s.queue) >= cap(s.queue)/2 {
		select {
		case s.urgent <- struct{}{}:
		default:
		}
	}
	return nil
}

// Flush implements store.Store.
func (s *Store) Flush(ctx context.Context) error {
	if err := s.failure(); err != nil {
		return err
	}
	p := &pending{done: make(chan error, 1)}
	if err := s.enqueue(ctx, p); err != nil {
		return trace.Wrap(err)
	}
	select {
	case err := <-p.done:
		return trace.Wrap(err)
	case <-ctx.Done():
		return trace.Wrap(ctx.Err())
	}
}

// run is the committer: it gathers whatever is queued into one batch and
// commits it with a single sync.
func (s *Store) run() {
	defer s.wg.Done()
	defer close(s.synced)
	batch := make([]*pending, 0, 256)
	var delay *time.Timer
	if s.cfg.CommitDelay > 0 {
		delay = time.NewTimer(s.cfg.CommitDelay)
		delay.Stop()
	}
	for {
		select {
		case p := <-s.queue:
			if p.done == nil && delay != nil {
				// Nobody waits for this one: let others join it. While the
				// committer sleeps here, appends are a buffered channel
				// send that wakes no one.
				delay.Reset(s.cfg.CommitDelay)
				select {
				case <-delay.C:
				case <-s.urgent:
					delay.Stop()
				case <-s.stop:
					delay.Stop()
				}
			}
			batch = s.gather(append(batch[:0], p))
			s.commit(batch)
		case <-s.urgent:
			// Usually stale (its append was taken above); else commit.
			if batch = s.gather(batch[:0]); len(batch) > 0 {
				s.commit(batch)
			}
		case <-s.stop:
			// Close let no appender in after closing stop: commit the rest.
			for {
				batch = s.gather(batch[:0])
				if len(batch) == 0 {
					return
				}
				s.commit(batch)
			}
		}
	}
}

// gather adds queued appends to batch, without waiting, up to the caps.
func (s *Store) gather(batch []*pending) []*pending {
	bytes := 0
	for _, p := range batch {
		bytes += len(p.pre)
	}
	for len(batch) < s.cfg.MaxBatchEvents && bytes < s.cfg.MaxBatchBytes {
		select {
		case p := <-s.queue:
			batch = append(batch, p)
			bytes += len(p.pre)
		default:
			return batch
		}
	}
	return batch
}

// written is a batch stored but not yet synced.
type written struct {
	batch   []*pending
	lastSeq uint64
	err     error
}

// commit writes batch and hands it to the syncer, so that the next batch
// is written while this one's sync runs.
func (s *Store) commit(batch []*pending) {
	err := s.failure()
	if err == nil {
		if err = s.write(batch); err != nil {
			s.fail(err)
		}
	}
	s.synced <- written{batch: slices.Clone(batch), lastSeq: s.lastSeq, err: err}
}

func (s *Store) fail(err error) {
	if s.failed.CompareAndSwap(nil, &err) {
		s.log.Error("Audit store write failed; refusing further events.", "error", err)
	}
}

// syncLoop makes written batches durable: one sync covers every batch
// written before it, then all their waiters are acked.
func (s *Store) syncLoop() {
	defer s.syncWG.Done()
	for w := range s.synced {
		group := []written{w}
	more:
		for {
			select {
			case w, ok := <-s.synced:
				if !ok {
					break more
				}
				group = append(group, w)
			default:
				break more
			}
		}
		err := s.failure()
		if err == nil {
			sync := s.db.Sync
			if s.syncHook != nil {
				sync = s.syncHook
			}
			if err = sync(); err != nil {
				err = trace.Wrap(err, "syncing audit batch")
				s.fail(err)
			}
		}
		// Publish the durable head before acking, so that a caller whose
		// Append or Flush returned sees it in LastSeq, Range and Search.
		last := uint64(0)
		for _, w := range group {
			if w.err == nil && err == nil {
				last = max(last, w.lastSeq)
			}
		}
		if last > 0 {
			s.durable.Store(last)
		}
		for _, w := range group {
			werr := w.err
			if werr == nil {
				werr = err
			}
			for _, p := range w.batch {
				if p.done != nil {
					p.done <- werr
				}
			}
		}
		if last > 0 {
			s.broadcast(last)
		}
	}
}

// write assigns seq and hashes in order and writes the batch: its events
// in chunks, its posting lists and its manifest (see encoding.go). The
// chain head only advances when everything succeeded.
//
// The committer is the one serial step of ingest and on two cores the
// pipeline is CPU-bound, so write avoids per-event allocations: events are
// encoded back to back into one scratch buffer and copied once into their
// chunk, and the chain hash reuses one digest.
func (s *Store) write(batch []*pending) error {
	seq := s.lastSeq
	h, err := newChainHasher(s.lastHash)
	if err != nil {
		return trace.Wrap(err)
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	var (
		scratch    = s.scratch[:0]
		lens       = s.lens[:0]
		chunkFirst = seq + 1
	)
	flushChunk := func() error {
		if len(lens) == 0 {
			return nil
		}
		v := encodeChunkLens(make([]byte, 0, len(scratch)+len(lens)*3+11), lens, scratch)
		if err := wb.Set(eventKey(chunkFirst), v); err != nil {
			return trace.Wrap(err, "writing audit events %d to %d", chunkFirst, chunkFirst+uint64(len(lens))-1)
		}
		chunkFirst += uint64(len(lens))
		scratch, lens = scratch[:0], lens[:0]
		return nil
	}
	ix := &s.ix
	defer ix.reset()
	for _, p := range batch {
		if p.pre == nil {
			continue
		}
		seq++
		// Worst case of what the store appends: seq and two hex hashes.
		if len(lens) == maxChunkEvents || len(lens) > 0 && len(scratch)+len(p.pre)+fullOverhead > maxChunkBytes {
			if err := flushChunk(); err != nil {
				return trace.Wrap(err)
			}
		}
		// The deterministic encoding orders fields by number and seq,
		// prev_hash and hash are the last three, so appending them to the
		// encoding of the rest yields exactly the canonical encoding
		// (audit.CanonicalEncoding) and then the full stored encoding.
		start := len(scratch)
		scratch = append(scratch, p.pre...)
		scratch = protowire.AppendTag(scratch, fieldSeq, protowire.VarintType)
		scratch = protowire.AppendVarint(scratch, seq)
		if h.prevHex != "" {
			scratch = protowire.AppendTag(scratch, fieldPrevHash, protowire.BytesType)
			scratch = protowire.AppendString(scratch, h.prevHex)
		}
		// Hash the canonical part (up to seq) before appending prev_hash:
		// hash it from the stored copy, whose prefix is the canonical one.
		hash := h.next(scratch[start : start+len(p.pre)+protowire.SizeTag(fieldSeq)+protowire.SizeVarint(seq)])
		scratch = protowire.AppendTag(scratch, fieldHash, protowire.BytesType)
		scratch = protowire.AppendString(scratch, hash)
		lens = append(lens, len(scratch)-start)
		ix.add(p.idx, seq)
	}
	if err := flushChunk(); err != nil {
		return trace.Wrap(err)
	}
	// Keep the scratch space for the next batch unless one huge batch
	// grew it past a chunk's worth.
	if cap(scratch) <= 2*maxChunkBytes {
		s.scratch, s.lens = scratch[:0], lens[:0]
	}
	if first := s.lastSeq + 1; seq >= first {
		keys, err := ix.write(wb)
		if err != nil {
			return trace.Wrap(err, "indexing audit events %d to %d", first, seq)
		}
		if err := wb.Set(manifestKey(first), encodeManifest(first, seq, keys)); err != nil {
			return trace.Wrap(err, "writing audit manifest %d", first)
		}
	}
	if err := wb.Flush(); err != nil {
		return trace.Wrap(err, "writing audit batch")
	}
	s.lastSeq, s.lastHash = seq, h.prevHex
	return nil
}

// fullOverhead bounds what write appends to an event's encoding: the seq
// field and the prev_hash and hash fields (hex SHA-256).
const fullOverhead = 1 + binary.MaxVarintLen64 + 2*(2+2*sha256.Size)

// chainHasher computes audit.ChainHash for consecutive events without
// decoding the previous hash from hex or allocating a digest per event.
type chainHasher struct {
	d       hash.Hash
	prev    []byte // raw previous hash
	prevHex string
	sum     [sha256.Size]byte
	hex     [2 * sha256.Size]byte
}

func newChainHasher(prevHex string) (*chainHasher, error) {
	prev, err := hex.DecodeString(prevHex)
	if err != nil {
		return nil, trace.BadParameter("audit chain head hash %q is not hex", prevHex)
	}
	return &chainHasher{d: sha256.New(), prev: prev, prevHex: prevHex}, nil
}

// next returns hex(SHA-256(canonical || prev)), the audit.ChainHash of the
// event, and makes it the previous hash.
func (h *chainHasher) next(canonical []byte) string {
	h.d.Reset()
	h.d.Write(canonical)
	h.d.Write(h.prev)
	sum := h.d.Sum(h.sum[:0])
	hex.Encode(h.hex[:], sum)
	h.prev = append(h.prev[:0], sum...)
	h.prevHex = string(h.hex[:])
	return h.prevHex
}

// postingBuilder groups a batch's index entries by (index, bucket).
type postingBuilder struct {
	groups [len(indexes) * maxBuckets][]posting
}

// reset empties the builder for the next batch, keeping its slices (the
// committer reuses one builder, so steady-state batches do not regrow them).
func (b *postingBuilder) reset() {
	for g := range b.groups {
		clear(b.groups[g])
		b.groups[g] = b.groups[g][:0]
	}
}

// postingEntryBytes is a typical encoded posting entry (time delta, seq
// offset, dictionary index), used to size a list's buffer.
const postingEntryBytes = 8

// maxBuckets is the largest bucket count in indexes.
const maxBuckets = 16

func (b *postingBuilder) add(f indexFields, seq uint64) {
	for i, ix := range indexes {
		v := f.vals[i]
		if v == "" && ix.id != idxTime {
			continue
		}
		g := i*maxBuckets + int(bucketOf(v, ix.buckets))
		b.groups[g] = append(b.groups[g], posting{nanos: f.nanos, seq: seq, value: v})
	}
}

// write stores the posting lists, newest first, cut where a list would
// span more than maxPostingSpan or hold more than maxPostingEntries, and
// returns their keys.
func (b *postingBuilder) write(wb *badger.WriteBatch) ([][]byte, error) {
	var keys [][]byte
	for g, entries := range b.groups {
		if len(entries) == 0 {
			continue
		}
		prefix := append(slices.Clone(postingPrefix), indexes[g/maxBuckets].id)
		prefix = binary.BigEndian.AppendUint16(prefix, uint16(g%maxBuckets))
		slices.SortFunc(entries, newer)
		for len(entries) > 0 {
			n := 1
			for n < len(entries) && n < maxPostingEntries && entries[0].nanos-entries[n].nanos <= maxPostingSpan {
				n++
			}
			h, v := encodePosting(make([]byte, 0, 64+n*postingEntryBytes), entries[:n])
			key := postingKey(prefix, h.maxNanos, h.minSeq, h.span)
			if err := wb.Set(key, v); err != nil {
				return nil, trace.Wrap(err)
			}
			keys = append(keys, key)
			entries = entries[n:]
		}
	}
	return keys, nil
}

// LastSeq implements store.Store.
func (s *Store) LastSeq() uint64 { return s.durable.Load() }

// Notify implements store.Store.
func (s *Store) Notify(ctx context.Context) <-chan uint64 {
	ch := make(chan uint64, 1)
	s.closeMu.RLock()
	closed := s.closed
	s.closeMu.RUnlock()
	if closed {
		close(ch)
		return ch
	}
	s.notifyMu.Lock()
	s.notify[ch] = struct{}{}
	s.notifyMu.Unlock()
	go func() {
		select {
		case <-ctx.Done():
		case <-s.stop:
		}
		s.notifyMu.Lock()
		if _, ok := s.notify[ch]; ok {
			delete(s.notify, ch)
			close(ch)
		}
		s.notifyMu.Unlock()
	}()
	return ch
}

// broadcast replaces any unread value with seq so a slow subscriber sees
// the newest head without holding up the committer.
func (s *Store) broadcast(seq uint64) {
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	for ch := range s.notify {
		select {
		case <-ch:
		default:
		}
		select {
		case ch <- seq:
		default:
		}
	}
}

// Close implements store.Store: queued events are committed first.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	s.closeMu.Unlock()
	s.wg.Wait()
	s.syncWG.Wait()

	s.notifyMu.Lock()
	for ch := range s.notify {
		delete(s.notify, ch)
		close(ch)
	}
	s.notifyMu.Unlock()
	return trace.Wrap(s.db.Close())
}

// enter marks the start of a read; the returned func ends it. Close waits
// for reads in flight before closing the database.
func (s *Store) enter(ctx context.Context) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, trace.Wrap(err)
	}
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return nil, trace.ConnectionProblem(nil, "audit store is closed")
	}
	return s.closeMu.RUnlock, nil
}
