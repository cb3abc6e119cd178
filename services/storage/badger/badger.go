package badger

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/services/storage"
)

const (
	// DefaultWatchBufferSize is how many events a watcher may lag behind
	// before it is dropped.
	DefaultWatchBufferSize = 1024
	// DefaultSweepInterval is how often expired items are looked for.
	DefaultSweepInterval = time.Second

	// expiryGrace keeps an expired record in badger for a while after its
	// Expires so that the sweeper still sees it (and can emit a delete event)
	// before badger's own TTL hides it. Badger's TTL then garbage collects
	// whatever the sweeper missed, e.g. while the process was down.
	expiryGrace = time.Minute

	// maxConflictRetries bounds retries of a transaction that lost a
	// conflict. Writes are serialised so conflicts should not happen; the
	// retry is a safety net, not a mechanism.
	maxConflictRetries = 5

	// valueLogGCInterval is how often the on-disk value log is compacted.
	valueLogGCInterval = 5 * time.Minute
)

// errNoop aborts a write transaction that turned out to have nothing to do.
var errNoop = errors.New("no-op")

// Config configures New.
type Config struct {
	// Dir is the data directory. Required unless InMemory.
	Dir string
	// InMemory keeps everything in RAM; nothing survives Close. For tests.
	InMemory bool
	// Logger receives the backend's and badger's logs.
	Logger *slog.Logger
	// SyncWrites fsyncs every write. Off by default (badger's default):
	// writes survive a process crash but the last few may be lost on power
	// loss.
	SyncWrites bool
	// WatchBufferSize is each watcher's channel capacity.
	WatchBufferSize int
	// SweepInterval is how often expired items are deleted and announced.
	SweepInterval time.Duration
}

// CheckAndSetDefaults validates c and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Dir == "" && !c.InMemory {
		return trace.BadParameter("badger storage: Dir is required unless InMemory is set")
	}
	if c.Dir != "" && c.InMemory {
		return trace.BadParameter("badger storage: Dir and InMemory are mutually exclusive")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.WatchBufferSize <= 0 {
		c.WatchBufferSize = DefaultWatchBufferSize
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = DefaultSweepInterval
	}
	return nil
}

// Backend is a storage.Backend on an embedded badger database.
type Backend struct {
	cfg Config
	log *slog.Logger
	db  *badger.DB

	// closeMu guards closed. Every operation holds it for reading, so Close
	// (which takes it for writing) waits for in-flight operations.
	closeMu sync.RWMutex
	closed  bool
	done    chan struct{}
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	// writeMu serialises writes; revision is the last committed revision.
	writeMu  sync.Mutex
	revision int64

	watchMu  sync.Mutex
	watchers map[*watcher]struct{}
}

var _ storage.Backend = (*Backend)(nil)

// New opens (or creates) a badger backend.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	log := cfg.Logger.With("component", "storage/badger")

	db, err := badger.Open(badgerOptions(cfg, log))
	if err != nil {
		return nil, trace.Wrap(err, "opening badger at %q", cfg.Dir)
	}
	rev, err := loadRevision(db)
	if err != nil {
		return nil, trace.NewAggregate(err, db.Close())
	}

	bgCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	b := &Backend{
		cfg:      cfg,
		log:      log,
		db:       db,
		done:     make(chan struct{}),
		cancel:   cancel,
		revision: rev,
		watchers: make(map[*watcher]struct{}),
	}
	b.wg.Add(1)
	go b.runBackground(bgCtx)
	return b, nil
}

// badgerOptions sizes badger for small machines. Badger's defaults assume a
// big server: 64 MiB memtables x5, a 256 MiB block cache and 1 GiB (sparse,
// mmapped at 2 GiB) value log files. Control-plane state is megabytes.
func badgerOptions(cfg Config, log *slog.Logger) badger.Options {
	opts := badger.DefaultOptions(cfg.Dir).
		WithInMemory(cfg.InMemory).
		WithLogger(badgerLogger{log: log}).
		WithSyncWrites(cfg.SyncWrites).
		WithMetricsEnabled(false).
		WithNumGoroutines(2).
		WithNumCompactors(2).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBlockCacheSize(8 << 20).
		WithValueThreshold(64 << 10).
		WithValueLogFileSize(16 << 20).
		WithMemTableSize(16 << 20)
	if cfg.InMemory {
		// In memory every value lives in the memtable and badger caps each
		// value at the value threshold (at most 1 MiB, hence chunking), and
		// one transaction may use at most 15% of the memtable, so it must
		// hold a whole storage.MaxValueLen value. Go hands out fresh zeroed
		// pages for the arena, so unused space costs address space, not RAM.
		opts = opts.WithMemTableSize(32 << 20).WithValueThreshold(1 << 20)
	}
	return opts
}

