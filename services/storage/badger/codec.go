package badger

import (
	"encoding/binary"
	"errors"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/gravitational/trace"
)

// On-disk layout. A record lives under its head key, "d" + caller key:
//
//	[0]      codecVersion
//	[1:9]    revision, big endian
//	[9:17]   expiry as unix nanoseconds, big endian; 0 means "never"
//	[17:21]  number of continuation chunks, big endian
//	[21:]    the first chunkSize bytes of the caller's value
//
// Values longer than chunkSize continue under chunk keys, "c" + caller key +
// "\x00" + 4-byte big-endian chunk index (1-based). Chunking exists because
// badger's in-memory mode caps a single value at 1 MiB, below
// storage.MaxValueLen. The leading version byte lets the format change later
// without guessing what old records mean.
const (
	codecVersion byte = 1
	headerLen         = 1 + 8 + 8 + 4
	chunkSize         = 512 << 10
)

var (
	// The prefixes namespace caller keys inside badger so internal keys
	// (chunks, the revision counter) never collide with them.
	dataPrefix  = []byte("d")
	chunkPrefix = []byte("c")
	revisionKey = []byte("m/revision")
)

type record struct {
	revision int64
	expires  int64 // unix nanos, 0 = never
	value    []byte
}

// expired reports whether r is past its expiry at now.
func (r record) expired(now time.Time) bool {
	return r.expires != 0 && r.expires <= now.UnixNano()
}

func dataKey(key string) []byte {
	k := make([]byte, 0, len(dataPrefix)+len(key))
	k = append(k, dataPrefix...)
	return append(k, key...)
}

func chunkKey(key string, idx uint32) []byte {
	k := make([]byte, 0, len(chunkPrefix)+len(key)+5)
	k = append(k, chunkPrefix...)
	k = append(k, key...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint32(k, idx)
}

func numChunks(valueLen int) uint32 {
	if valueLen <= chunkSize {
		return 0
	}
	return uint32((valueLen - 1) / chunkSize)
}

// decodeHead parses a head value. The returned first chunk aliases buf.
func decodeHead(buf []byte) (rec record, chunks uint32, err error) {
	if len(buf) < headerLen {
		return record{}, 0, trace.BadParameter("stored record is %d bytes, shorter than its %d byte header", len(buf), headerLen)
	}
	if buf[0] != codecVersion {
		return record{}, 0, trace.BadParameter("stored record has unsupported format version %d", buf[0])
	}
	rec = record{
		revision: int64(binary.BigEndian.Uint64(buf[1:9])),
		expires:  int64(binary.BigEndian.Uint64(buf[9:17])),
		value:    buf[headerLen:],
	}
	return rec, binary.BigEndian.Uint32(buf[17:21]), nil
}

// loadHead reads key's head record without its continuation chunks, expired
// or not. found is false if there is no record.
func loadHead(txn *badger.Txn, key string) (rec record, chunks uint32, found bool, err error) {
	item, err := txn.Get(dataKey(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return record{}, 0, false, nil
	}
	if err != nil {
		return record{}, 0, false, trace.Wrap(err)
	}
	return decodeItem(item, key)
}

func decodeItem(item *badger.Item, key string) (rec record, chunks uint32, found bool, err error) {
	buf, err := item.ValueCopy(nil)
	if err != nil {
		return record{}, 0, false, trace.Wrap(err)
	}
	rec, chunks, err = decodeHead(buf)
	if err != nil {
		return record{}, 0, false, trace.Wrap(err, "decoding %q", key)
	}
	return rec, chunks, true, nil
}

// loadChunks appends key's continuation chunks to rec.value.
func loadChunks(txn *badger.Txn, key string, rec *record, chunks uint32) error {
	if chunks == 0 {
		return nil
	}
	value := make([]byte, len(rec.value), len(rec.value)+int(chunks)*chunkSize)
	copy(value, rec.value)
	for i := uint32(1); i <= chunks; i++ {
		item, err := txn.Get(chunkKey(key, i))
		if err != nil {
			return trace.Wrap(err, "reading chunk %d of %q", i, key)
		}
		err = item.Value(func(v []byte) error {
			value = append(value, v...)
			return nil
		})
		if err != nil {
			return trace.Wrap(err)
		}
	}
	rec.value = value
	return nil
}

// storeRecord writes rec under key, replacing a previous record that had
// oldChunks continuation chunks. ttl, if non-zero, is badger's own expiry for
// every entry of the record.
func storeRecord(txn *badger.Txn, key string, rec record, oldChunks uint32, ttl time.Duration) error {
	chunks := numChunks(len(rec.value))
	first := rec.value[:min(len(rec.value), chunkSize)]
	head := make([]byte, headerLen+len(first))
	head[0] = codecVersion
	binary.BigEndian.PutUint64(head[1:9], uint64(rec.revision))
	binary.BigEndian.PutUint64(head[9:17], uint64(rec.expires))
	binary.BigEndian.PutUint32(head[17:21], chunks)
	copy(head[headerLen:], first)

	set := func(k, v []byte) error {
		e := badger.NewEntry(k, v)
		if ttl > 0 {
			e = e.WithTTL(ttl)
		}
		return sanitize(txn.SetEntry(e))
	}
	if err := set(dataKey(key), head); err != nil {
		return trace.Wrap(err)
	}
	for i := uint32(1); i <= chunks; i++ {
		start := int(i) * chunkSize
		part := rec.value[start:min(len(rec.value), start+chunkSize)]
		if err := set(chunkKey(key, i), part); err != nil {
			return trace.Wrap(err)
		}
	}
	for i := chunks + 1; i <= oldChunks; i++ {
		if err := txn.Delete(chunkKey(key, i)); err != nil {
			return trace.Wrap(err)
		}
	}
	return nil
}

func deleteRecord(txn *badger.Txn, key string, chunks uint32) error {
	if err := txn.Delete(dataKey(key)); err != nil {
		return trace.Wrap(err)
	}
	for i := uint32(1); i <= chunks; i++ {
		if err := txn.Delete(chunkKey(key, i)); err != nil {
			return trace.Wrap(err)
		}
	}
	return nil
}

// sanitize drops everything after the first line of a badger error: some
// (e.g. size-limit errors) append a hex dump of the value, which may be
// secret and must not reach logs.
func sanitize(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		return trace.Errorf("badger: %s", strings.TrimSpace(msg[:i]))
	}
	return err
}

func expiresToNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func nanosToExpires(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
