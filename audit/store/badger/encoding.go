package badger

// On-disk layout (format version 1). Every value written by this file
// starts with formatVersion so a later layout can be told apart; every
// decoder bounds each length it reads, so corrupt data yields an error and
// never a panic or a huge allocation.
//
// Integers in keys are big-endian so that byte order is numeric order;
// times are Unix nanoseconds offset by 2^63 (orderedNanos) so that pre-1970
// sorts first.
//
//	c/format                 formatVersion (one byte); refuses other layouts
//	c/checkpoint             signed AuditCheckpoint of the last pruned event
//	e/<firstSeq>             chunk: up to maxChunkEvents consecutive events
//	                         of one batch, each in its stored (full) encoding
//	p/<idx><bucket><maxNanos><minSeq><span>
//	                         posting list: the (time, seq, value) of the
//	                         events of one batch whose index idx value hashes
//	                         to bucket, newest first
//	m/<firstSeq>             manifest of one batch: its last seq and the keys
//	                         of its posting lists, so Prune can delete them
//
// A batch writes one key per chunk, one per non-empty (index, bucket) run
// and one manifest, instead of seven keys per event: with a few hundred
// events per group commit that is a few dozen keys.
//
// Posting lists are bucketed rather than keyed by value so that a batch of
// events from many users, sessions and resources still writes few keys; a
// search decodes the bucket's lists and keeps the entries of its value
// (through the list's dictionary, so other values cost one varint each).
// A list spans at most maxPostingSpan of event time: its key's maxNanos
// then bounds where a search for entries before some time must start
// (maxNanos < t + maxPostingSpan), even when a batch carries events with
// out-of-order times; the span in the key lets a search skip a list wholly
// newer than its cursor without reading the value.

import (
	"encoding/binary"
	"slices"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/audit"
)

const formatVersion byte = 1

var (
	formatKey     = []byte("c/format")
	checkpointKey = []byte("c/checkpoint")
	eventPrefix   = []byte("e/")
	postingPrefix = []byte("p/")
	manifestPref  = []byte("m/")
)

// Indexes, in the order Search prefers them (most selective first). The
// bucket counts are part of the format: changing one needs a new version.
const (
	idxSession byte = 's'
	idxUser    byte = 'u'
	idxRes     byte = 'r'
	idxType    byte = 'y'
	idxKind    byte = 'k'
	idxTime    byte = 't' // every event, value ""
)

var indexes = [...]struct {
	id      byte
	buckets int
}{
	{idxTime, 1},
	{idxSession, 16},
	{idxUser, 16},
	{idxRes, 16},
	{idxType, 4},
	{idxKind, 1},
}

const (
	// maxChunkEvents and maxChunkBytes close a chunk; a single event over
	// maxChunkBytes gets a chunk of its own.
	maxChunkEvents = 64
	maxChunkBytes  = 32 << 10
	// maxPostingSpan bounds the event-time span of one posting list.
	maxPostingSpan = uint64(time.Second)
	// maxPostingEntries bounds the entries of one posting list.
	maxPostingEntries = 4096
	// maxManifestKeys bounds the posting keys of one manifest.
	maxManifestKeys = 1 << 20
	// maxIndexValue bounds one dictionary value of a posting list.
	maxIndexValue = audit.MaxEventBytes
	// maxKeyLen bounds one key listed in a manifest.
	maxKeyLen = 1 << 16
	// postingKeyTail is maxNanos, minSeq and span after the bucket.
	postingKeyTail = 8 + 8 + 4
)

func orderedNanos(t time.Time) uint64 { return uint64(t.UnixNano()) ^ (1 << 63) }

func eventKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(slices.Clone(eventPrefix), seq)
}

func manifestKey(firstSeq uint64) []byte {
	return binary.BigEndian.AppendUint64(slices.Clone(manifestPref), firstSeq)
}

// seqOfKey returns the seq of an e/ or m/ key.
func seqOfKey(key, prefix []byte) (uint64, error) {
	if len(key) != len(prefix)+8 {
		return 0, trace.BadParameter("malformed audit key %q", key)
	}
	return binary.BigEndian.Uint64(key[len(prefix):]), nil
}

// bucketOf hashes an index value to its bucket (FNV-1a, fixed by the format).
func bucketOf(value string, buckets int) uint16 {
	if buckets <= 1 {
		return 0
	}
	h := uint32(2166136261)
	for i := 0; i < len(value); i++ {
		h ^= uint32(value[i])
		h *= 16777619
	}
	return uint16(h % uint32(buckets))
}