func loadRevision(db *badger.DB) (int64, error) {
	var rev int64
	err := db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(revisionKey)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return trace.Wrap(err)
		}
		return item.Value(func(v []byte) error {
			if len(v) != 8 {
				return trace.BadParameter("stored revision counter is %d bytes, want 8", len(v))
			}
			rev = int64(binary.BigEndian.Uint64(v))
			return nil
		})
	})
	return rev, trace.Wrap(err, "loading revision counter")
}

// Close stops background work, closes every watcher channel and closes the
// database. Operations after Close fail; Close is idempotent.
func (b *Backend) Close() error {
	b.closeMu.Lock()
	if b.closed {
		b.closeMu.Unlock()
		return nil
	}
	// Taking the write lock waited for in-flight operations; from here on
	// every new one sees closed.
	b.closed = true
	close(b.done)
	b.closeMu.Unlock()

	b.cancel()
	b.wg.Wait()

	b.watchMu.Lock()
	for w := range b.watchers {
		delete(b.watchers, w)
		close(w.ch)
	}
	b.watchMu.Unlock()

	return trace.Wrap(b.db.Close())
}

// enter marks the start of an operation; the returned func must be called at
// its end. It fails once the backend is closed.
func (b *Backend) enter(ctx context.Context) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, trace.Wrap(err)
	}
	b.closeMu.RLock()
	if b.closed {
		b.closeMu.RUnlock()
		return nil, trace.ConnectionProblem(nil, "badger storage is closed")
	}
	return b.closeMu.RUnlock, nil
}

func checkKey(key string) error {
	if !strings.HasPrefix(key, "/") {
		return trace.BadParameter("storage key %q must start with \"/\"", truncate(key))
	}
	if len(key) > storage.MaxKeyLen {
		return trace.BadParameter("storage key is %d bytes, longer than the %d byte limit", len(key), storage.MaxKeyLen)
	}
	return nil
}

func checkPrefix(prefix string) error {
	if !strings.HasPrefix(prefix, "/") {
		return trace.BadParameter("storage prefix %q must start with \"/\"", truncate(prefix))
	}
	if len(prefix) > storage.MaxKeyLen {
		return trace.BadParameter("storage prefix is %d bytes, longer than the %d byte limit", len(prefix), storage.MaxKeyLen)
	}
	return nil
}

func checkItem(item storage.Item) error {
	if err := checkKey(item.Key); err != nil {
		return trace.Wrap(err)
	}
	if len(item.Value) > storage.MaxValueLen {
		return trace.BadParameter("value for %q is %d bytes, larger than the %d byte limit", item.Key, len(item.Value), storage.MaxValueLen)
	}
	return nil
}

// truncate keeps error messages bounded when a caller passes a huge bad key.
func truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "..."
}

// readLive loads the live record at key, with its full value, inside txn.
// Missing and expired records both yield trace.NotFound; chunks is the
// number of continuation chunks stored (needed to overwrite or delete it).
func readLive(txn *badger.Txn, key string, now time.Time) (rec record, chunks uint32, err error) {
	rec, chunks, found, err := loadHead(txn, key)
	if err != nil {
		return record{}, 0, trace.Wrap(err)
	}
	if !found || rec.expired(now) {
		return record{}, chunks, trace.NotFound("key %q is not found", key)
	}
	if err := loadChunks(txn, key, &rec, chunks); err != nil {
		return record{}, 0, trace.Wrap(err)
	}
	return rec, chunks, nil
}

func toItem(key string, rec record) *storage.Item {
	return &storage.Item{
		Key:      key,
		Value:    rec.value,
		Revision: rec.revision,
		Expires:  nanosToExpires(rec.expires),
	}
}

