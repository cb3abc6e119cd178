package badger

import (
	"container/heap"
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
	// positionLen is the (time, seq) of page tokens.
	positionLen = 16
)

// chooseIndex picks the most selective index the query can use; all means
// every entry of the lists is a candidate (the time index).
func chooseIndex(q store.Query) (idx byte, value string, all bool) {
	switch {
	case q.SessionID != "":
		return idxSession, q.SessionID, false
	case q.User != "":
		return idxUser, q.User, false
	case q.Resource != "":
		return idxRes, q.Resource, false
	case len(q.Types) == 1:
		return idxType, q.Types[0], false
	case q.Kind != "":
		return idxKind, q.Kind, false
	}
	return idxTime, "", true
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
	// Candidates are strictly before cursor.
	cursor := position{nanos: ^uint64(0), seq: ^uint64(0)}
	if !q.Until.IsZero() {
		// Seq 0 is never assigned: this is just above every entry
		// strictly before Until.
		cursor = position{nanos: orderedNanos(q.Until)}
	}
	if q.PageToken != "" {
		tok, err := decodeToken(q.PageToken)
		if err != nil {
			return nil, "", trace.Wrap(err)
		}
		if tok.less(cursor) {
			cursor = tok
		}
	}
	var since uint64
	if !q.Since.IsZero() {
		since = orderedNanos(q.Since)
	}
	pruned := uint64(0)
	if cp := s.checkpoint.Load(); cp != nil {
		pruned = cp.Seq
	}
	durable := s.durable.Load()
	idx, value, all := chooseIndex(q)

	var (
		out   []*sigilv1.AuditEvent
		token string
	)
	err = s.db.View(func(txn *badger.Txn) error {
		m := newMerger(txn, postingPrefixFor(idx, value), value, all, cursor, since, pruned)
		defer m.close()
		events := newChunkReader(txn)
		defer events.close()
		scanned, last := 0, ""
		for {
			p, ok, err := m.next(ctx)
			if err != nil || !ok {
				return trace.Wrap(err)
			}
			if len(out) == limit || scanned == maxSearchScan {
				// More candidates remain: resume after the last one examined.
				token = last
				return nil
			}
			scanned++
			last = encodeToken(p)
			if p.seq > durable {
				continue
			}
			ev, err := events.get(p.seq)
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
	})
	if err != nil {
		return nil, "", trace.Wrap(err)
	}
	return out, token, nil
}

// position orders index entries: by time, then seq.
type position struct{ nanos, seq uint64 }

func (p position) less(o position) bool {
	return p.nanos < o.nanos || p.nanos == o.nanos && p.seq < o.seq
}

// merger yields the candidates of one index value newest first, merging
// the posting lists of many batches whose times may overlap.
type merger struct {
	it        *badger.Iterator
	prefixLen int
	value     string
	all       bool
	cursor    position
	since     uint64
	pruned    uint64
	lists     listHeap
	last      position
	decoded   int
}

func newMerger(txn *badger.Txn, prefix []byte, value string, all bool, cursor position, since, pruned uint64) *merger {
	m := &merger{
		it:        txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: prefix}),
		prefixLen: len(prefix),
		value:     value,
		all:       all,
		cursor:    cursor,
		since:     since,
		pruned:    pruned,
	}
	// Lists with maxNanos above cursor+maxPostingSpan hold only entries
	// above the cursor; reverse Seek lands on the greatest key <= seek.
	top := cursor.nanos
	if top <= ^uint64(0)-maxPostingSpan {
		top += maxPostingSpan
	} else {
		top = ^uint64(0)
	}
	m.it.Seek(postingKey(prefix, top, ^uint64(0), ^uint32(0)))
	return m
}

func (m *merger) close() { m.it.Close() }

// peek returns the head of the next list that may hold candidates.
func (m *merger) peek() (postingHead, bool, error) {
	for ; m.it.Valid(); m.it.Next() {
		h, err := parsePostingKey(m.it.Item().Key(), m.prefixLen)
		if err != nil {
			return postingHead{}, false, trace.Wrap(err)
		}
		if h.maxNanos < m.since {
			// Every later list is older still.
			return postingHead{}, false, nil
		}
		if h.maxNanos-uint64(h.span) > m.cursor.nanos {
			continue // wholly above the cursor: already returned
		}
		return h, true, nil
	}
	return postingHead{}, false, nil
}