// postingPrefixFor is the key prefix of index idx's lists for value.
func postingPrefixFor(idx byte, value string) []byte {
	buckets := 1
	for _, ix := range indexes {
		if ix.id == idx {
			buckets = ix.buckets
		}
	}
	b := append(slices.Clone(postingPrefix), idx)
	return binary.BigEndian.AppendUint16(b, bucketOf(value, buckets))
}

func postingKey(prefix []byte, maxNanos, minSeq uint64, span uint32) []byte {
	b := make([]byte, 0, len(prefix)+postingKeyTail)
	b = append(b, prefix...)
	b = binary.BigEndian.AppendUint64(b, maxNanos)
	b = binary.BigEndian.AppendUint64(b, minSeq)
	return binary.BigEndian.AppendUint32(b, span)
}

// postingHead is what a posting key says about its list.
type postingHead struct {
	maxNanos, minSeq uint64
	span             uint32
}

func parsePostingKey(key []byte, prefixLen int) (postingHead, error) {
	if len(key) != prefixLen+postingKeyTail {
		return postingHead{}, trace.BadParameter("malformed audit posting key %q", key)
	}
	t := key[prefixLen:]
	h := postingHead{
		maxNanos: binary.BigEndian.Uint64(t),
		minSeq:   binary.BigEndian.Uint64(t[8:]),
		span:     binary.BigEndian.Uint32(t[16:]),
	}
	if uint64(h.span) > maxPostingSpan || h.span > 0 && uint64(h.span) > h.maxNanos {
		return postingHead{}, trace.BadParameter("audit posting key %q: span %d out of range", key, h.span)
	}
	return h, nil
}

// reader decodes varints and byte strings, remembering the first error.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = trace.BadParameter(format, args...)
	}
}

func (r *reader) uvarint(what string, limit uint64) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("truncated or overlong %s", what)
		return 0
	}
	if v > limit {
		r.fail("%s %d over the limit of %d", what, v, limit)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(what string, n uint64) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail("%s of %d bytes is truncated", what, n)
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) version(what string) {
	if len(r.b) == 0 || r.b[0] != formatVersion {
		r.fail("%s has an unknown format version", what)
		return
	}
	r.b = r.b[1:]
}

// encodeChunk encodes events (stored encodings of consecutive seqs):
// version, count, count lengths, then the encodings back to back. The
// length table lets a reader find one event without parsing the others.
func encodeChunk(dst []byte, events [][]byte) []byte {
	dst = append(dst, formatVersion)
	dst = binary.AppendUvarint(dst, uint64(len(events)))
	for _, ev := range events {
		dst = binary.AppendUvarint(dst, uint64(len(ev)))
	}
	for _, ev := range events {
		dst = append(dst, ev...)
	}
	return dst
}

// encodeChunkLens is encodeChunk for events stored back to back in
// events, with lengths lens.
func encodeChunkLens(dst []byte, lens []int, events []byte) []byte {
	dst = append(dst, formatVersion)
	dst = binary.AppendUvarint(dst, uint64(len(lens)))
	for _, l := range lens {
		dst = binary.AppendUvarint(dst, uint64(l))
	}
	return append(dst, events...)
}

// decodeChunk splits a chunk into its events' encodings, which alias v.
func decodeChunk(v []byte) ([][]byte, error) {
	r := reader{b: v}
	r.version("audit chunk")
	n := r.uvarint("audit chunk event count", maxChunkEvents)
	if r.err == nil && n == 0 {
		r.fail("empty audit chunk")
	}
	if r.err != nil {
		return nil, r.err
	}
	lens := make([]uint64, n)
	total := uint64(0)
	for i := range lens {
		lens[i] = r.uvarint("audit chunk event length", audit.MaxEventBytes)
		total += lens[i]
	}
	if r.err == nil && total != uint64(len(r.b)) {
		r.fail("audit chunk holds %d bytes of events, its table says %d", len(r.b), total)
	}
	if r.err != nil {
		return nil, r.err
	}
	out := make([][]byte, n)
	for i, l := range lens {
		out[i] = r.bytes("audit event", l)
	}
	return out, r.err
}

// posting is one entry of a posting list.
type posting struct {
	nanos, seq uint64
	value      string
}

// newer orders postings newest first: by time, then seq.
func newer(a, b posting) int {
	switch {
	case a.nanos != b.nanos:
		if a.nanos > b.nanos {
			return -1
		}
		return 1
	case a.seq > b.seq:
		return -1
	case a.seq < b.seq:
		return 1
	}
	return 0
}

