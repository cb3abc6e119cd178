package sqlpolicy

import (
	"strings"
	"testing"
)

func newMySQLTestClassifier(t testing.TB) *Classifier {
	t.Helper()
	c, err := NewClassifier(Config{Dialect: DialectMySQL})
	if err != nil {
		t.Fatalf("NewClassifier(mysql): %v", err)
	}
	return c
}

func TestClassifyMySQL(t *testing.T) {
	c := newMySQLTestClassifier(t)
	tests := []struct {
		sql    string
		class  Class
		reason string
	}{
		// Reads.
		{"SELECT 1", ClassRead, "SELECT"},
		{"select * from db.users where id = ?", ClassRead, "SELECT"},
		{"SELECT a, COUNT(*) FROM t GROUP BY a HAVING COUNT(*) > 1 ORDER BY 2 LIMIT 10", ClassRead, "SELECT"},
		{"SELECT * FROM a JOIN b USING (id) WHERE EXISTS (SELECT 1 FROM c WHERE c.id = a.id)", ClassRead, "SELECT"},
		{"SELECT 1 UNION ALL SELECT 2", ClassRead, "SELECT ... UNION"},
		{"WITH x AS (SELECT 1 AS a) SELECT a FROM x", ClassRead, "SELECT"},
		{"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r WHERE n < 5) SELECT * FROM r", ClassRead, "SELECT"},
		{"SELECT LOWER(name), NOW(), COALESCE(a, b), JSON_EXTRACT(j, '$.a') FROM t", ClassRead, "SELECT"},
		{"SELECT ROW_NUMBER() OVER (PARTITION BY a ORDER BY b) FROM t", ClassRead, "SELECT"},
		{"TABLE t", ClassRead, "TABLE"},
		{"VALUES ROW(1, 'a'), ROW(2, 'b')", ClassRead, "VALUES"},
		{"SELECT 'DELETE FROM t'", ClassRead, "SELECT"},
		{"SELECT `get_lock` FROM t", ClassRead, "SELECT"},
		{"SELECT 'GET_LOCK(1)'", ClassRead, "SELECT"},
		{"SELECT @@version, @sigil_identity", ClassRead, "SELECT"},
		{"SELECT /*+ MAX_EXECUTION_TIME(1000) */ 1", ClassRead, "SELECT"},
		{"SELECT SLEEP(1)", ClassRead, "SELECT"},
		{"SELECT BENCHMARK(10, MD5('a'))", ClassRead, "SELECT"},
		{"SELECT IS_FREE_LOCK('a'), IS_USED_LOCK('a')", ClassRead, "SELECT"},
		{"SHOW TABLES", ClassRead, "SHOW"},
		{"SHOW CREATE TABLE t", ClassRead, "SHOW"},
		{"SHOW GLOBAL STATUS", ClassRead, "SHOW"},
		{"SHOW PROCESSLIST", ClassRead, "SHOW"},
		{"SHOW WARNINGS", ClassRead, "SHOW"},
		{"DESCRIBE t", ClassRead, "DESCRIBE"},
		{"DESC t", ClassRead, "DESCRIBE"},
		{"EXPLAIN SELECT * FROM t", ClassRead, "EXPLAIN without ANALYZE"},
		{"EXPLAIN FORMAT=JSON SELECT 1", ClassRead, "EXPLAIN without ANALYZE"},
		{"EXPLAIN DELETE FROM t", ClassRead, "EXPLAIN without ANALYZE"},
		{"EXPLAIN ANALYZE SELECT * FROM t", ClassRead, "EXPLAIN ANALYZE executes SELECT"},
		{"EXPLAIN FOR CONNECTION 5", ClassRead, "EXPLAIN FOR CONNECTION"},
		{"USE db", ClassRead, "USE"},
		{"HELP 'contents'", ClassRead, "HELP"},
		{"SET autocommit = 1", ClassRead, "SET @@autocommit"},
		{"SET SESSION sql_mode = 'ANSI'", ClassRead, "SET @@sql_mode"},
		{"SET @@SESSION.time_zone = '+00:00'", ClassRead, "SET @@time_zone"},
		{"SET LOCAL sql_mode = ''", ClassRead, "SET @@sql_mode"},
		{"SET @a = 1, @b := 'x'", ClassRead, "SET @a"},
		{"SET NAMES utf8mb4", ClassRead, "SET NAMES utf8mb4"},
		{"SET NAMES utf8mb4 COLLATE utf8mb4_bin", ClassRead, "SET NAMES utf8mb4"},
		{"SET CHARACTER SET latin1", ClassRead, "SET CHARACTER SET latin1"},
		{"SET character_set_client = 'utf8mb4'", ClassRead, "SET @@character_set_client utf8mb4"},
		{"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", ClassRead, "SET @@tx_isolation"},
		{"SET TRANSACTION READ ONLY", ClassRead, "SET @@tx_read_only"},
		{"/*!40101 SET NAMES utf8 */", ClassRead, "SET NAMES utf8"},
		{"BEGIN", ClassRead, "BEGIN"},
		{"START TRANSACTION READ ONLY", ClassRead, "BEGIN"},
		{"COMMIT", ClassRead, "COMMIT"},
		{"ROLLBACK", ClassRead, "ROLLBACK"},
		{"SAVEPOINT a", ClassRead, "SAVEPOINT"},
		{"ROLLBACK TO SAVEPOINT a", ClassRead, "ROLLBACK TO SAVEPOINT"},
		{"RELEASE SAVEPOINT a", ClassRead, "RELEASE SAVEPOINT"},
		{"DO SLEEP(1)", ClassRead, "DO"},
		{"UNLOCK TABLES", ClassRead, "UNLOCK TABLES"},
		{"DEALLOCATE PREPARE s", ClassRead, "DEALLOCATE PREPARE"},
		{"PREPARE s FROM 'SELECT * FROM t WHERE id = ?'", ClassRead, "PREPARE s: SELECT"},
		{"", ClassRead, "empty statement"},
		{"  ;  ", ClassRead, "empty statement"},
		{"-- only a comment", ClassRead, "empty statement"},

		// Writes.
		{"INSERT INTO t VALUES (1)", ClassWrite, "INSERT into t"},
		{"INSERT INTO db.t (a) SELECT a FROM u", ClassWrite, "INSERT into db.t"},
		{"INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = 2", ClassWrite, "INSERT into t"},
		{"REPLACE INTO t VALUES (1)", ClassWrite, "REPLACE into t"},
		{"UPDATE t SET a = 1 WHERE id = 2", ClassWrite, "UPDATE t"},
		{"UPDATE a JOIN b ON a.id = b.id SET a.x = b.x", ClassWrite, "UPDATE a"},
		{"DELETE FROM t WHERE id = 1", ClassWrite, "DELETE from t"},
		{"DELETE t1 FROM t1 JOIN t2 ON t1.id = t2.id", ClassWrite, "DELETE from t1"},
		{"DELETE LOW_PRIORITY QUICK IGNORE FROM t WHERE a > 1 ORDER BY a LIMIT 1", ClassWrite, "DELETE from t"},
		{"LOAD DATA LOCAL INFILE 'data.csv' INTO TABLE t", ClassWrite, "LOAD DATA LOCAL into t"},
		{"LOCK TABLES t READ", ClassWrite, "LOCK TABLES"},
		{"SELECT * FROM t FOR UPDATE", ClassWrite, "FOR UPDATE takes row locks"},
		{"SELECT * FROM t LOCK IN SHARE MODE", ClassWrite, "FOR SHARE takes row locks"},
		{"SELECT * FROM t FOR SHARE NOWAIT", ClassWrite, "FOR SHARE NOWAIT takes row locks"},
		{"SELECT * FROM t FOR UPDATE SKIP LOCKED", ClassWrite, "FOR UPDATE SKIP LOCKED"},
		{"SELECT * FROM (SELECT * FROM t FOR UPDATE) x", ClassWrite, "FOR UPDATE"},
		{"(SELECT * FROM t FOR UPDATE) UNION SELECT 1", ClassWrite, "FOR UPDATE"},
		{"SELECT GET_LOCK('a', 1)", ClassWrite, "function get_lock takes a named lock"},
		{"SELECT get_lock ('a', 1)", ClassWrite, "function get_lock"},
		{"SELECT GET_LOCK/**/('a', 1)", ClassWrite, "function get_lock"},
		{"SELECT `get_lock`('a', 1)", ClassWrite, "function get_lock"},
		{"SELECT db.GET_LOCK('a', 1)", ClassWrite, "function get_lock"},
		{"SELECT RELEASE_LOCK('a')", ClassWrite, "function release_lock"},
		{"SELECT RELEASE_ALL_LOCKS()", ClassWrite, "function release_all_locks"},
		{"DO GET_LOCK('a', 1)", ClassWrite, "function get_lock"},
		{"SELECT * FROM t WHERE id IN (SELECT GET_LOCK('a', 1))", ClassWrite, "function get_lock"},
		{"SET @a := GET_LOCK('x', 1)", ClassWrite, "function get_lock"},
		{"SELECT NEXT VALUE FOR s", ClassWrite, "function nextval advances a sequence"},
		{"SELECT NEXTVAL(s)", ClassWrite, "function nextval"},
		{"SELECT SETVAL(s, 10)", ClassWrite, "function setval"},
		{"EXPLAIN ANALYZE DELETE FROM t", ClassWrite, "EXPLAIN ANALYZE executes DELETE from t"},
		{"ANALYZE TABLE t", ClassWrite, "ANALYZE TABLE"},
		{"PREPARE s FROM 'DELETE FROM t WHERE id = ?'", ClassWrite, "PREPARE s: DELETE from t"},

		// Admin.
		{"SELECT * FROM t INTO OUTFILE '/tmp/x'", ClassAdmin, "INTO OUTFILE writes a file"},
		{"SELECT LOAD_FILE('/etc/passwd')", ClassAdmin, "function load_file reads a file"},
		{"SET @a = (SELECT LOAD_FILE('/etc/passwd'))", ClassAdmin, "function load_file"},
		{"INSERT INTO t SELECT LOAD_FILE('/etc/passwd')", ClassAdmin, "function load_file"},
		{"LOAD DATA INFILE '/var/lib/mysql-files/x' INTO TABLE t", ClassAdmin, "LOAD DATA reads a file on the database server"},
		{"CREATE TABLE t (a INT)", ClassAdmin, "CREATE TABLE t"},
		{"CREATE TEMPORARY TABLE t (a INT)", ClassAdmin, "CREATE TABLE t"},
		{"CREATE TABLE t2 AS SELECT * FROM t", ClassAdmin, "CREATE TABLE t2"},
		{"ALTER TABLE t ADD COLUMN b INT", ClassAdmin, "ALTER TABLE t"},
		{"DROP TABLE t", ClassAdmin, "DROP TABLE"},
		{"DROP VIEW v", ClassAdmin, "DROP VIEW"},
		{"RENAME TABLE a TO b", ClassAdmin, "RENAME TABLE"},
		{"TRUNCATE TABLE t", ClassAdmin, "TRUNCATE TABLE t"},
		{"TRUNCATE t", ClassAdmin, "TRUNCATE TABLE t"},
		{"CREATE DATABASE d", ClassAdmin, "CREATE DATABASE"},
		{"DROP DATABASE d", ClassAdmin, "DROP DATABASE"},
		{"CREATE VIEW v AS SELECT 1", ClassAdmin, "CREATE VIEW"},
		{"CREATE INDEX i ON t (a)", ClassAdmin, "CREATE INDEX"},
		{"DROP INDEX i ON t", ClassAdmin, "DROP INDEX"},
		{"CREATE SEQUENCE s", ClassAdmin, "DDL (CreateSequenceStmt)"},
		{"OPTIMIZE TABLE t", ClassAdmin, "DDL (OptimizeTableStmt)"},
		{"CREATE PROCEDURE p() BEGIN END", ClassAdmin, "CREATE PROCEDURE"},
		{"DROP PROCEDURE p", ClassAdmin, "DROP PROCEDURE"},
		{"GRANT SELECT ON *.* TO u", ClassAdmin, "GRANT"},
		{"GRANT r TO u", ClassAdmin, "GRANT"},
		{"REVOKE SELECT ON *.* FROM u", ClassAdmin, "REVOKE"},
		{"CREATE USER u IDENTIFIED BY 'x'", ClassAdmin, "CREATE USER"},
		{"ALTER USER u IDENTIFIED BY 'x'", ClassAdmin, "ALTER USER"},
		{"DROP USER u", ClassAdmin, "DROP USER"},
		{"RENAME USER a TO b", ClassAdmin, "RENAME USER"},
		{"SET PASSWORD = 'x'", ClassAdmin, "SET PASSWORD"},
		{"SET PASSWORD FOR u = 'x'", ClassAdmin, "SET PASSWORD"},
		{"SET ROLE r", ClassAdmin, "SET ROLE"},
		{"SET DEFAULT ROLE r TO u", ClassAdmin, "SET DEFAULT ROLE"},
		{"FLUSH PRIVILEGES", ClassAdmin, "FLUSH"},
		{"FLUSH TABLES WITH READ LOCK", ClassAdmin, "FLUSH"},
		{"KILL 5", ClassAdmin, "KILL CONNECTION"},
		{"KILL QUERY 5", ClassAdmin, "KILL QUERY"},
		{"SHUTDOWN", ClassAdmin, "SHUTDOWN"},
		{"BINLOG 'abc'", ClassAdmin, "BINLOG"},
		{"SET GLOBAL max_connections = 10", ClassAdmin, "SET GLOBAL max_connections"},
		{"SET @@global.max_connections = 10", ClassAdmin, "SET GLOBAL max_connections"},
		{"SET GLOBAL TRANSACTION ISOLATION LEVEL READ COMMITTED", ClassAdmin, "SET GLOBAL"},
		{"SET sql_log_bin = 0", ClassAdmin, "SET sql_log_bin (needs SYSTEM_VARIABLES_ADMIN)"},
		{"SET SESSION gtid_next = 'AUTOMATIC'", ClassAdmin, "SET gtid_next"},
		{"SET @sigil_identity = 'alice'", ClassAdmin, "SET @sigil_identity (gateway identity variable)"},
		{"SET @SIGIL_IDENTITY = 'alice'", ClassAdmin, "gateway identity variable"},
		{"SET @`sigil_identity` = 'alice'", ClassAdmin, "gateway identity variable"},
		{"SET @@sigil_x = 1", ClassAdmin, "SET @@sigil_x (gateway identity variable)"},
		{"SET @a = 1, @@session.sigil_x = 2", ClassAdmin, "SET @@sigil_x"},
		{"SELECT @sigil_identity := 'alice'", ClassAdmin, "assignment to @sigil_identity"},
		{"SELECT * FROM t WHERE (@sigil_identity := 'alice') IS NOT NULL", ClassAdmin, "assignment to @sigil_identity"},
		{"UPDATE t SET a = (@sigil_id := 'x')", ClassAdmin, "assignment to @sigil_id"},
		{"LOAD DATA LOCAL INFILE 'x' INTO TABLE t (a, @sigil_identity)", ClassAdmin, "LOAD DATA into @sigil_identity"},
		{"SELECT audit_log_filter_set_filter('f', '{}')", ClassAdmin, "changes audit logging"},
		{"/*!50000 DROP TABLE t */", ClassAdmin, "DROP TABLE"},
		{"/*M!100100 DROP TABLE t */", ClassAdmin, "DROP TABLE"},
		{"/*M! DROP TABLE t */", ClassAdmin, "DROP TABLE"},
		{"PREPARE s FROM 'DROP TABLE t'", ClassAdmin, "PREPARE s: DROP TABLE"},

		// Unknown: fail closed.
		{"CALL p()", ClassUnknown, "CALL procedure"},
		{"EXECUTE s", ClassUnknown, "EXECUTE of prepared statement s"},
		{"EXECUTE s USING @a", ClassUnknown, "EXECUTE of prepared statement s"},
		{"PREPARE s FROM @q", ClassUnknown, "PREPARE s FROM a variable"},
		{"PREPARE s FROM 'SELECT 1; SELECT 2'", ClassUnknown, "of several statements"},
		{"PREPARE s FROM 'SELEC 1'", ClassUnknown, "parse error"},
		{"PREPARE s FROM 'PREPARE t FROM ''PREPARE u FROM ''''PREPARE v FROM ''''''''SELECT 1'''''''''''''''", ClassUnknown, "nested too deeply"},
		{"SELECT sys_exec('id')", ClassUnknown, "function sys_exec runs an operating-system command"},
		{"SELECT lib_mysqludf_sys_info()", ClassUnknown, "operating-system UDF"},
		{"SELECT * FROM t INTO DUMPFILE '/tmp/x'", ClassUnknown, "parse error"},
		{"SELECT 1 INTO @a", ClassUnknown, "parse error"},
		{"SET PERSIST max_connections = 10", ClassUnknown, "parse error"},
		{"INSTALL PLUGIN x SONAME 'x.so'", ClassUnknown, "parse error"},
		{"DELETE FROM t RETURNING *", ClassUnknown, "parse error"},
		{"INSERT INTO t VALUES (1) RETURNING id", ClassUnknown, "parse error"},
		{"CREATE TRIGGER x BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1", ClassUnknown, "parse error"},
		{"CREATE FUNCTION f() RETURNS INT RETURN 1", ClassUnknown, "parse error"},
		{"CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO DELETE FROM t", ClassUnknown, "parse error"},
		{"SET STATEMENT max_statement_time = 1 FOR SELECT 1", ClassUnknown, "parse error"},
		{"XA START 'x'", ClassUnknown, "parse error"},
		{"HANDLER t OPEN", ClassUnknown, "parse error"},
		{"CHECK TABLE t", ClassUnknown, "parse error"},
		{"CHANGE MASTER TO MASTER_HOST = 'x'", ClassUnknown, "parse error"},
		{"SELEC 1", ClassUnknown, "parse error"},
		{"/* unterminated", ClassUnknown, "parse error"},
		{"ADMIN SHOW DDL", ClassUnknown, "unrecognised statement (AdminStmt)"},
		// The parser's literal driver panics on over-long numbers.
		{"SELECT " + strings.Repeat("1", 90), ClassUnknown, "parse error: the parser failed on this text"},
		{"SET NAMES gbk", ClassUnknown, "SET NAMES gbk: its multibyte characters may contain a backslash byte"},
		{"SET character_set_client = gbk", ClassUnknown, "may contain a backslash byte"},
		{"SET NAMES DEFAULT", ClassUnknown, "not a character set name"},
		// 28 is gbk_chinese_ci: a collation number names a character set.
		{"SET character_set_client = 28", ClassUnknown, "not a character set name"},
		{"SET NAMES sjis", ClassUnknown, "Unknown character set"},
		{"SELECT '\xbf\\' ; DROP TABLE t; -- '", ClassUnknown, "meaning depends on the connection character set"},
	}
	if len(tests) < 80 {
		t.Fatalf("only %d cases", len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			got := c.Classify(tt.sql)
			if got.Class != tt.class || !strings.Contains(got.Reason, tt.reason) {
				t.Fatalf("Classify(%q) = %+v, want class %q with reason containing %q", tt.sql, got, tt.class, tt.reason)
			}
		})
	}
}

