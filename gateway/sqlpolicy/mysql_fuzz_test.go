package sqlpolicy

import (
	"strings"
	"testing"

	"github.com/pingcap/tidb/pkg/parser/ast"
)

func FuzzClassifyMySQL(f *testing.F) {
	for _, s := range []string{
		"SELECT 1", "SELECT * FROM t WHERE a = 'x' ORDER BY 1", "TABLE t", "VALUES ROW(1)",
		"SELECT GET_LOCK('a', 1)", "SELECT * FROM t FOR UPDATE", "SELECT * FROM t INTO OUTFILE '/x'",
		"INSERT INTO t VALUES (1)", "CALL p()", "EXPLAIN ANALYZE DELETE FROM t", "LOAD DATA LOCAL INFILE 'x' INTO TABLE t",
		"SET @sigil_identity = 'x'", "SET GLOBAL x = 1", "BEGIN; SELECT 1; COMMIT", "-- c\n/* d */ SELECT `x`", "SELEC", "",
		"PREPARE s FROM 'SELECT 1'", "/*!50000 DROP TABLE t */", "/*M!100100 SELECT 1 */", `SELECT 'a\'; DROP TABLE t; -- '`,
		`SELECT "a\"b"`, "SET NAMES gbk", "SELECT @x := 1", "SELECT (SELECT 1 FROM t) FROM u JOIN v ON true",
	} {
		f.Add(s)
	}
	c, err := NewClassifier(Config{Dialect: DialectMySQL, CacheSize: 256})
	if err != nil {
		f.Fatal(err)
	}
	oracle := newMySQLParsers()
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
		if r.Reason == "internal classification error" {
			t.Fatalf("Classify(%q) panicked", sql)
		}
		if again := c.Classify(sql); again != r {
			t.Fatalf("Classify(%q) = %+v then %+v", sql, r, again)
		}
		if plainMySQLSelect(oracle, sql) && r.Class != ClassRead {
			t.Fatalf("Classify(%q) = %+v, want read for a plain SELECT", sql, r)
		}
	})
}

// plainMySQLSelect reports whether sql is, under every sql_mode, exactly one
// SELECT without function calls, locking, INTO or variable assignment. It
// errs towards false: text with backslashes, double quotes, comments,
// parentheses, '@' or sequence syntax is never plain.
func plainMySQLSelect(p *mysqlParsers, sql string) bool {
	if strings.ContainsAny(sql, "\\\"()@#/-") || strings.Contains(strings.ToLower(sql), "next") {
		return false
	}
	stmts, err := p.parse(sql)
	if err != nil || len(stmts) != 1 {
		return false
	}
	s, ok := stmts[0].(*ast.SelectStmt)
	if !ok || s.SelectIntoOpt != nil || (s.LockInfo != nil && s.LockInfo.LockType != ast.SelectLockNone) {
		return false
	}
	return true
}

func TestPlainMySQLSelectOracle(t *testing.T) {
	p := newMySQLParsers()
	for sql, want := range map[string]bool{
		"SELECT 1":                         true,
		"SELECT a FROM t WHERE b > 1":      true,
		"SELECT LOWER(a) FROM t":           false,
		"SELECT 1; SELECT 2":               false,
		"SELECT * FROM t FOR UPDATE":       false,
		"SELECT * FROM t INTO OUTFILE 'x'": false,
		"DELETE FROM t":                    false,
		"SELECT NEXT VALUE FOR s":          false,
		"SELEC 1":                          false,
	} {
		if got := plainMySQLSelect(p, sql); got != want {
			t.Errorf("plainMySQLSelect(%q) = %v, want %v", sql, got, want)
		}
	}
}

var mysqlBenchStatements = []string{
	"SELECT id, name, email FROM users WHERE id = ?",
	"INSERT INTO events (kind, payload, created_at) VALUES (?, ?, NOW())",
	"WITH recent AS (SELECT * FROM orders WHERE created_at > NOW() - INTERVAL 1 DAY) SELECT customer_id, SUM(total) FROM recent GROUP BY 1 ORDER BY 2 DESC LIMIT 20",
	"UPDATE accounts SET balance = balance - ? WHERE id = ? AND balance >= ?",
}

func BenchmarkClassifyMySQLCached(b *testing.B) {
	c := newMySQLTestClassifier(b)
	for _, s := range mysqlBenchStatements {
		c.Classify(s)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Classify(mysqlBenchStatements[i%len(mysqlBenchStatements)])
	}
	b.StopTimer()
	if st := c.Stats(); st.Misses != uint64(len(mysqlBenchStatements)) {
		b.Fatalf("cached benchmark missed the cache: %+v", st)
	}
}

func BenchmarkClassifyMySQLUncached(b *testing.B) {
	c := newMySQLTestClassifier(b)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.classifyUncached(mysqlBenchStatements[i%len(mysqlBenchStatements)])
	}
}

// A statement with an escaped quote is parsed once per sql_mode reading.
func BenchmarkClassifyMySQLUncachedEscapes(b *testing.B) {
	c := newMySQLTestClassifier(b)
	sql := `SELECT id FROM users WHERE name = 'O\'Brien' AND note = "a \"b\""`
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.classifyUncached(sql)
	}
}