func (m *merger) next(ctx context.Context) (position, bool, error) {
	for {
		h, ok, err := m.peek()
		if err != nil {
			return position{}, false, trace.Wrap(err)
		}
		// No unread list holds an entry newer than its maxNanos.
		if len(m.lists) > 0 && (!ok || m.lists[0][0].nanos > h.maxNanos) {
			p := m.pop()
			if p == m.last {
				continue // a list written twice (interrupted Prune rewrite)
			}
			m.last = p
			return p, true, nil
		}
		if !ok {
			return position{}, false, nil
		}
		if m.decoded++; m.decoded%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return position{}, false, trace.Wrap(err)
			}
		}
		var list []position
		err = m.it.Item().Value(func(v []byte) error {
			return decodePosting(v, h, m.value, m.all, func(nanos, seq uint64) {
				p := position{nanos: nanos, seq: seq}
				if p.less(m.cursor) && nanos >= m.since && seq > m.pruned {
					list = append(list, p)
				}
			})
		})
		if err != nil {
			return position{}, false, trace.Wrap(err, "audit posting list %x", m.it.Item().Key())
		}
		if len(list) > 0 {
			heap.Push(&m.lists, list)
		}
		m.it.Next()
	}
}

func (m *merger) pop() position {
	top := m.lists[0]
	p := top[0]
	if len(top) == 1 {
		heap.Pop(&m.lists)
	} else {
		m.lists[0] = top[1:]
		heap.Fix(&m.lists, 0)
	}
	return p
}

// listHeap holds non-empty newest-first lists, the one with the newest
// head on top.
type listHeap [][]position

func (h listHeap) Len() int           { return len(h) }
func (h listHeap) Less(i, j int) bool { return h[j][0].less(h[i][0]) }
func (h listHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *listHeap) Push(x any)        { *h = append(*h, x.([]position)) }
func (h *listHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func encodeToken(p position) string {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, positionLen), p.nanos)
	return base64.RawURLEncoding.EncodeToString(binary.BigEndian.AppendUint64(b, p.seq))
}

func decodeToken(tok string) (position, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) != positionLen {
		return position{}, trace.BadParameter("malformed audit search page token")
	}
	p := position{nanos: binary.BigEndian.Uint64(b), seq: binary.BigEndian.Uint64(b[8:])}
	if p.seq == 0 {
		return position{}, trace.BadParameter("malformed audit search page token")
	}
	return p, nil
}

// chunkReader finds single events, keeping the last chunk read: results
// newest first often come from the same chunk.
type chunkReader struct {
	it     *badger.Iterator
	first  uint64
	events [][]byte
}

func newChunkReader(txn *badger.Txn) *chunkReader {
	return &chunkReader{it: txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: eventPrefix})}
}

func (c *chunkReader) close() { c.it.Close() }

func (c *chunkReader) get(seq uint64) (*sigilv1.AuditEvent, error) {
	if seq < c.first || seq-c.first >= uint64(len(c.events)) {
		c.events = nil
		c.it.Seek(eventKey(seq))
		if !c.it.Valid() {
			return nil, trace.NotFound("audit event %d not found", seq)
		}
		first, events, err := readChunk(c.it.Item())
		if err != nil {
			return nil, trace.Wrap(err)
		}
		c.first, c.events = first, events
		if seq-first >= uint64(len(events)) {
			return nil, trace.NotFound("audit event %d not found", seq)
		}
	}
	return decodeEvent(c.events[seq-c.first], seq)
}

// chunkStart is the key to start a forward scan of the chunks at, so that
// the first chunk seen holds from (if it is stored).
func chunkStart(txn *badger.Txn, from uint64) []byte {
	it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: eventPrefix})
	defer it.Close()
	if it.Seek(eventKey(from)); it.Valid() {
		return it.Item().KeyCopy(nil)
	}
	return eventKey(from)
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
		it := txn.NewIterator(badger.IteratorOptions{Prefix: eventPrefix, PrefetchValues: true, PrefetchSize: 8})
		defer it.Close()
		for it.Seek(chunkStart(txn, from)); it.Valid(); it.Next() {
			first, events, err := readChunk(it.Item())
			if err != nil {
				return trace.Wrap(err)
			}
			for i, raw := range events {
				seq := first + uint64(i)
				switch {
				case seq < from:
					continue
				case seq > durable || len(out) == limit:
					return nil
				}
				ev, err := decodeEvent(raw, seq)
				if err != nil {
					return trace.Wrap(err)
				}
				out = append(out, ev)
			}
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

// pruneChunk bounds the keys deleted per write batch.
const pruneChunk = 10000

// Prune implements store.Store. It first stores (and syncs) the signed
// checkpoint of the last event to delete, then deletes the events and the
// posting lists of wholly pruned batches: a crash in between leaves extra
// old events that Range and Search hide and the next Prune deletes, never
// a chain without a trusted start. The posting lists of a batch cut by the
// checkpoint stay until a later Prune takes the rest of it; Search skips
// their pruned entries.
func (s *Store) Prune(ctx context.Context, before time.Time) (int, error) {
	done, err := s.enter(ctx)
	if err != nil {
		return 0, trace.Wrap(err)
	}
	defer done()
	s.pruneMu.Lock()
	defer s.pruneMu.Unlock()

	durable := s.durable.Load()
	old := s.checkpoint.Load()
	from := uint64(1)
	if old != nil {
		from = old.Seq + 1
	}
	// Find the last event of the prefix older than before.
	var last *sigilv1.AuditEvent
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: eventPrefix, PrefetchValues: true, PrefetchSize: 8})
		defer it.Close()
		for it.Seek(chunkStart(txn, from)); it.Valid(); it.Next() {
			first, events, err := readChunk(it.Item())
			if err != nil {
				return trace.Wrap(err)
			}
			for i, raw := range events {
				seq := first + uint64(i)
				if seq < from {
					continue
				}
				if seq > durable {
					return nil
				}
				ev, err := decodeEvent(raw, seq)
				if err != nil {
					return trace.Wrap(err)
				}
				if !ev.GetTime().AsTime().Before(before) {
					return nil
				}
				last = ev
			}
		}
		return nil
	})
	if err != nil {
		return 0, trace.Wrap(err)
	}
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
		n, more, err := s.deleteEvents(ctx, cp.Seq)
		deleted += n
		if err != nil {
			return deleted, trace.Wrap(err)
		}
		if !more {
			break
		}
	}
	for {
		more, err := s.deleteBatches(ctx, cp.Seq)
		if err != nil {
			return deleted, trace.Wrap(err)
		}
		if !more {
			break
		}
	}
	if err := s.db.Sync(); err != nil {
		return deleted, trace.Wrap(err)
	}
	s.collectValueLog()
	return deleted, nil
}