func TestClassifyMySQLMultiStatement(t *testing.T) {
	c := newMySQLTestClassifier(t)
	tests := []struct {
		sql        string
		class      Class
		reason     string
		statements int
	}{
		{"SELECT 1; SELECT 2", ClassRead, "statement 1 of 2: SELECT", 2},
		{"SELECT 1; DELETE FROM t; SELECT 2", ClassWrite, "statement 2 of 3: DELETE from t", 3},
		{"BEGIN; UPDATE t SET a = 1; DROP TABLE t; COMMIT", ClassAdmin, "statement 3 of 4: DROP TABLE", 4},
		{"SELECT 1; CALL p(); DROP TABLE t", ClassUnknown, "statement 2 of 3: CALL procedure", 3},
		{"INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)", ClassWrite, "statement 1 of 2: INSERT into a", 2},
		{"SELECT 1;;; ; SELECT 2;", ClassRead, "SELECT", 2},
		{"SELECT 1; SELEC 2", ClassUnknown, "parse error", 0},
		// Separators inside strings and comments do not count...
		{"SELECT ';DROP TABLE t;'", ClassRead, "SELECT", 1},
		{"SELECT 1 /* ; DROP TABLE t; */", ClassRead, "SELECT", 1},
		{"SELECT 1 -- ; DROP TABLE t\n", ClassRead, "SELECT", 1},
		{"SELECT 1 # ; DROP TABLE t\n", ClassRead, "SELECT", 1},
		// ...but comments end at the line end.
		{"SELECT 1 -- c\n; DROP TABLE t", ClassAdmin, "statement 2 of 2: DROP TABLE", 2},
		{"SELECT 1 #c\n; DROP TABLE t", ClassAdmin, "statement 2 of 2: DROP TABLE", 2},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			got := c.Classify(tt.sql)
			if got.Class != tt.class || got.Statements != tt.statements || !strings.Contains(got.Reason, tt.reason) {
				t.Fatalf("Classify(%q) = %+v, want class %q, %d statements, reason containing %q", tt.sql, got, tt.class, tt.statements, tt.reason)
			}
		})
	}
}

