package badger

import (
	"context"
	"errors"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/services/storage"
)

func (b *Backend) runBackground(ctx context.Context) {
	defer b.wg.Done()
	sweep := time.NewTicker(b.cfg.SweepInterval)
	defer sweep.Stop()
	var gc <-chan time.Time
	if !b.cfg.InMemory {
		t := time.NewTicker(valueLogGCInterval)
		defer t.Stop()
		gc = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			if err := b.sweepExpired(ctx); err != nil && ctx.Err() == nil {
				b.log.WarnContext(ctx, "Failed to sweep expired items.", "error", err)
			}
		case <-gc:
			b.runValueLogGC(ctx)
		}
	}
}

// sweepExpired deletes items whose Expires has passed and tells watchers.
// Only keys are scanned: badger's own expiry (Expires + expiryGrace, in
// seconds) is in the key index, so values are read only for real candidates.
func (b *Backend) sweepExpired(ctx context.Context) error {
	exit, err := b.enter(ctx)
	if err != nil {
		return nil // closed or closing; nothing to do.
	}
	defer exit()

	now := time.Now()
	horizon := uint64(now.Add(expiryGrace).Unix())
	var candidates []string
	err = b.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.Prefix = dataPrefix
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			if exp := item.ExpiresAt(); exp != 0 && exp <= horizon {
				candidates = append(candidates, string(item.Key()[len(dataPrefix):]))
			}
		}
		return nil
	})
	if err != nil {
		return trace.Wrap(err)
	}

	var errs []error
	for _, key := range candidates {
		if ctx.Err() != nil {
			break
		}
		errs = append(errs, b.deleteIfExpired(key))
	}
	return trace.NewAggregate(errs...)
}

// deleteIfExpired re-checks key under the write lock (it may have been
// rewritten since the scan) and deletes it only if it is still expired.
func (b *Backend) deleteIfExpired(key string) error {
	return trace.Wrap(b.update(func(txn *badger.Txn, rev int64) ([]storage.Event, error) {
		rec, chunks, found, err := loadHead(txn, key)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		if !found || !rec.expired(time.Now()) {
			return nil, errNoop
		}
		if err := deleteRecord(txn, key, chunks); err != nil {
			return nil, trace.Wrap(err)
		}
		return []storage.Event{{Type: storage.EventDelete, Item: storage.Item{Key: key, Revision: rev}}}, nil
	}))
}

// runValueLogGC reclaims value log space; badger never does it on its own.
func (b *Backend) runValueLogGC(ctx context.Context) {
	exit, err := b.enter(ctx)
	if err != nil {
		return
	}
	defer exit()
	for ctx.Err() == nil {
		// Each successful run rewrites one file; stop when none is worth it.
		if err := b.db.RunValueLogGC(0.5); err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) {
				b.log.WarnContext(ctx, "Value log garbage collection failed.", "error", err)
			}
			return
		}
	}
}
