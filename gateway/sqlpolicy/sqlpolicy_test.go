package sqlpolicy

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/gravitational/trace"
)

func TestCache(t *testing.T) {
	c, err := NewClassifier(Config{CacheSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	first := c.Classify("DELETE FROM t")
	if st := c.Stats(); st.Hits != 0 || st.Misses != 1 || st.Entries != 1 {
		t.Fatalf("after first call: %+v, want 0 hits, 1 miss, 1 entry", st)
	}
	second := c.Classify("DELETE FROM t")
	if second != first {
		t.Fatalf("cached result %+v differs from first %+v", second, first)
	}
	if st := c.Stats(); st.Hits != 1 || st.Misses != 1 {
		t.Fatalf("after second call: %+v, want 1 hit, 1 miss", st)
	}
	// The key is the exact text: different whitespace is a different entry.
	c.Classify("DELETE  FROM t")
	if st := c.Stats(); st.Misses != 2 || st.Entries != 2 {
		t.Fatalf("after a different text: %+v, want 2 misses, 2 entries", st)
	}
	// Touch the first entry so that the whitespace variant is the oldest,
	// then add a third: the oldest is evicted, the touched one stays.
	c.Classify("DELETE FROM t")
	c.Classify("SELECT 1")
	if st := c.Stats(); st.Entries != 2 {
		t.Fatalf("cache holds %d entries, want 2 (its size)", st.Entries)
	}
	before := c.Stats()
	c.Classify("DELETE FROM t")
	c.Classify("DELETE  FROM t")
	after := c.Stats()
	if after.Hits != before.Hits+1 || after.Misses != before.Misses+1 {
		t.Fatalf("LRU order wrong: before %+v after %+v, want the recently used entry kept and the oldest evicted", before, after)
	}
	// Parse errors are cached too: they are as deterministic as successes.
	c.Classify("SELEC 1")
	c.Classify("SELEC 1")
	if st := c.Stats(); st.Hits != after.Hits+1 {
		t.Fatalf("parse error not cached: %+v", st)
	}
}

func TestCacheEntryMaxBytes(t *testing.T) {
	c, err := NewClassifier(Config{CacheEntryMaxBytes: 16})
	if err != nil {
		t.Fatal(err)
	}
	long := "SELECT 1 AS aaaaaaaaaaaaaaaa"
	c.Classify(long)
	c.Classify(long)
	if st := c.Stats(); st.Hits != 0 || st.Misses != 2 || st.Entries != 0 {
		t.Fatalf("long statement stats %+v, want it never cached", st)
	}
}

// The cache must keep its own copy of the key: the gateway may pass text
// that aliases a read buffer reused for the next message.
func TestCacheKeyIsCopied(t *testing.T) {
	c := newTestClassifier(t)
	buf := []byte("DELETE FROM t")
	c.Classify(unsafe.String(&buf[0], len(buf)))
	copy(buf, "SELECT 1     ")
	before := c.Stats()
	if got := c.Classify("DELETE FROM t"); got.Class != ClassWrite {
		t.Fatalf("DELETE after buffer reuse = %+v, want write", got)
	}
	if st := c.Stats(); st.Hits != before.Hits+1 {
		t.Fatalf("DELETE after buffer reuse missed the cache (%+v): the cached key was aliased, not copied", st)
	}
}

func TestClassifyConcurrent(t *testing.T) {
	c, err := NewClassifier(Config{CacheSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	stmts := []struct {
		sql   string
		class Class
	}{
		{"SELECT 1", ClassRead},
		{"DELETE FROM t", ClassWrite},
		{"DROP TABLE t", ClassAdmin},
		{"DO $$ BEGIN END $$", ClassUnknown},
	}
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				s := stmts[(g+i)%len(stmts)]
				// Unique texts churn the small cache while shared ones hit it.
				sql := s.sql
				if i%3 == 0 {
					sql = fmt.Sprintf("%s -- %d/%d", s.sql, g, i)
				}
				if got := c.Classify(sql); got.Class != s.class {
					errs <- fmt.Sprintf("Classify(%q) = %+v, want %q", sql, got, s.class)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if st := c.Stats(); st.Entries > 8 || st.Hits == 0 {
		t.Fatalf("stats after concurrent use: %+v, want ≤ 8 entries and some hits", st)
	}
}

func TestAllowed(t *testing.T) {
	results := map[Class]Result{
		ClassRead:    {Class: ClassRead},
		ClassWrite:   {Class: ClassWrite},
		ClassAdmin:   {Class: ClassAdmin},
		ClassUnknown: {Class: ClassUnknown},
		"":           {},               // zero Result: fail closed
		"bogus":      {Class: "bogus"}, // not a class: fail closed
	}
	want := map[string]map[Class]bool{
		"read":  {ClassRead: true},
		"write": {ClassRead: true, ClassWrite: true},
		"admin": {ClassRead: true, ClassWrite: true, ClassAdmin: true, ClassUnknown: true, "": true, "bogus": true},
		"":      {},
		"READ":  {},
		"root":  {},
	}
	for granted, allowed := range want {
		for class, r := range results {
			if got := Allowed(granted, r); got != allowed[class] {
				t.Errorf("Allowed(%q, %q) = %v, want %v", granted, class, got, allowed[class])
			}
		}
	}
}

func TestAllowedEndToEnd(t *testing.T) {
	c := newTestClassifier(t)
	if Allowed("read", c.Classify("INSERT INTO t VALUES (1)")) {
		t.Error("read identity allowed an INSERT")
	}
	if Allowed("read", c.Classify("CALL p()")) || Allowed("write", c.Classify("CALL p()")) {
		t.Error("CALL allowed below admin")
	}
	if !Allowed("read", c.Classify("SELECT * FROM t")) {
		t.Error("read identity refused a SELECT")
	}
	if Allowed("write", c.Classify("ALTER TABLE t ADD COLUMN x int")) {
		t.Error("write identity allowed DDL")
	}
	if !Allowed("admin", c.Classify("DO $$ BEGIN END $$")) {
		t.Error("admin refused a DO block")
	}
}

func TestNormalize(t *testing.T) {
	got, err := Normalize("SELECT * FROM t WHERE name = 'alice' AND id = 7")
	if err != nil {
		t.Fatal(err)
	}
	if want := "SELECT * FROM t WHERE name = $1 AND id = $2"; got != want {
		t.Fatalf("Normalize = %q, want %q", got, want)
	}
	if _, err := Normalize("SELECT 'unterminated"); !trace.IsBadParameter(err) {
		t.Fatalf("Normalize(bad sql) error = %v, want BadParameter", err)
	}
	if _, err := Normalize(strings.Repeat(" ", DefaultMaxStatementBytes+1)); !trace.IsLimitExceeded(err) {
		t.Fatalf("Normalize(huge) error = %v, want LimitExceeded", err)
	}
}