// A session (or the server default) may use NO_BACKSLASH_ESCAPES or
// ANSI_QUOTES, which move where string literals, and so statements, end.
// The classifier must take the worst reading.
func TestClassifyMySQLSQLModes(t *testing.T) {
	c := newMySQLTestClassifier(t)
	tests := []struct {
		sql    string
		class  Class
		reason string
	}{
		{`SELECT 'a\'; DROP TABLE t; -- '`, ClassAdmin, "DROP TABLE (under sql_mode NO_BACKSLASH_ESCAPES)"},
		{`SELECT "a\"; DROP TABLE t; -- "`, ClassAdmin, "DROP TABLE (under sql_mode"},
		{`SELECT 'a\' , GET_LOCK(1, 1) -- '`, ClassWrite, "function get_lock takes a named lock (under sql_mode NO_BACKSLASH_ESCAPES)"},
		// The whole text fails to parse in NO_BACKSLASH_ESCAPES, but the
		// server would still run the statements before the broken one.
		{`SELECT 'a\'; DROP TABLE t; SELECT '`, ClassAdmin, "DROP TABLE (under sql_mode NO_BACKSLASH_ESCAPES)"},
		{`SELECT 'a\'; SELECT 1; SELECT '`, ClassRead, "SELECT"},
		// Ordinary escapes stay read.
		{`SELECT 'it\'s'`, ClassRead, "SELECT"},
		{`SELECT 'it\'s';`, ClassRead, "SELECT"},
		{`SELECT 'it\'s; fine'`, ClassRead, "SELECT"},
		{`SELECT * FROM t WHERE a = "x\"y"`, ClassRead, "SELECT"},
		{`SELECT 'it\'s'; SELECT 'a\'b'`, ClassRead, "SELECT"},
		{"SELECT '" + strings.Repeat(`\';`, mysqlMaxPrefixParses+1) + "'", ClassUnknown, "statement boundaries depend on sql_mode"},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			got := c.Classify(tt.sql)
			if got.Class != tt.class || !strings.Contains(got.Reason, tt.reason) {
				t.Fatalf("Classify(%q) = %+v, want class %q with reason containing %q", tt.sql, got, tt.class, tt.reason)
			}
		})
	}
}

