package sqlpolicy

import (
	"strings"
	"testing"
	"unicode/utf8"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

func FuzzClassify(f *testing.F) {
	for _, s := range []string{
		"SELECT 1", "SELECT * FROM t WHERE a = 'x' ORDER BY 1", "TABLE t", "VALUES (1)",
		"WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", "SELECT nextval('s')",
		"SELECT * FROM t FOR UPDATE", "SELECT * INTO u FROM t", "INSERT INTO t VALUES (1)",
		"DO $$ BEGIN END $$", "CALL p()", "EXPLAIN ANALYZE DELETE FROM t", "COPY t FROM STDIN",
		"SET ROLE x", "BEGIN; SELECT 1; COMMIT", "-- c\n/* d */ SELECT $q$x$q$", "SELEC", "",
		"SELECT (SELECT 1 FROM t) FROM u JOIN v ON true", "SELECT a FROM t UNION SELECT b FROM u",
	} {
		f.Add(s)
	}
	c, err := NewClassifier(Config{CacheSize: 256})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		r := c.Classify(sql)
		switch r.Class {
		case ClassRead, ClassWrite, ClassAdmin, ClassUnknown:
		default:
			t.Fatalf("Classify(%q) returned class %q", sql, r.Class)
		}
		if r.Reason == "" {
			t.Fatalf("Classify(%q) returned no reason", sql)
		}
		// The cached answer must equal the fresh one.
		if again := c.Classify(sql); again != r {
			t.Fatalf("Classify(%q) = %+v then %+v", sql, r, again)
		}
		if plainSelect(sql) && r.Class != ClassRead {
			t.Fatalf("Classify(%q) = %+v, want read for a plain SELECT without function calls", sql, r)
		}
	})
}

// plainSelect reports whether sql parses as exactly one SELECT with no
// function call, locking clause, INTO or nested DML. It reads pg_query's
// JSON independently of the classifier's tree walk; a keyword appearing in a
// string constant only makes it more conservative (false), never wrong.
func plainSelect(sql string) bool {
	if !utf8.ValidString(sql) {
		return false
	}
	j, err := pg_query.ParseToJSON(sql)
	if err != nil {
		return false
	}
	if !strings.HasPrefix(j, `{"version":`) || strings.Count(j, `{"stmt":`) != 1 || !strings.Contains(j, `"stmts":[{"stmt":{"SelectStmt":`) {
		return false
	}
	for _, bad := range []string{`"FuncCall"`, `"lockingClause"`, `"intoClause"`, `"InsertStmt"`, `"UpdateStmt"`, `"DeleteStmt"`, `"MergeStmt"`} {
		if strings.Contains(j, bad) {
			return false
		}
	}
	return true
}

func TestPlainSelectOracle(t *testing.T) {
	// The fuzz property is only as good as its oracle; check the oracle.
	for sql, want := range map[string]bool{
		"SELECT 1":                           true,
		"SELECT a FROM t WHERE b > 1":        true,
		"SELECT lower(a) FROM t":             false,
		"SELECT 1; SELECT 2":                 false,
		"SELECT * FROM t FOR UPDATE":         false,
		"SELECT * INTO u FROM t":             false,
		"WITH x AS (DELETE FROM t) SELECT 1": false,
		"DELETE FROM t":                      false,
		"SELEC 1":                            false,
	} {
		if got := plainSelect(sql); got != want {
			t.Errorf("plainSelect(%q) = %v, want %v", sql, got, want)
		}
	}
}

var benchStatements = []string{
	"SELECT id, name, email FROM users WHERE id = $1",
	"INSERT INTO events (kind, payload, created_at) VALUES ($1, $2, now()) RETURNING id",
	"WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '1 day') SELECT customer_id, sum(total) FROM recent GROUP BY 1 ORDER BY 2 DESC LIMIT 20",
	"UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance >= $1",
}

func BenchmarkClassifyCached(b *testing.B) {
	c := newTestClassifier(b)
	for _, s := range benchStatements {
		c.Classify(s)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Classify(benchStatements[i%len(benchStatements)])
	}
	b.StopTimer()
	if st := c.Stats(); st.Misses != uint64(len(benchStatements)) {
		b.Fatalf("cached benchmark missed the cache: %+v", st)
	}
}

func BenchmarkClassifyUncached(b *testing.B) {
	c := newTestClassifier(b)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		// classifyUncached bypasses the cache without changing the text
		// the parser sees.
		c.classifyUncached(benchStatements[i%len(benchStatements)])
	}
}
