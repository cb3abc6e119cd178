package sqlpolicy

import (
	"strings"
	"testing"
)

func TestShapeKey(t *testing.T) {
	const p = string(shapePlaceholder)
	for _, tc := range []struct{ in, want string }{
		{"SELECT abalance FROM pgbench_accounts WHERE aid = 8234;", "SELECT abalance FROM pgbench_accounts WHERE aid = " + p + ";"},
		{"  select * from t1 where a=1 and b in (2,30) limit 5", "  select * from t1 where a=" + p + " and b in (" + p + "," + p + ") limit " + p},
		{"UPDATE t SET x = x + 1 WHERE id = 7", "UPDATE t SET x = x + " + p + " WHERE id = " + p},
		{"SELECT 1.5, 1e5, 0x1F, 2abc, a1", "SELECT " + p + "." + p + ", 1e5, 0x1F, 2abc, a1"},
		{"SELECT é1 FROM t", "SELECT é1 FROM t"},
		{"SELECT 1234567890123456789", "SELECT 1234567890123456789"},
		// Not keyed by shape: literal values may matter, or may hide in
		// strings, identifiers, parameters or comments.
		{"EXPLAIN (ANALYZE 0) DELETE FROM t", "EXPLAIN (ANALYZE 0) DELETE FROM t"},
		{"SET character_set_client = 28", "SET character_set_client = 28"},
		{"SELECT '1' FROM t WHERE a = 2", "SELECT '1' FROM t WHERE a = 2"},
		{`SELECT "c1" FROM t WHERE a = 2`, `SELECT "c1" FROM t WHERE a = 2`},
		{"SELECT $1, 2", "SELECT $1, 2"},
		{"SELECT 1 -- 2", "SELECT 1 -- 2"},
		{"SELECT 1 /* 2 */", "SELECT 1 /* 2 */"},
		{"SELECT 1 # 2", "SELECT 1 # 2"},
		{"SELECT 1; DELETE FROM t WHERE a = 2", "SELECT 1; DELETE FROM t WHERE a = 2"},
		{"SELECTED 1", "SELECTED 1"},
		{"select", "select"},
	} {
		if got := shapeKey(tc.in); got != tc.want {
			t.Errorf("shapeKey(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Statements that differ only in numbers share a cache entry: the parser
// runs once, and the answer is the one a fresh parse gives.
func TestClassifyShapeCache(t *testing.T) {
	for _, d := range []Dialect{DialectPostgres, DialectMySQL} {
		c, err := NewClassifier(Config{Dialect: d, CacheSize: 16})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 100 {
			r := c.Classify("SELECT abalance FROM pgbench_accounts WHERE aid = " + strings.Repeat("9", i%7+1))
			if r.Class != ClassRead {
				t.Fatalf("%s: class %q", d, r.Class)
			}
		}
		if st := c.Stats(); st.Misses != 1 || st.Hits != 99 {
			t.Errorf("%s: %d misses and %d hits for one statement shape, want 1 and 99", d, st.Misses, st.Hits)
		}
		if r := c.Classify("DELETE FROM t WHERE id = 5"); r.Class != ClassWrite {
			t.Errorf("%s: DELETE classified %q", d, r.Class)
		}
		if r := c.Classify("DELETE FROM t WHERE id = 6"); r.Class != ClassWrite {
			t.Errorf("%s: cached DELETE classified %q", d, r.Class)
		}
	}
}

// FuzzShapeKey checks the soundness claim behind shapeKey: statements
// with the same key classify alike. The variant replaces every number the
// key replaced with a different one.
func FuzzShapeKey(f *testing.F) {
	for _, s := range []string{
		"SELECT * FROM t WHERE a = 1", "select 1, 2 from t limit 3", "UPDATE t SET a = 1 WHERE b = 2",
		"DELETE FROM t WHERE a IN (1, 2)", "WITH x AS (DELETE FROM t WHERE a = 1 RETURNING *) SELECT 1",
		"SELECT pg_terminate_backend(123)", "SELECT nextval(1)", "SELECT 1 FOR UPDATE", "INSERT INTO t VALUES (1)",
		"SELECT set_config(1, 2, 0)", "SELECT 1 INTO t2", "SELECT * FROM f(1) AS x(a int)",
	} {
		f.Add(s)
	}
	pg, err := NewClassifier(Config{})
	if err != nil {
		f.Fatal(err)
	}
	my, err := NewClassifier(Config{Dialect: DialectMySQL})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		if len(sql) > 4096 {
			return
		}
		key := shapeKey(sql)
		if key == sql {
			return
		}
		for _, n := range []string{"0", "40", strings.Repeat("9", maxShapeDigits)} {
			variant := strings.ReplaceAll(key, string(shapePlaceholder), n)
			if shapeKey(variant) != key {
				t.Fatalf("variant %q of %q has another key", variant, sql)
			}
			for _, c := range []*Classifier{pg, my} {
				a, b := c.classifyUncached(sql), c.classifyUncached(variant)
				if a.Class != b.Class {
					t.Fatalf("%s: %q is %s but %q (same shape) is %s", c.cfg.Dialect, sql, a.Class, variant, b.Class)
				}
			}
		}
	})
}
