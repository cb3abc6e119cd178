package badger

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/sigilhq/sigil/audit"
)

func TestIndexBucketsFit(t *testing.T) {
	for _, ix := range indexes {
		if ix.buckets < 1 || ix.buckets > maxBuckets {
			t.Errorf("index %c has %d buckets, want 1..%d", ix.id, ix.buckets, maxBuckets)
		}
	}
}

func TestChunkRoundTrip(t *testing.T) {
	events := [][]byte{[]byte("one"), bytes.Repeat([]byte("x"), 300), []byte("three")}
	got, err := decodeChunk(encodeChunk(nil, events))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(events) {
		t.Fatalf("decoded %d events, want %d", len(got), len(events))
	}
	for i := range events {
		if !bytes.Equal(got[i], events[i]) {
			t.Errorf("event %d: %q, want %q", i, got[i], events[i])
		}
	}
	for _, tc := range []struct {
		name string
		v    []byte
		want string
	}{
		{"empty", nil, "format version"},
		{"other version", []byte{2, 1, 1, 'a'}, "format version"},
		{"no events", []byte{formatVersion, 0}, "empty audit chunk"},
		{"too many events", []byte{formatVersion, 0xff, 0x7f}, "over the limit"},
		{"length past the end", []byte{formatVersion, 1, 5, 'a'}, "table says"},
		{"trailing bytes", []byte{formatVersion, 1, 1, 'a', 'b'}, "table says"},
		{"truncated table", []byte{formatVersion, 2, 1}, "truncated"},
	} {
		if _, err := decodeChunk(tc.v); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: want error containing %q, got %v", tc.name, tc.want, err)
		}
	}
}

func TestPostingRoundTrip(t *testing.T) {
	base := uint64(1) << 63
	entries := []posting{
		{nanos: base + 900, seq: 12, value: "alice"},
		{nanos: base + 500, seq: 15, value: "bob"},
		{nanos: base + 500, seq: 11, value: "alice"},
		{nanos: base + 100, seq: 13, value: "alice"},
	}
	h, v := encodePosting(nil, entries)
	if h.maxNanos != base+900 || h.minSeq != 11 || h.span != 800 {
		t.Fatalf("head %+v", h)
	}
	key := postingKey([]byte("p/u\x00\x01"), h.maxNanos, h.minSeq, h.span)
	if got, err := parsePostingKey(key, 5); err != nil || got != h {
		t.Fatalf("parsePostingKey: %+v, %v", got, err)
	}
	collect := func(want string, all bool) []position {
		var out []position
		if err := decodePosting(v, h, want, all, func(n, s uint64) { out = append(out, position{n, s}) }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got, want := collect("alice", false), []position{{base + 900, 12}, {base + 500, 11}, {base + 100, 13}}; !slices.Equal(got, want) {
		t.Errorf("alice: %v, want %v", got, want)
	}
	if got := collect("carol", false); len(got) != 0 {
		t.Errorf("carol: %v, want nothing", got)
	}
	if got := collect("", true); len(got) != 4 {
		t.Errorf("all: %v, want 4 entries", got)
	}
	// A head that claims a narrower span than the entries cover is corrupt.
	narrow := h
	narrow.span = 100
	if err := decodePosting(v, narrow, "alice", false, func(uint64, uint64) {}); err == nil {
		t.Error("entries outside the key's span decoded without error")
	}
	// Entries out of newest-first order are corrupt.
	bad := []byte{formatVersion, 1, 0, 2, 0, 0, 0, 0, 1, 0}
	if err := decodePosting(bad, postingHead{maxNanos: base, minSeq: 1}, "", true, func(uint64, uint64) {}); err == nil || !strings.Contains(err.Error(), "order") {
		t.Errorf("out of order entries: %v", err)
	}
	if _, err := parsePostingKey(postingKey([]byte("p/t\x00\x00"), 5, 1, 6), 5); err == nil {
		t.Error("span over maxNanos accepted")
	}
}

func TestManifestRoundTrip(t *testing.T) {
	keys := [][]byte{[]byte("p/u\x00\x01abc"), []byte("p/t\x00\x00xyz")}
	last, got, err := decodeManifest(encodeManifest(100, 163, keys), 100)
	if err != nil || last != 163 || len(got) != 2 || !bytes.Equal(got[1], keys[1]) {
		t.Fatalf("decodeManifest: %d %q %v", last, got, err)
	}
	if _, _, err := decodeManifest(encodeManifest(1, 1, [][]byte{[]byte("e/x")}), 1); err == nil {
		t.Error("manifest listing a non-posting key accepted")
	}
}

// FuzzDecoders feeds arbitrary bytes to every decoder: corrupt data must
// produce an error, never a panic, and what decodes must be in bounds.
func FuzzDecoders(f *testing.F) {
	f.Add(encodeChunk(nil, [][]byte{[]byte("a"), []byte("bc")}), uint64(1)<<63, uint64(7), uint32(5))
	_, p := encodePosting(nil, []posting{{nanos: 10, seq: 3, value: "u"}, {nanos: 7, seq: 9, value: "v"}})
	f.Add(p, uint64(10), uint64(3), uint32(3))
	f.Add(encodeManifest(5, 9, [][]byte{[]byte("p/k")}), uint64(5), uint64(0), uint32(0))
	f.Fuzz(func(t *testing.T, v []byte, maxNanos, minSeq uint64, span uint32) {
		if events, err := decodeChunk(v); err == nil {
			total := 0
			for _, ev := range events {
				total += len(ev)
			}
			if len(events) == 0 || len(events) > maxChunkEvents || total > len(v) {
				t.Fatalf("chunk decoded to %d events of %d bytes from %d bytes", len(events), total, len(v))
			}
		}
		key := postingKey([]byte("p/u\x00\x00"), maxNanos, minSeq, span)
		if h, err := parsePostingKey(key, 5); err == nil {
			prev := position{nanos: ^uint64(0), seq: ^uint64(0)}
			_ = decodePosting(v, h, "u", true, func(nanos, seq uint64) {
				p := position{nanos, seq}
				if nanos > h.maxNanos || nanos < h.maxNanos-uint64(h.span) || seq < h.minSeq || !p.less(prev) {
					t.Fatalf("entry %+v out of bounds or order for head %+v after %+v", p, h, prev)
				}
				prev = p
			})
		}
		if last, keys, err := decodeManifest(v, minSeq); err == nil {
			if last < minSeq || len(keys) > len(v) {
				t.Fatalf("manifest: last %d before first %d, %d keys from %d bytes", last, minSeq, len(keys), len(v))
			}
		}
	})
}

// The committer's chain hasher must produce exactly audit.ChainHash, from
// an empty chain and from a recovered head, event after event.
func TestChainHasherMatchesChainHash(t *testing.T) {
	for _, head := range []string{"", strings.Repeat("ab", 32)} {
		h, err := newChainHasher(head)
		if err != nil {
			t.Fatal(err)
		}
		prev := head
		for i := range 5 {
			canon := []byte(strings.Repeat("x", i*37))
			want, err := audit.ChainHash(canon, prev)
			if err != nil {
				t.Fatal(err)
			}
			if got := h.next(canon); got != want {
				t.Fatalf("head %q event %d: hash %s, want %s", head, i, got, want)
			}
			prev = want
		}
	}
	if _, err := newChainHasher("not hex"); err == nil || !strings.Contains(err.Error(), "not hex") {
		t.Fatalf("bad head: want a not-hex error, got %v", err)
	}
}