// encodePosting encodes entries (newest first, within maxPostingSpan, at
// most maxPostingEntries) as version, dictionary of distinct values, count,
// then per entry: time below the previous entry's (the first's below
// maxNanos, so 0), seq above minSeq, and dictionary index. It returns the
// key's head with the value.
func encodePosting(dst []byte, entries []posting) (postingHead, []byte) {
	h := postingHead{maxNanos: entries[0].nanos, minSeq: entries[0].seq}
	dict := make(map[string]uint64, min(len(entries), 64))
	order := make([]string, 0, min(len(entries), 64))
	for _, e := range entries {
		h.minSeq = min(h.minSeq, e.seq)
		if _, ok := dict[e.value]; !ok {
			dict[e.value] = uint64(len(order))
			order = append(order, e.value)
		}
	}
	h.span = uint32(h.maxNanos - entries[len(entries)-1].nanos)
	dst = append(dst, formatVersion)
	dst = binary.AppendUvarint(dst, uint64(len(order)))
	for _, v := range order {
		dst = binary.AppendUvarint(dst, uint64(len(v)))
		dst = append(dst, v...)
	}
	dst = binary.AppendUvarint(dst, uint64(len(entries)))
	prev := h.maxNanos
	for _, e := range entries {
		dst = binary.AppendUvarint(dst, prev-e.nanos)
		dst = binary.AppendUvarint(dst, e.seq-h.minSeq)
		dst = binary.AppendUvarint(dst, dict[e.value])
		prev = e.nanos
	}
	return h, dst
}

// decodePosting calls fn, newest first, for each entry whose value is want
// (every entry when all). It checks the list against its key's head: order,
// span and seq bounds.
func decodePosting(v []byte, h postingHead, want string, all bool, fn func(nanos, seq uint64)) error {
	r := reader{b: v}
	r.version("audit posting list")
	nd := r.uvarint("audit posting dictionary size", maxPostingEntries)
	match := int64(-1)
	for i := uint64(0); i < nd && r.err == nil; i++ {
		val := r.bytes("audit posting value", r.uvarint("audit posting value length", maxIndexValue))
		if r.err == nil && match < 0 && string(val) == want {
			match = int64(i)
		}
	}
	n := r.uvarint("audit posting entry count", maxPostingEntries)
	if r.err == nil && (n == 0 || nd == 0) {
		r.fail("empty audit posting list")
	}
	if r.err != nil {
		return r.err
	}
	if match < 0 && !all {
		return nil
	}
	low := h.maxNanos - uint64(h.span)
	nanos, lastSeq := h.maxNanos, uint64(0)
	for i := uint64(0); i < n; i++ {
		d := r.uvarint("audit posting time delta", nanos-low)
		off := r.uvarint("audit posting seq offset", ^h.minSeq)
		di := r.uvarint("audit posting value index", nd-1)
		if r.err != nil {
			return r.err
		}
		nanos -= d
		seq := h.minSeq + off
		if i > 0 && d == 0 && seq >= lastSeq {
			return trace.BadParameter("audit posting list is not in newest-first order")
		}
		lastSeq = seq
		if all || int64(di) == match {
			fn(nanos, seq)
		}
	}
	if len(r.b) != 0 {
		return trace.BadParameter("audit posting list has %d trailing bytes", len(r.b))
	}
	return nil
}

// encodeManifest lists a batch's last seq and posting keys.
func encodeManifest(firstSeq, lastSeq uint64, keys [][]byte) []byte {
	n := 1 + 2*binary.MaxVarintLen64
	for _, k := range keys {
		n += len(k) + binary.MaxVarintLen32
	}
	dst := make([]byte, 0, n)
	dst = append(dst, formatVersion)
	dst = binary.AppendUvarint(dst, lastSeq-firstSeq)
	dst = binary.AppendUvarint(dst, uint64(len(keys)))
	for _, k := range keys {
		dst = binary.AppendUvarint(dst, uint64(len(k)))
		dst = append(dst, k...)
	}
	return dst
}

func decodeManifest(v []byte, firstSeq uint64) (uint64, [][]byte, error) {
	r := reader{b: v}
	r.version("audit manifest")
	last := firstSeq + r.uvarint("audit manifest seq count", ^firstSeq)
	n := r.uvarint("audit manifest key count", min(maxManifestKeys, uint64(len(v))))
	if r.err != nil {
		return 0, nil, r.err
	}
	keys := make([][]byte, 0, n)
	for range n {
		k := r.bytes("audit manifest key", r.uvarint("audit manifest key length", maxKeyLen))
		if r.err == nil && !hasPrefix(k, postingPrefix) {
			r.fail("audit manifest lists a key outside the posting lists")
		}
		keys = append(keys, k)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("audit manifest has %d trailing bytes", len(r.b))
	}
	if r.err != nil {
		return 0, nil, r.err
	}
	return last, keys, nil
}

func hasPrefix(b, prefix []byte) bool {
	return len(b) >= len(prefix) && string(b[:len(prefix)]) == string(prefix)
}