// The acceptance criterion: `statements: read` refuses writes and
// DDL, naming the rule, and refuses what could not be classified.
func TestAllowedMySQL(t *testing.T) {
	c := newMySQLTestClassifier(t)
	tests := []struct {
		sql     string
		granted string
		allowed bool
	}{
		{"SELECT * FROM t", "read", true},
		{"SHOW TABLES; DESCRIBE t", "read", true},
		{"SET NAMES utf8mb4; SET autocommit = 0", "read", true},
		{"INSERT INTO t VALUES (1)", "read", false},
		{"INSERT INTO t VALUES (1)", "write", true},
		{"TRUNCATE TABLE t", "write", false},
		{"TRUNCATE TABLE t", "admin", true},
		{"CREATE TABLE t (a INT)", "read", false},
		{"SELECT 1; DROP TABLE t", "write", false},
		{"CALL p()", "write", false},
		{"CALL p()", "admin", true},
		{"SELEC 1", "read", false},
		{"SET @sigil_identity = 'mallory'", "write", false},
	}
	for _, tt := range tests {
		t.Run(tt.granted+" "+tt.sql, func(t *testing.T) {
			r := c.Classify(tt.sql)
			if got := Allowed(tt.granted, r); got != tt.allowed {
				t.Fatalf("Allowed(%q, %+v) = %v, want %v", tt.granted, r, got, tt.allowed)
			}
			if !tt.allowed && r.Reason == "" {
				t.Fatalf("refused %q without a reason", tt.sql)
			}
		})
	}
}

