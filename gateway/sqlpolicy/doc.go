// Package sqlpolicy classifies PostgreSQL statements as read, write, admin or
// unknown so the gateway can refuse what a role's `statements:` level does not
// grant before the database ever sees it.
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
// Results are cached by exact statement text in an LRU, because prepared
// statements and ORMs send the same text over and over.
package sqlpolicy
