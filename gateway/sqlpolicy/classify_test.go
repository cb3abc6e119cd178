package sqlpolicy

import (
	"strings"
	"testing"
)

func newTestClassifier(t testing.TB) *Classifier {
	t.Helper()
	c, err := NewClassifier(Config{})
	if err != nil {
		t.Fatalf("NewClassifier: %v", err)
	}
	return c
}

func TestClassify(t *testing.T) {
	c := newTestClassifier(t)
	tests := []struct {
		sql    string
		class  Class
		reason string
	}{
		// Reads.
		{"SELECT 1", ClassRead, "SELECT"},
		{"select * from public.users where id = $1", ClassRead, "SELECT"},
		{"SELECT a, count(*) FROM t GROUP BY a HAVING count(*) > 1 ORDER BY 2 LIMIT 10", ClassRead, "SELECT"},
		{"SELECT * FROM a JOIN b USING (id) WHERE EXISTS (SELECT 1 FROM c WHERE c.id = a.id)", ClassRead, "SELECT"},
		{"SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3", ClassRead, "SELECT"},
		{"WITH x AS (SELECT 1 AS a) SELECT a FROM x", ClassRead, "SELECT"},
		{"WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r WHERE n < 5) SELECT * FROM r", ClassRead, "SELECT"},
		{"SELECT lower(name), now(), coalesce(a, b), currval('s'), pg_sleep(0) FROM t", ClassRead, "SELECT"},
		{"SELECT row_number() OVER (PARTITION BY a ORDER BY b) FROM t", ClassRead, "SELECT"},
		{"VALUES (1, 'a'), (2, 'b')", ClassRead, "VALUES"},
		{"TABLE users", ClassRead, "SELECT"},
		{"SELECT $tag$ DELETE FROM t $tag$", ClassRead, "SELECT"},
		{"SELECT 'INSERT INTO t VALUES (1)'", ClassRead, "SELECT"},
		{"SELECT \"nextval\" FROM t", ClassRead, "SELECT"},
		{"EXPLAIN SELECT * FROM t", ClassRead, "EXPLAIN without ANALYZE"},
		{"EXPLAIN (FORMAT JSON, COSTS off) SELECT * FROM t", ClassRead, "EXPLAIN without ANALYZE"},
		{"EXPLAIN DELETE FROM t", ClassRead, "EXPLAIN without ANALYZE"},
		{"EXPLAIN (ANALYZE off) DELETE FROM t", ClassRead, "EXPLAIN without ANALYZE"},
		{"EXPLAIN (ANALYZE false) INSERT INTO t VALUES (1)", ClassRead, "EXPLAIN without ANALYZE"},
		{"EXPLAIN ANALYZE SELECT * FROM t", ClassRead, "EXPLAIN ANALYZE executes SELECT"},
		{"SHOW search_path", ClassRead, "SHOW"},
		{"SHOW ALL", ClassRead, "SHOW"},
		{"SET search_path TO public", ClassRead, "SET search_path"},
		{"SET LOCAL statement_timeout = '5s'", ClassRead, "SET statement_timeout"},
		{"SET client_encoding = 'UTF8'", ClassRead, "SET client_encoding"},
		{"SET TIME ZONE 'UTC'", ClassRead, "SET timezone"},
		{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", ClassRead, "SET TRANSACTION"},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", ClassRead, "SET SESSION CHARACTERISTICS"},
		{"RESET search_path", ClassRead, "RESET search_path"},
		{"RESET ALL", ClassRead, "RESET ALL"},
		{"SET CONSTRAINTS ALL DEFERRED", ClassRead, "SET CONSTRAINTS"},
		{"BEGIN", ClassRead, "BEGIN"},
		{"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", ClassRead, "BEGIN"},
		{"START TRANSACTION", ClassRead, "START TRANSACTION"},
		{"COMMIT", ClassRead, "COMMIT"},
		{"END", ClassRead, "COMMIT"},
		{"ROLLBACK", ClassRead, "ROLLBACK"},
		{"SAVEPOINT sp1", ClassRead, "SAVEPOINT"},
		{"RELEASE SAVEPOINT sp1", ClassRead, "RELEASE"},
		{"ROLLBACK TO SAVEPOINT sp1", ClassRead, "ROLLBACK TO SAVEPOINT"},
		{"PREPARE q(int) AS SELECT * FROM t WHERE id = $1", ClassRead, "PREPARE q: SELECT"},
		{"DEALLOCATE q", ClassRead, "DEALLOCATE"},
		{"DEALLOCATE ALL", ClassRead, "DEALLOCATE"},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", ClassRead, "DECLARE CURSOR for SELECT"},
		{"FETCH 10 FROM c", ClassRead, "FETCH"},
		{"MOVE FORWARD 5 IN c", ClassRead, "MOVE"},
		{"CLOSE c", ClassRead, "CLOSE"},
		{"CLOSE ALL", ClassRead, "CLOSE"},
		{"LISTEN chan", ClassRead, "LISTEN"},
		{"UNLISTEN *", ClassRead, "UNLISTEN"},
		{"DISCARD ALL", ClassRead, "DISCARD"},
		{"DISCARD PLANS", ClassRead, "DISCARD"},
		{"COPY t TO STDOUT", ClassRead, "COPY t TO STDOUT"},
		{"COPY public.t (a, b) TO STDOUT WITH (FORMAT csv, HEADER)", ClassRead, "COPY public.t TO STDOUT"},
		{"COPY (SELECT * FROM t WHERE a > 1) TO STDOUT", ClassRead, "COPY (SELECT) TO STDOUT"},
		{"", ClassRead, "empty statement"},
		{"   \n\t ", ClassRead, "empty statement"},
		{"-- just a comment", ClassRead, "empty statement"},
		{"/* block */ ;;", ClassRead, "empty statement"},

		// Writes.
		{"INSERT INTO public.t (a) VALUES (1)", ClassWrite, "INSERT into public.t"},
		{"insert into t select * from u", ClassWrite, "INSERT into t"},
		{"INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = excluded.b RETURNING *", ClassWrite, "INSERT into t"},
		{"UPDATE t SET a = 1 WHERE id = 2", ClassWrite, "UPDATE t"},
		{"UPDATE s.t SET a = u.a FROM u WHERE u.id = t.id", ClassWrite, "UPDATE s.t"},
		{"DELETE FROM t WHERE id = 1", ClassWrite, "DELETE from t"},
		{"DELETE FROM t USING u WHERE t.id = u.id RETURNING t.*", ClassWrite, "DELETE from t"},
		{"MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.a)", ClassWrite, "MERGE into t"},
		{"TRUNCATE t", ClassWrite, "TRUNCATE"},
		{"TRUNCATE TABLE a, b RESTART IDENTITY CASCADE", ClassWrite, "TRUNCATE"},
		{"LOCK TABLE t IN ACCESS EXCLUSIVE MODE", ClassWrite, "LOCK TABLE"},
		{"REFRESH MATERIALIZED VIEW CONCURRENTLY mv", ClassWrite, "REFRESH MATERIALIZED VIEW mv"},
		{"SELECT * FROM t FOR UPDATE", ClassWrite, "FOR UPDATE takes row locks"},
		{"SELECT * FROM t FOR SHARE SKIP LOCKED", ClassWrite, "FOR SHARE takes row locks"},
		{"SELECT * FROM t FOR NO KEY UPDATE NOWAIT", ClassWrite, "FOR NO KEY UPDATE"},
		{"SELECT * FROM t FOR KEY SHARE", ClassWrite, "FOR KEY SHARE"},
		{"SELECT * FROM (SELECT * FROM t FOR UPDATE) s", ClassWrite, "FOR UPDATE"},
		{"WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", ClassWrite, "data-modifying WITH: DELETE from t"},
		{"WITH x AS (INSERT INTO log VALUES (1) RETURNING id) SELECT id FROM x", ClassWrite, "data-modifying WITH: INSERT into log"},
		{"WITH a AS (SELECT 1), b AS (UPDATE t SET x = 1 RETURNING x) SELECT * FROM a, b", ClassWrite, "data-modifying WITH: UPDATE t"},
		{"WITH s AS (SELECT 1) INSERT INTO t SELECT * FROM s", ClassWrite, "INSERT into t"},
		{"SELECT nextval('seq')", ClassWrite, "function nextval advances a sequence"},
		{"SELECT pg_catalog.setval('seq', 10)", ClassWrite, "function setval"},
		{"SELECT id FROM t WHERE id = (SELECT nextval('s'))", ClassWrite, "nextval"},
		{"SELECT pg_advisory_lock(1)", ClassWrite, "advisory lock"},
		{"SELECT pg_try_advisory_xact_lock(1, 2)", ClassWrite, "advisory lock"},
		{"SELECT pg_notify('chan', 'x')", ClassWrite, "notification"},
		{"SELECT lo_unlink(1234)", ClassWrite, "large object"},
		{"NOTIFY chan, 'payload'", ClassWrite, "NOTIFY"},
		{"ANALYZE t", ClassWrite, "ANALYZE"},
		{"COPY t FROM STDIN", ClassWrite, "COPY t FROM STDIN"},
		{"COPY t (a, b) FROM STDIN WITH (FORMAT csv)", ClassWrite, "FROM STDIN"},
		{"COPY (DELETE FROM t RETURNING *) TO STDOUT", ClassWrite, "COPY (DELETE from t) TO STDOUT"},
		{"COPY (SELECT nextval('s')) TO STDOUT", ClassWrite, "nextval"},
		{"EXPLAIN ANALYZE DELETE FROM t", ClassWrite, "EXPLAIN ANALYZE executes DELETE from t"},
		{"EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", ClassWrite, "EXPLAIN ANALYZE executes UPDATE t"},
		{"EXPLAIN (ANALYZE true) INSERT INTO t VALUES (1)", ClassWrite, "EXPLAIN ANALYZE executes INSERT"},
		{"EXPLAIN (ANALYZE 1) INSERT INTO t VALUES (1)", ClassWrite, "EXPLAIN ANALYZE executes INSERT"},
		{"PREPARE ins(int) AS INSERT INTO t VALUES ($1)", ClassWrite, "PREPARE ins: INSERT into t"},
		{"DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", ClassWrite, "DECLARE CURSOR for SELECT ... FOR UPDATE"},
		{"PREPARE TRANSACTION 'x'", ClassWrite, "two-phase commit"},
		{"COMMIT PREPARED 'x'", ClassWrite, "two-phase commit"},

		// Admin.
		{"CREATE TABLE t (id int)", ClassAdmin, "CREATE TABLE"},
		{"CREATE TEMP TABLE t (id int)", ClassAdmin, "CREATE TABLE"},
		{"CREATE TABLE t2 AS SELECT * FROM t", ClassAdmin, "CREATE TABLE AS"},
		{"SELECT * INTO t2 FROM t", ClassAdmin, "SELECT INTO creates table t2"},
		{"CREATE MATERIALIZED VIEW mv AS SELECT 1", ClassAdmin, "CREATE MATERIALIZED VIEW"},
		{"CREATE VIEW v AS SELECT 1", ClassAdmin, "CREATE VIEW"},
		{"CREATE INDEX CONCURRENTLY i ON t (a)", ClassAdmin, "CREATE INDEX"},
		{"ALTER TABLE t ADD COLUMN b int", ClassAdmin, "ALTER TABLE"},
		{"ALTER TABLE t RENAME TO u", ClassAdmin, "RENAME"},
		{"ALTER TABLE t OWNER TO bob", ClassAdmin, "ALTER TABLE"},
		{"DROP TABLE t", ClassAdmin, "DROP"},
		{"DROP TABLE IF EXISTS a, b CASCADE", ClassAdmin, "DROP"},
		{"DROP DATABASE d", ClassAdmin, "DROP DATABASE"},
		{"CREATE DATABASE d", ClassAdmin, "CREATE DATABASE"},
		{"CREATE SCHEMA s", ClassAdmin, "CREATE SCHEMA"},
		{"CREATE SEQUENCE s", ClassAdmin, "CREATE SEQUENCE"},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", ClassAdmin, "CREATE FUNCTION"},
		{"CREATE OR REPLACE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN DELETE FROM t; END $$", ClassAdmin, "CREATE FUNCTION"},
		{"CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", ClassAdmin, "CREATE TRIGGER"},
		{"CREATE TYPE mood AS ENUM ('happy')", ClassAdmin, "ENUM"},
		{"CREATE EXTENSION IF NOT EXISTS pgcrypto", ClassAdmin, "CREATE EXTENSION"},
		{"COMMENT ON TABLE t IS 'x'", ClassAdmin, "COMMENT"},
		{"GRANT SELECT ON t TO bob", ClassAdmin, "GRANT"},
		{"REVOKE ALL ON t FROM bob", ClassAdmin, "REVOKE"},
		{"GRANT admin TO bob", ClassAdmin, "GRANT role"},
		{"REVOKE admin FROM bob", ClassAdmin, "REVOKE role"},
		{"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO bob", ClassAdmin, "ALTER DEFAULT PRIVILEGES"},
		{"CREATE ROLE bob LOGIN SUPERUSER", ClassAdmin, "CREATE ROLE"},
		{"CREATE USER bob", ClassAdmin, "CREATE ROLE"},
		{"ALTER ROLE bob WITH PASSWORD 'x'", ClassAdmin, "ALTER ROLE"},
		{"ALTER USER bob SET search_path = x", ClassAdmin, "ALTER ROLE SET"},
		{"DROP ROLE bob", ClassAdmin, "DROP ROLE"},
		{"REINDEX TABLE t", ClassAdmin, "REINDEX"},
		{"CLUSTER t USING i", ClassAdmin, "CLUSTER"},
		{"VACUUM FULL t", ClassAdmin, "VACUUM"},
		{"VACUUM (ANALYZE) t", ClassAdmin, "VACUUM"},
		{"SECURITY LABEL FOR selinux ON TABLE t IS 'x'", ClassAdmin, "SECURITY LABEL"},
		{"ALTER SYSTEM SET work_mem = '1GB'", ClassAdmin, "ALTER SYSTEM"},
		{"ALTER DATABASE d SET default_transaction_read_only = off", ClassAdmin, "ALTER DATABASE SET"},
		{"CHECKPOINT", ClassAdmin, "CHECKPOINT"},
		{"LOAD 'auto_explain'", ClassAdmin, "LOAD"},
		{"SET ROLE postgres", ClassAdmin, "SET ROLE"},
		{"SET LOCAL ROLE postgres", ClassAdmin, "SET ROLE"},
		{"RESET ROLE", ClassAdmin, "RESET ROLE"},
		{"SET SESSION AUTHORIZATION postgres", ClassAdmin, "SET SESSION AUTHORIZATION"},
		{"RESET SESSION AUTHORIZATION", ClassAdmin, "RESET SESSION AUTHORIZATION"},
		{"SET sigil.identity = 'mallory'", ClassAdmin, "gateway identity setting"},
		{"CREATE POLICY p ON t USING (true)", ClassAdmin, "CREATE POLICY"},
		{"CREATE PUBLICATION p FOR ALL TABLES", ClassAdmin, "CREATE PUBLICATION"},
		{"DROP OWNED BY bob", ClassAdmin, "DROP OWNED"},
		{"REASSIGN OWNED BY bob TO alice", ClassAdmin, "REASSIGN OWNED"},
		{"IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO t", ClassAdmin, "IMPORT FOREIGN SCHEMA"},
		{"CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", ClassAdmin, "CREATE RULE"},
		{"COPY t TO '/tmp/out.csv'", ClassAdmin, "COPY TO a file on the database server"},
		{"COPY t FROM '/etc/passwd'", ClassAdmin, "COPY FROM a file"},
		{"COPY t FROM PROGRAM 'curl evil'", ClassAdmin, "PROGRAM"},
		{"COPY (SELECT 1) TO PROGRAM 'sh'", ClassAdmin, "PROGRAM"},
		{"SELECT pg_terminate_backend(pid) FROM pg_stat_activity", ClassAdmin, "function pg_terminate_backend terminates another session"},
		{"SELECT pg_cancel_backend(42)", ClassAdmin, "pg_cancel_backend"},
		{"SELECT set_config('role', 'postgres', false)", ClassAdmin, "function set_config"},
		{"SELECT lo_import('/etc/passwd')", ClassAdmin, "lo_import"},
		{"SELECT lo_export(1, '/tmp/x')", ClassAdmin, "lo_export"},
		{"SELECT pg_read_file('/etc/passwd')", ClassAdmin, "pg_read_file"},
		{"SELECT * FROM pg_ls_dir('.')", ClassAdmin, "pg_ls_dir"},
		{"SELECT * FROM dblink('host=x', 'DELETE FROM t') AS r(a int)", ClassAdmin, "dblink"},
		{"SELECT dblink_exec('x', 'DROP TABLE t')", ClassAdmin, "dblink_exec"},
		{"SELECT PG_RELOAD_CONF()", ClassAdmin, "pg_reload_conf"},
		{"SELECT pg_create_logical_replication_slot('s', 'pgoutput')", ClassAdmin, "replication"},
		{"SELECT pg_stat_reset()", ClassAdmin, "resets statistics"},
		{"WITH x AS (SELECT pg_terminate_backend(1)) SELECT * FROM x", ClassAdmin, "pg_terminate_backend"},
		{"INSERT INTO t SELECT pg_read_file('/etc/passwd')", ClassAdmin, "pg_read_file"},
		{"EXPLAIN ANALYZE SELECT pg_terminate_backend(1)", ClassAdmin, "EXPLAIN ANALYZE executes"},
		{"DECLARE c CURSOR FOR SELECT pg_terminate_backend(1)", ClassAdmin, "pg_terminate_backend"},
		{"COPY t FROM STDIN WHERE pg_terminate_backend(1)", ClassAdmin, "pg_terminate_backend"},

		// Unknown: fail closed.
		{"DO $$ BEGIN DELETE FROM t; END $$", ClassUnknown, "DO block"},
		{"DO LANGUAGE plpgsql $body$ BEGIN PERFORM 1; END $body$", ClassUnknown, "DO block"},
		{"CALL my_proc(1)", ClassUnknown, "CALL procedure"},
		{"EXECUTE q(1)", ClassUnknown, "EXECUTE of prepared statement q"},
		{"EXPLAIN ANALYZE EXECUTE q(1)", ClassUnknown, "EXECUTE"},
		{"SELECT query_to_xml('SELECT nextval(''s'')', true, false, '')", ClassUnknown, "executes SQL text"},
		{"SELEC 1", ClassUnknown, "parse error"},
		{"SELECT (", ClassUnknown, "parse error"},
		{"SELECT 'unterminated", ClassUnknown, "parse error"},
		{"SELECT $$unterminated", ClassUnknown, "parse error"},
		{"DELETE", ClassUnknown, "parse error"},
		{"SELECT 'caf\xe9'", ClassUnknown, "not valid UTF-8"},
	}
	if len(tests) < 80 {
		t.Fatalf("table has %d cases, want at least 80", len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			got := c.Classify(tt.sql)
			if got.Class != tt.class {
				t.Fatalf("Classify(%q).Class = %q (%s), want %q", tt.sql, got.Class, got.Reason, tt.class)
			}
			if !strings.Contains(got.Reason, tt.reason) {
				t.Fatalf("Classify(%q).Reason = %q, want it to contain %q", tt.sql, got.Reason, tt.reason)
			}
		})
	}
}