func TestMySQLClassifierSharesCache(t *testing.T) {
	c, err := NewClassifier(Config{Dialect: DialectMySQL, CacheSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"SELECT 1", "SELECT 1", "DELETE FROM t", "SHOW TABLES", "SELECT 1"} {
		c.Classify(s)
	}
	// SELECT 1 hit once, then was evicted by the two later texts.
	if st := c.Stats(); st.Hits != 1 || st.Misses != 4 || st.Entries != 2 {
		t.Fatalf("Stats() = %+v, want 1 hit, 4 misses, 2 entries", st)
	}
	// A text that is valid in both dialects is classified per dialect.
	pg := newTestClassifier(t)
	if got := pg.Classify("TRUNCATE t").Class; got != ClassWrite {
		t.Fatalf("postgres TRUNCATE = %q, want write", got)
	}
	if got := c.Classify("TRUNCATE t").Class; got != ClassAdmin {
		t.Fatalf("mysql TRUNCATE = %q, want admin", got)
	}
}

func TestConfigDialect(t *testing.T) {
	cfg := Config{}
	if err := cfg.CheckAndSetDefaults(); err != nil || cfg.Dialect != DialectPostgres {
		t.Fatalf("default dialect = %q, %v; want postgres", cfg.Dialect, err)
	}
	_, err := NewClassifier(Config{Dialect: "oracle"})
	if err == nil || !strings.Contains(err.Error(), `unknown dialect "oracle"`) {
		t.Fatalf("NewClassifier(oracle) error = %v, want unknown dialect", err)
	}
}

func TestMySQLDeepNestingFailsClosed(t *testing.T) {
	c := newMySQLTestClassifier(t)
	sql := "SELECT " + strings.Repeat("(", 100000) + "1" + strings.Repeat(")", 100000)
	if got := c.Classify(sql); got.Class != ClassUnknown {
		t.Fatalf("deeply nested statement = %+v, want unknown", got)
	}
	shallow := "SELECT " + strings.Repeat("(", 100) + "1" + strings.Repeat(")", 100)
	if got := c.Classify(shallow); got.Class != ClassRead {
		t.Fatalf("100-deep statement = %+v, want read", got)
	}
}

func TestNormalizeMySQL(t *testing.T) {
	got, err := NormalizeMySQL("SELECT * FROM t WHERE name = 'secret' AND id IN (1, 2, 3)")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(got, "secret") || !strings.Contains(got, "?") {
		t.Fatalf("NormalizeMySQL = %q, want constants replaced", got)
	}
	if _, err := NormalizeMySQL("SELEC 1"); err == nil {
		t.Fatal("NormalizeMySQL(garbage) succeeded")
	}
}
