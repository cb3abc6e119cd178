package badger

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/gravitational/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/audit/store"
)

const (
	// DefaultSearchLimit and MaxSearchLimit bound a Search page.
	DefaultSearchLimit = 100
	MaxSearchLimit     = 1000
	// maxSearchScan bounds the index entries one Search page examines, so
	// a query whose remaining filters rarely match cannot scan the whole
	// log in one call; it returns a short page and a token instead.
	maxSearchScan = 100000
	// DefaultRangeLimit and MaxRangeLimit bound a Range call.
	DefaultRangeLimit = 1000
	MaxRangeLimit     = 10000
	// positionLen is the (time, seq) suffix of index keys and page tokens.
	positionLen = 16
)

// chooseIndex picks the most selective index the query can use.
func chooseIndex(q store.Query) []byte {
	switch {
	case q.SessionID != "":
		return valuePrefix(idxSession, q.SessionID)
	case q.User != "":
		return valuePrefix(idxUser, q.User)
	case q.Resource != "":
		return valuePrefix(idxResource, q.Resource)
	case len(q.Types) == 1:
		return valuePrefix(idxType, q.Types[0])
	case q.Kind != "":
		return valuePrefix(idxKind, q.Kind)
	}
	return append([]byte(nil), timePrefix...)
}

func matches(ev *sigilv1.AuditEvent, q store.Query) bool {
	switch {
	case q.User != "" && ev.GetIdentity().GetUser() != q.User,
		q.Kind != "" && ev.GetIdentity().GetKind() != q.Kind,
		len(q.Types) > 0 && !slices.Contains(q.Types, ev.Type),
		q.Resource != "" && ev.GetResource().GetName() != q.Resource,
		q.SessionID != "" && ev.SessionId != q.SessionID,
		q.Success != nil && ev.Success != *q.Success:
		return false
	}
	return true
}

// Search implements store.Store. Since is inclusive and Until exclusive.
// The page token is the (time, seq) position of the last entry examined,
// so it stays valid while new events arrive. A token may lead to an empty
// last page.
func (s *Store) Search(ctx context.Context, q store.Query) ([]*sigilv1.AuditEvent, string, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, "", trace.Wrap(err)
	}
	defer done()
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultSearchLimit
	}
	limit = min(limit, MaxSearchLimit)
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Until.After(q.Since) {
		return nil, "", trace.BadParameter("audit search: until %v is not after since %v", q.Until, q.Since)
	}

	prefix := chooseIndex(q)
	seek := append(slices.Clone(prefix), bytes.Repeat([]byte{0xff}, positionLen)...)
	if !q.Until.IsZero() {
		// Seq 0 is never assigned, so this is just above every entry
		// strictly before Until.
		seek = appendPosition(slices.Clone(prefix), orderedNanos(q.Until), 0)
	}
	if q.PageToken != "" {
		nanos, seq, err := decodeToken(q.PageToken)
		if err != nil {
			return nil, "", trace.Wrap(err)
		}
		// Reverse Seek lands on the greatest key <= seek: the entry just
		// after the token's.
		if fromToken := appendPosition(slices.Clone(prefix), nanos, seq-1); bytes.Compare(fromToken, seek) < 0 {
			seek = fromToken
		}
	}
	var since uint64
	if !q.Since.IsZero() {
		since = orderedNanos(q.Since)
	}
	durable := s.durable.Load()

	var (
		out   []*sigilv1.AuditEvent
		token string
	)
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: prefix})
		defer it.Close()
		scanned, last := 0, ""
		for it.Seek(seek); it.Valid(); it.Next() {
			key := it.Item().Key()
			if len(key) < len(prefix)+positionLen {
				continue
			}
			pos := key[len(key)-positionLen:]
			nanos := binary.BigEndian.Uint64(pos)
			seq := binary.BigEndian.Uint64(pos[8:])
			if nanos < since {
				break
			}
			if len(out) == limit || scanned == maxSearchScan {
				// More candidates remain: resume after the last one examined.
				token = last
				return nil
			}
			scanned++
			last = encodeToken(nanos, seq)
			if seq > durable {
				continue
			}
			if scanned%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return trace.Wrap(err)
				}
			}
			ev, err := getEvent(txn, seq)
			if trace.IsNotFound(err) {
				// Pruned between reading the index and the event.
				continue
			}
			if err != nil {
				return trace.Wrap(err)
			}
			if matches(ev, q) {
				out = append(out, ev)
			}
		}
		return nil
	})
	if err != nil {
		return nil, "", trace.Wrap(err)
	}
	return out, token, nil
}

func encodeToken(nanos, seq uint64) string {
	return base64.RawURLEncoding.EncodeToString(appendPosition(nil, nanos, seq))
}

func decodeToken(tok string) (uint64, uint64, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) != positionLen {
		return 0, 0, trace.BadParameter("malformed audit search page token")
	}
	seq := binary.BigEndian.Uint64(b[8:])
	if seq == 0 {
		return 0, 0, trace.BadParameter("malformed audit search page token")
	}
	return binary.BigEndian.Uint64(b), seq, nil
}