// Get returns the live item at key.
func (b *Backend) Get(ctx context.Context, key string) (*storage.Item, error) {
	if err := checkKey(key); err != nil {
		return nil, trace.Wrap(err)
	}
	exit, err := b.enter(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	defer exit()

	var out *storage.Item
	err = b.db.View(func(txn *badger.Txn) error {
		rec, _, err := readLive(txn, key, time.Now())
		if err != nil {
			return trace.Wrap(err)
		}
		out = toItem(key, rec)
		return nil
	})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return out, nil
}

// Create writes item only if key has no live item.
func (b *Backend) Create(ctx context.Context, item storage.Item) (*storage.Item, error) {
	return b.write(ctx, item, func(old record, found bool, now time.Time) error {
		if found && !old.expired(now) {
			return trace.AlreadyExists("key %q already exists", item.Key)
		}
		return nil
	})
}

// Put writes item unconditionally.
func (b *Backend) Put(ctx context.Context, item storage.Item) (*storage.Item, error) {
	return b.write(ctx, item, nil)
}

// CompareAndSwap replaces the item at replace.Key only if its live revision
// is expectedRevision. A missing (or expired) key is trace.NotFound.
func (b *Backend) CompareAndSwap(ctx context.Context, expectedRevision int64, replace storage.Item) (*storage.Item, error) {
	return b.write(ctx, replace, func(old record, found bool, now time.Time) error {
		if !found || old.expired(now) {
			return trace.NotFound("key %q is not found", replace.Key)
		}
		if old.revision != expectedRevision {
			return trace.CompareFailed("key %q is at revision %d, not the expected %d", replace.Key, old.revision, expectedRevision)
		}
		return nil
	})
}

// write stores item after check (if any) approves the current head record
// (its value is not loaded), in one transaction.
func (b *Backend) write(ctx context.Context, item storage.Item, check func(old record, found bool, now time.Time) error) (*storage.Item, error) {
	if err := checkItem(item); err != nil {
		return nil, trace.Wrap(err)
	}
	exit, err := b.enter(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	defer exit()

	var out *storage.Item
	err = b.update(func(txn *badger.Txn, rev int64) ([]storage.Event, error) {
		now := time.Now()
		old, oldChunks, found, err := loadHead(txn, item.Key)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		if check != nil {
			if err := check(old, found, now); err != nil {
				return nil, trace.Wrap(err)
			}
		}
		rec := record{
			revision: rev,
			expires:  expiresToNanos(item.Expires),
			value:    append([]byte(nil), item.Value...),
		}
		var ttl time.Duration
		if rec.expires != 0 {
			// Never give badger an expiry in the past: the sweeper must get
			// a chance to see the record and announce its deletion.
			ttl = max(item.Expires.Sub(now), 0) + expiryGrace
		}
		if err := storeRecord(txn, item.Key, rec, oldChunks, ttl); err != nil {
			return nil, trace.Wrap(err)
		}
		out = toItem(item.Key, rec)
		evItem := *out
		evItem.Value = append([]byte(nil), rec.value...)
		return []storage.Event{{Type: storage.EventPut, Item: evItem}}, nil
	})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return out, nil
}

// Delete removes the live item at key.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return trace.Wrap(err)
	}
	exit, err := b.enter(ctx)
	if err != nil {
		return trace.Wrap(err)
	}
	defer exit()

	return trace.Wrap(b.update(func(txn *badger.Txn, rev int64) ([]storage.Event, error) {
		rec, chunks, found, err := loadHead(txn, key)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		if !found || rec.expired(time.Now()) {
			return nil, trace.NotFound("key %q is not found", key)
		}
		if err := deleteRecord(txn, key, chunks); err != nil {
			return nil, trace.Wrap(err)
		}
		return []storage.Event{{Type: storage.EventDelete, Item: storage.Item{Key: key, Revision: rev}}}, nil
	}))
}

// update runs fn in a read-write transaction under the write lock, giving it
// the revision this write will carry, and persists the revision counter in
// the same transaction so a reopen never reuses a revision. Events fn returns
// are published after a successful commit, still under the lock, so watchers
// see them in revision order. fn returning errNoop discards the transaction
// without error.
func (b *Backend) update(fn func(txn *badger.Txn, rev int64) ([]storage.Event, error)) error {
	b.writeMu.Lock()
	defer b.writeMu.Unlock()

	for attempt := 0; ; attempt++ {
		rev := b.revision + 1
		events, err := b.tryUpdate(fn, rev)
		if errors.Is(err, badger.ErrConflict) && attempt < maxConflictRetries {
			continue
		}
		if errors.Is(err, errNoop) {
			return nil
		}
		if err != nil {
			return trace.Wrap(err)
		}
		b.revision = rev
		b.publish(events)
		return nil
	}
}

func (b *Backend) tryUpdate(fn func(txn *badger.Txn, rev int64) ([]storage.Event, error), rev int64) ([]storage.Event, error) {
	txn := b.db.NewTransaction(true)
	defer txn.Discard()
	events, err := fn(txn, rev)
	if err != nil {
		return nil, err
	}
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], uint64(rev))
	if err := txn.Set(revisionKey, buf[:]); err != nil {
		return nil, err
	}
	if err := txn.Commit(); err != nil {
		return nil, err
	}
	return events, nil
}

// List returns live items under prefix in key order, at most limit (0 = all).
func (b *Backend) List(ctx context.Context, prefix string, limit int) ([]storage.Item, error) {
	if err := checkPrefix(prefix); err != nil {
		return nil, trace.Wrap(err)
	}
	if limit < 0 {
		return nil, trace.BadParameter("list limit %d is negative", limit)
	}
	exit, err := b.enter(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	defer exit()

	var out []storage.Item
	err = b.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = dataKey(prefix)
		it := txn.NewIterator(opts)
		defer it.Close()
		now := time.Now()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return trace.Wrap(err)
			}
			item := it.Item()
			key := string(item.Key()[len(dataPrefix):])
			rec, chunks, _, err := decodeItem(item, key)
			if err != nil {
				return trace.Wrap(err)
			}
			if rec.expired(now) {
				continue
			}
			if err := loadChunks(txn, key, &rec, chunks); err != nil {
				return trace.Wrap(err)
			}
			out = append(out, *toItem(key, rec))
			if limit > 0 && len(out) >= limit {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return out, nil
}