func TestClassifyMultiStatement(t *testing.T) {
	c := newTestClassifier(t)
	tests := []struct {
		sql        string
		class      Class
		reason     string
		statements int
	}{
		{"SELECT 1; SELECT 2", ClassRead, "statement 1 of 2: SELECT", 2},
		{"SELECT 1; DELETE FROM t; SELECT 2", ClassWrite, "statement 2 of 3: DELETE from t", 3},
		{"BEGIN; UPDATE t SET a = 1; DROP TABLE t; COMMIT", ClassAdmin, "statement 3 of 4: DROP", 4},
		{"SELECT 1; DO $$ BEGIN END $$; DROP TABLE t", ClassUnknown, "statement 2 of 3: DO block", 3},
		{"DROP TABLE t; CALL p()", ClassUnknown, "statement 2 of 2: CALL procedure", 2},
		{"INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)", ClassWrite, "statement 1 of 2: INSERT into a", 2},
		{"SELECT 1;;; ; SELECT 2;", ClassRead, "SELECT", 2},
		// A parse error anywhere makes the whole string unknown.
		{"SELECT 1; SELEC 2", ClassUnknown, "parse error", 0},
		// A semicolon inside a string, comment or dollar quote is not a separator.
		{"SELECT ';DROP TABLE t;'", ClassRead, "SELECT", 1},
		{"SELECT 1 /* ; DROP TABLE t; */", ClassRead, "SELECT", 1},
		{"SELECT $x$ ; DROP TABLE t; $x$", ClassRead, "SELECT", 1},
		{"SELECT 1 -- ; DROP TABLE t\n", ClassRead, "SELECT", 1},
		{"SELECT 1 -- comment\n; DROP TABLE t", ClassAdmin, "statement 2 of 2: DROP", 2},
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

func TestClassifyCommentsCaseAndQuoting(t *testing.T) {
	c := newTestClassifier(t)
	tests := []struct {
		sql   string
		class Class
	}{
		{"/* leading */ SELECT 1", ClassRead},
		{"-- leading\nSELECT 1", ClassRead},
		{"/* nested /* comment */ still */ DELETE FROM t", ClassWrite},
		{"-- SELECT 1\nDELETE FROM t", ClassWrite},
		{"  \n\t dElEtE   fRoM   t  \n", ClassWrite},
		{"Select * From T For Update", ClassWrite},
		{"SELECT $$ DROP TABLE t $$", ClassRead},
		{"SELECT $a$ $b$ DELETE $b$ $a$", ClassRead},
		{"SELECT E'\\' DROP TABLE t'", ClassRead},
		{"SELECT 1 AS \"DELETE FROM t\"", ClassRead},
		{"SELECT * FROM \"DROP\"", ClassRead},
		{"DROP TABLE \"select\"", ClassAdmin},
		{"DO $$ SELECT 1 $$", ClassUnknown},
		{"/* only a comment", ClassUnknown}, // unterminated comment is a parse error
		{"SeLeCt NeXtVaL('s')", ClassWrite},
		{"SELECT myschema.NEXTVAL('s')", ClassWrite},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			if got := c.Classify(tt.sql); got.Class != tt.class {
				t.Fatalf("Classify(%q) = %+v, want class %q", tt.sql, got, tt.class)
			}
		})
	}
}