func getEvent(txn *badger.Txn, seq uint64) (*sigilv1.AuditEvent, error) {
	item, err := txn.Get(eventKey(seq))
	if err != nil {
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil, trace.NotFound("audit event %d not found", seq)
		}
		return nil, trace.Wrap(err)
	}
	return decodeItem(item)
}

// Range implements store.Store. Events below the checkpoint are never
// returned, even while a Prune is still deleting them, so a reader always
// sees a chain that starts right after the checkpoint.
func (s *Store) Range(ctx context.Context, from uint64, limit int) ([]*sigilv1.AuditEvent, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	defer done()
	if limit <= 0 {
		limit = DefaultRangeLimit
	}
	limit = min(limit, MaxRangeLimit)
	from = max(from, 1)
	if cp := s.checkpoint.Load(); cp != nil {
		from = max(from, cp.Seq+1)
	}
	durable := s.durable.Load()
	var out []*sigilv1.AuditEvent
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: eventPrefix, PrefetchValues: true, PrefetchSize: 100})
		defer it.Close()
		for it.Seek(eventKey(from)); it.Valid() && len(out) < limit; it.Next() {
			ev, err := decodeItem(it.Item())
			if err != nil {
				return trace.Wrap(err)
			}
			if ev.Seq > durable {
				return nil
			}
			out = append(out, ev)
		}
		return nil
	})
	return out, trace.Wrap(err)
}

// Checkpoint implements store.Store.
func (s *Store) Checkpoint(ctx context.Context) (*sigilv1.AuditCheckpoint, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	defer done()
	cp := s.checkpoint.Load()
	if cp == nil {
		return nil, nil
	}
	return proto.Clone(cp).(*sigilv1.AuditCheckpoint), nil
}

// pruneChunk bounds the events deleted per write batch.
const pruneChunk = 10000

// Prune implements store.Store. It first stores (and syncs) the signed
// checkpoint of the last event to delete, then deletes the events and their
// index entries: a crash in between leaves extra old events that Range
// hides and the next Prune deletes, never a chain without a trusted start.
func (s *Store) Prune(ctx context.Context, before time.Time) (int, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return 0, trace.Wrap(err)
	}
	defer done()
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()

	durable := s.durable.Load()
	// Find the last event of the prefix older than before.
	var last *sigilv1.AuditEvent
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: eventPrefix, PrefetchValues: true, PrefetchSize: 100})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			ev, err := decodeItem(it.Item())
			if err != nil {
				return trace.Wrap(err)
			}
			if ev.Seq > durable || !ev.GetTime().AsTime().Before(before) {
				return nil
			}
			last = ev
		}
		return nil
	})
	if err != nil {
		return 0, trace.Wrap(err)
	}
	old := s.checkpoint.Load()
	if last != nil && (old == nil || last.Seq > old.Seq) {
		cp := &sigilv1.AuditCheckpoint{Seq: last.Seq, Hash: last.Hash, Time: timestamppb.New(last.GetTime().AsTime())}
		if err := audit.SignCheckpoint(cp, s.cfg.Signer); err != nil {
			return 0, trace.Wrap(err)
		}
		raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(cp)
		if err != nil {
			return 0, trace.Wrap(err)
		}
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(checkpointKey, raw) }); err != nil {
			return 0, trace.Wrap(err, "storing audit checkpoint")
		}
		if err := s.db.Sync(); err != nil {
			return 0, trace.Wrap(err, "syncing audit checkpoint")
		}
		s.checkpoint.Store(cp)
	}
	cp := s.checkpoint.Load()
	if cp == nil {
		return 0, nil
	}
	// Delete everything up to the checkpoint, including leftovers of an
	// interrupted earlier Prune.
	deleted := 0
	for {
		n, err := s.deleteChunk(ctx, cp.Seq)
		deleted += n
		if err != nil {
			return deleted, trace.Wrap(err)
		}
		if n < pruneChunk {
			break
		}
	}
	return deleted, trace.Wrap(s.db.Sync())
}

// deleteChunk deletes up to pruneChunk events with seq <= upTo.
func (s *Store) deleteChunk(ctx context.Context, upTo uint64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, trace.Wrap(err)
	}
	var keys [][]byte
	n := 0
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: eventPrefix, PrefetchValues: true, PrefetchSize: 100})
		defer it.Close()
		for it.Rewind(); it.Valid() && n < pruneChunk; it.Next() {
			ev, err := decodeItem(it.Item())
			if err != nil {
				return trace.Wrap(err)
			}
			if ev.Seq > upTo {
				return nil
			}
			keys = append(keys, it.Item().KeyCopy(nil))
			keys = append(keys, indexKeys(indexFieldsOf(ev), ev.Seq)...)
			n++
		}
		return nil
	})
	if err != nil || n == 0 {
		return 0, trace.Wrap(err)
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return 0, trace.Wrap(err)
		}
	}
	if err := wb.Flush(); err != nil {
		return 0, trace.Wrap(err, "deleting pruned audit events")
	}
	return n, nil
}