// collectValueLog rewrites value-log files that are mostly pruned chunks,
// a bounded number per Prune; failing to reclaim space is not an error.
func (s *Store) collectValueLog() {
	if s.cfg.InMemory {
		return
	}
	for range 16 {
		if err := s.db.RunValueLogGC(0.5); err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) {
				s.log.Debug("Audit value log GC stopped.", "error", err)
			}
			return
		}
	}
}

// deleteEvents deletes the chunks of events up to upTo, about pruneChunk
// events at a time; a chunk that also holds later events is rewritten
// without the pruned ones. more reports that another call has work left.
func (s *Store) deleteEvents(ctx context.Context, upTo uint64) (n int, more bool, err error) {
	if err := ctx.Err(); err != nil {
		return 0, false, trace.Wrap(err)
	}
	var (
		keys    [][]byte
		partial []byte // key of a chunk cut by upTo
		rest    []byte // that chunk without its pruned events
		restKey []byte
	)
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: eventPrefix, PrefetchValues: true, PrefetchSize: 8})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if n >= pruneChunk {
				more = true
				return nil
			}
			first, events, err := readChunk(it.Item())
			if err != nil {
				return trace.Wrap(err)
			}
			if first > upTo {
				return nil
			}
			lastSeq := first + uint64(len(events)) - 1
			if lastSeq <= upTo {
				keys = append(keys, it.Item().KeyCopy(nil))
				n += len(events)
				continue
			}
			keep := events[upTo-first+1:]
			partial, restKey = it.Item().KeyCopy(nil), eventKey(upTo+1)
			rest = encodeChunk(nil, keep)
			n += len(events) - len(keep)
			return nil
		}
		return nil
	})
	if err != nil || n == 0 {
		return 0, false, trace.Wrap(err)
	}
	if err := s.deleteKeys(keys); err != nil {
		return 0, false, trace.Wrap(err, "deleting pruned audit events")
	}
	if partial != nil {
		// One transaction, so the chunk's later events are never lost or
		// stored twice.
		err := s.db.Update(func(txn *badger.Txn) error {
			if err := txn.Set(restKey, rest); err != nil {
				return trace.Wrap(err)
			}
			return trace.Wrap(txn.Delete(partial))
		})
		if err != nil {
			return 0, false, trace.Wrap(err, "rewriting a pruned audit chunk")
		}
	}
	return n, more, nil
}

// deleteBatches deletes the manifests and posting lists of batches wholly
// up to upTo, about pruneChunk keys at a time.
func (s *Store) deleteBatches(ctx context.Context, upTo uint64) (more bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, trace.Wrap(err)
	}
	var keys, manifests [][]byte
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: manifestPref, PrefetchValues: true, PrefetchSize: 8})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if len(keys) >= pruneChunk {
				more = true
				return nil
			}
			first, err := seqOfKey(it.Item().Key(), manifestPref)
			if err != nil {
				return trace.Wrap(err)
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return trace.Wrap(err)
			}
			last, postings, err := decodeManifest(v, first)
			if err != nil {
				return trace.BadParameter("audit manifest %d is corrupt: %v", first, err)
			}
			if last > upTo {
				return nil
			}
			keys = append(keys, postings...)
			manifests = append(manifests, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil {
		return false, trace.Wrap(err)
	}
	// Manifests last: a crash in between leaves them to find the rest.
	if err := s.deleteKeys(append(keys, manifests...)); err != nil {
		return false, trace.Wrap(err, "deleting pruned audit index entries")
	}
	return more, nil
}

func (s *Store) deleteKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return nil
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return trace.Wrap(err)
		}
	}
	return trace.Wrap(wb.Flush())
}