func TestClassifyTooLarge(t *testing.T) {
	c, err := NewClassifier(Config{MaxStatementBytes: 64})
	if err != nil {
		t.Fatal(err)
	}
	got := c.Classify("SELECT " + strings.Repeat("1 + ", 30) + "1")
	if got.Class != ClassUnknown || !strings.Contains(got.Reason, "statement too large") {
		t.Fatalf("oversized statement = %+v, want unknown / statement too large", got)
	}
	if st := c.Stats(); st.Entries != 0 || st.Misses != 0 {
		t.Fatalf("oversized statement touched the cache: %+v", st)
	}
	if got := c.Classify("SELECT 1"); got.Class != ClassRead {
		t.Fatalf("small statement = %+v, want read", got)
	}
}

func TestConfigRejectsNegative(t *testing.T) {
	_, err := NewClassifier(Config{CacheSize: -1})
	if err == nil || !strings.Contains(err.Error(), "must not be negative") {
		t.Fatalf("NewClassifier(CacheSize: -1) error = %v, want a 'must not be negative' error", err)
	}
}

func TestDeepNestingFailsClosed(t *testing.T) {
	c := newTestClassifier(t)
	sql := "SELECT " + strings.Repeat("(", 100000) + "1" + strings.Repeat(")", 100000)
	got := c.Classify(sql)
	if got.Class != ClassUnknown {
		t.Fatalf("deeply nested statement = %+v, want unknown", got)
	}
}

// Every statement kind in the grammar must have a rule; the few that cannot
// be top-level statements are expected to fall through to unknown.
func TestEveryStatementKindHasARule(t *testing.T) {
	notTopLevel := map[string]bool{
		"RawStmt": true, "SetOperationStmt": true, "ReturnStmt": true,
		"PLAssignStmt": true, "ReplicaIdentityStmt": true,
	}
	fields := nodeOneofStmtFields()
	if len(fields) < 100 {
		t.Fatalf("found only %d statement kinds; descriptor walk is broken", len(fields))
	}
	for name, node := range fields {
		v := classifyNode(node)
		unrecognised := strings.HasPrefix(v.reason, "unrecognised statement")
		if notTopLevel[name] != unrecognised {
			t.Errorf("%s: classified %+v, want unrecognised=%v", name, v, notTopLevel[name])
		}
	}
	for name := range adminStmts {
		if _, ok := fields[string(name)]; !ok {
			t.Errorf("adminStmts names %s, which is not a statement kind in the grammar", name)
		}
	}
}
