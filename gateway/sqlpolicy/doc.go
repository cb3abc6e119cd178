// Package sqlpolicy classifies PostgreSQL and MySQL statements as read,
// write, admin or unknown so the gateway can refuse what a role's
// `statements:` level does not grant before the database ever sees it.
//
// Classification uses the real PostgreSQL 17 grammar (pg_query_go, cgo), never
// regular expressions: comments, dollar quoting, case and multi-statement
// strings are handled exactly as the server would. Anything the rules do not
// recognise — parse errors, DO blocks, CALL, EXECUTE of a prepared statement,
// statement kinds added by a later grammar — is ClassUnknown, which only admin
// identities may run (fail closed).
//
// The classifier sees syntax, not catalog state. A SELECT calling a function
// that a user declared can still write, and so can triggers, rules and
// user-defined operators or casts. The deny-list in functions.go catches the
// built-in functions with side effects, but a hard read-only guarantee must
// come from the database role the identity maps to (grants, no ownership);
// this package is the first line, not the only one.
//
// Choices worth knowing (each has a test):
//   - TRUNCATE is write: it removes rows like DELETE but changes no schema.
//   - ANALYZE is write (planner statistics only); VACUUM is admin (VACUUM
//     FULL rewrites tables under an exclusive lock), as are CLUSTER and REINDEX.
//   - EXPLAIN without ANALYZE is read whatever it explains (the statement is
//     only planned); EXPLAIN ANALYZE takes the class of the statement it runs.
//   - SELECT ... FOR UPDATE/SHARE is write (row locks); SELECT INTO and
//     CREATE TABLE AS are admin (they create objects).
//   - SET/RESET of session settings is read, since drivers and psql send
//     them; SET/RESET ROLE, SESSION AUTHORIZATION and sigil.* (the identity
//     markers the gateway sets; pass them as startup parameters so RESET ALL
//     and DISCARD ALL return to them) are admin.
//   - SQL-level EXECUTE is unknown: the prepared text is not in the message.
//     The extended protocol's Parse message carries its text and is
//     classified normally.
//   - An empty string (only whitespace/comments) is read: the server does
//     nothing and drivers use it as a ping. Invalid UTF-8 is unknown.
//   - Two-phase commit (PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED) is write.
//
// MySQL and MariaDB (Config.Dialect = DialectMySQL) use the TiDB parser, a
// pure-Go MySQL 8 grammar, with the same classes, Result, Allowed and cache.
// Its choices (each has a test in mysql_test.go):
//   - TRUNCATE is admin: in MySQL it is DDL (implicit commit, DROP privilege).
//   - SELECT ... FOR UPDATE/SHARE/LOCK IN SHARE MODE and LOCK TABLES are
//     write; INTO OUTFILE, LOAD DATA from a server file and LOAD_FILE() are
//     admin; LOAD DATA LOCAL is write. SLEEP and BENCHMARK stay read.
//   - SET of session variables is read; SET GLOBAL, the replication and
//     binary-log session variables, and anything named sigil* (the identity
//     variables the gateway sets; also `@sigil_x := ...` inside any
//     statement) are admin. SET NAMES to big5, cp932, gbk, gb18030 or sjis is
//     unknown: their multibyte characters can end in a backslash byte, which
//     moves where string literals end (the gateway must refuse those
//     character sets in the handshake too).
//   - CALL, EXECUTE and PREPARE FROM @var are unknown; PREPARE FROM 'text'
//     takes the class of the text.
//   - Syntax the TiDB grammar lacks (INTO DUMPFILE, SELECT INTO @var, SET
//     PERSIST, INSTALL PLUGIN, triggers, events, stored functions, XA,
//     HANDLER, replication commands, MariaDB RETURNING and SET STATEMENT) is a
//     parse error, hence unknown. Version comments /*!NNNNN ... */ are always
//     read as code (stricter than the server); MariaDB's /*M! ... */ too.
//   - Text containing a backslash or double quote is classified under the
//     default sql_mode and under ANSI_QUOTES and NO_BACKSLASH_ESCAPES, and
//     the worst reading wins, since either may be the session's mode.
//
// Results are cached by exact statement text in an LRU, because prepared
// statements and ORMs send the same text over and over.
package sqlpolicy
