package sqlpolicy

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"strings"
	"unicode/utf8"

	"github.com/gravitational/trace"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/pingcap/tidb/pkg/parser"
	"github.com/pingcap/tidb/pkg/parser/ast"
	"github.com/pingcap/tidb/pkg/parser/format"
)

// fingerprintDomain separates these hashes from any other SHA-256 of the
// same bytes, and this encoding from a later one.
const fingerprintDomain = "sigil statement fingerprint v1"

// Fingerprint returns a hex SHA-256 identifying the exact statement an
// approval is bound to: text in dialect (empty means PostgreSQL) with its
// bound parameters. Whitespace, comments and keyword case do not change
// it; literal values, identifiers and parameters do.
//
// The text is canonicalised with the real parser as two parts: the
// parser's structural digest (pg_query's fingerprint, TiDB's statement
// digest), which keeps every clause but not the constants, and the
// statement printed back from its tree (deparse, Restore), which keeps the
// constants. Two texts collide only if both parts agree, so a printer that
// drops a clause cannot make two different statements equal. Text the
// parser cannot read, or whose meaning depends on session settings the
// parser does not know (backslashes in PostgreSQL; backslashes, double
// quotes, executable comments and charset introducers in MySQL), is hashed
// as its exact bytes instead: it still matches itself, and only itself.
//
// Parameters are hashed length-prefixed and in order, a nil parameter
// differently from an empty one. It fails only for an unknown dialect.
func Fingerprint(dialect Dialect, text string, params [][]byte) (string, error) {
	var canon string
	var ok bool
	switch dialect {
	case "", DialectPostgres:
		dialect = DialectPostgres
		canon, ok = canonicalPostgres(text)
	case DialectMySQL:
		canon, ok = canonicalMySQL(text)
	default:
		return "", trace.BadParameter("sqlpolicy: unknown dialect %q", dialect)
	}
	h := sha256.New()
	writeField(h, fingerprintDomain)
	writeField(h, string(dialect))
	if ok {
		writeField(h, "canonical")
		writeField(h, canon)
	} else {
		writeField(h, "raw")
		writeField(h, text)
	}
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(params)))
	h.Write(n[:])
	for _, p := range params {
		if p == nil {
			h.Write([]byte{0})
			continue
		}
		h.Write([]byte{1})
		writeField(h, string(p))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeField hashes s with its length first, so that no two sequences of
// fields share an encoding.
func writeField(h hash.Hash, s string) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(s)))
	h.Write(n[:])
	_, _ = h.Write([]byte(s))
}

// canonicalPostgres returns text's canonical form, or false when the raw
// bytes must be used.
func canonicalPostgres(text string) (canon string, ok bool) {
	// Invalid UTF-8 cannot go through pg_query's protobuf tree. With
	// standard_conforming_strings off (a session may set it) a backslash
	// in a string ends it elsewhere than the parser assumes.
	if len(text) > DefaultMaxStatementBytes || !utf8.ValidString(text) || strings.ContainsRune(text, '\\') {
		return "", false
	}
	defer func() {
		if recover() != nil {
			canon, ok = "", false
		}
	}()
	structure, err := pg_query.Fingerprint(text)
	if err != nil {
		return "", false
	}
	tree, err := pg_query.Parse(text)
	if err != nil {
		return "", false
	}
	printed, err := pg_query.Deparse(tree)
	if err != nil {
		return "", false
	}
	return structure + "\x00" + printed, true
}

// canonicalMySQL returns text's canonical form, or false when the raw
// bytes must be used.
func canonicalMySQL(text string) (canon string, ok bool) {
	if len(text) > DefaultMaxStatementBytes || !utf8.ValidString(text) || mysqlModeDependent(text) {
		return "", false
	}
	defer func() {
		if recover() != nil {
			canon, ok = "", false
		}
	}()
	stmts, err := newMySQLParsers().parse(text)
	if err != nil {
		return "", false
	}
	var b strings.Builder
	_, digest := parser.NormalizeDigest(text)
	b.WriteString(digest.String())
	for _, s := range stmts {
		b.WriteByte(0)
		if err := s.Restore(format.NewRestoreCtx(format.DefaultRestoreFlags, &b)); err != nil {
			return "", false
		}
	}
	return b.String(), true
}

// mysqlModeDependent reports text whose reading depends on what the server
// or session does and the TiDB parser cannot know: sql_mode
// (NO_BACKSLASH_ESCAPES, ANSI_QUOTES), versioned and MariaDB executable
// comments (run or skipped by server version, read as code by TiDB), and
// an explicit _utf8mb4 introducer, which TiDB prints the same as a plain
// string literal although the connection character set may differ.
func mysqlModeDependent(text string) bool {
	if strings.ContainsAny(text, "\\\"") || strings.Contains(text, "/*!") {
		return true
	}
	lower := strings.ToLower(text)
	return strings.Contains(lower, "/*m!") || strings.Contains(lower, "_utf8mb4")
}

// PreparesStatement reports whether text holds a SQL-level PREPARE. A
// write approval covers one execution; a PREPAREd write could be run
// again and again afterwards (EXECUTE, or a protocol-level Bind of its
// name), so a gateway refuses to approve one. Text it cannot parse, or
// whose statement boundaries depend on session settings, counts as a
// PREPARE when it mentions the word (fail closed).
func PreparesStatement(dialect Dialect, text string) (found bool) {
	if !strings.Contains(strings.ToLower(text), "prepare") {
		return false
	}
	defer func() {
		if recover() != nil {
			found = true
		}
	}()
	if dialect == DialectMySQL {
		if !utf8.ValidString(text) || mysqlModeDependent(text) {
			return true
		}
		stmts, err := newMySQLParsers().parse(text)
		if err != nil {
			return true
		}
		for _, s := range stmts {
			if _, ok := s.(*ast.PrepareStmt); ok {
				return true
			}
		}
		return false
	}
	if !utf8.ValidString(text) || strings.ContainsRune(text, '\\') {
		return true
	}
	tree, err := pg_query.Parse(text)
	if err != nil {
		return true
	}
	for _, s := range tree.GetStmts() {
		if s.GetStmt().GetPrepareStmt() != nil {
			return true
		}
	}
	return false
}
