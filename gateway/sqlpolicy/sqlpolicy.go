package sqlpolicy

import (
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/gravitational/trace"
	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/sigilhq/sigil/api/types"
)

// Class is what a statement needs from the identity running it.
type Class string

const (
	// ClassRead changes no data, schema or privilege.
	ClassRead Class = "read"
	// ClassWrite changes data (rows, sequences, locks, notifications).
	ClassWrite Class = "write"
	// ClassAdmin changes schema, privileges, roles, server state or touches
	// the server's file system.
	ClassAdmin Class = "admin"
	// ClassUnknown could not be classified; failing closed, only admin
	// may run it.
	ClassUnknown Class = "unknown"
)

const (
	// DefaultCacheSize is the number of classified statement texts kept.
	DefaultCacheSize = 4096
	// DefaultMaxStatementBytes bounds the text handed to the parser.
	DefaultMaxStatementBytes = 1 << 20
	// DefaultCacheEntryMaxBytes bounds the text of a cached entry so that a
	// full cache stays small (4096 × 16 KiB = 64 MiB worst case); longer
	// statements are rare and are classified every time.
	DefaultCacheEntryMaxBytes = 16 << 10
)

// Result is the classification of one query string.
type Result struct {
	// Class is the most privileged class among the statements, or
	// ClassUnknown if any of them could not be classified.
	Class Class
	// Reason names what decided the class, e.g. "INSERT into public.t",
	// "DO block", "parse error: ...". It is safe to show to the client.
	Reason string
	// Statements is how many statements the string holds (0 when empty or
	// unparsable).
	Statements int
}

// Dialect is the SQL grammar a Classifier parses.
type Dialect string

const (
	// DialectPostgres is PostgreSQL 17 via pg_query; the default.
	DialectPostgres Dialect = "postgres"
	// DialectMySQL is MySQL 8 (and the MariaDB syntax it shares) via the
	// TiDB parser.
	DialectMySQL Dialect = "mysql"
)

// Config configures a Classifier.
type Config struct {
	// Dialect selects the grammar; empty means DialectPostgres.
	Dialect Dialect
	// CacheSize is the number of statement texts whose result is kept.
	CacheSize int
	// MaxStatementBytes bounds the text classified; longer text is
	// ClassUnknown "statement too large" without being parsed.
	MaxStatementBytes int
	// CacheEntryMaxBytes bounds the text of a single cached entry.
	CacheEntryMaxBytes int
	// Logger receives internal errors (never statement text).
	Logger *slog.Logger
}

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.CacheSize < 0 || c.MaxStatementBytes < 0 || c.CacheEntryMaxBytes < 0 {
		return trace.BadParameter("sqlpolicy: sizes must not be negative")
	}
	switch c.Dialect {
	case "":
		c.Dialect = DialectPostgres
	case DialectPostgres, DialectMySQL:
	default:
		return trace.BadParameter("sqlpolicy: unknown dialect %q", c.Dialect)
	}
	if c.CacheSize == 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.MaxStatementBytes == 0 {
		c.MaxStatementBytes = DefaultMaxStatementBytes
	}
	if c.CacheEntryMaxBytes == 0 {
		c.CacheEntryMaxBytes = DefaultCacheEntryMaxBytes
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Stats reports cache effectiveness.
type Stats struct {
	Hits    uint64
	Misses  uint64
	Entries int
}

// Classifier classifies statements; it is safe for concurrent use.
type Classifier struct {
	cfg   Config
	cache *lru
	// classify parses and classifies text in the configured dialect.
	classify func(sql string) Result
	hits     atomic.Uint64
	misses   atomic.Uint64
}

// NewClassifier returns a Classifier with an empty cache.
func NewClassifier(cfg Config) (*Classifier, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	c := &Classifier{cfg: cfg, cache: newLRU(cfg.CacheSize), classify: classifyText}
	if cfg.Dialect == DialectMySQL {
		parsers := newMySQLParsers()
		c.classify = func(sql string) Result { return parsers.classifyText(sql, 0) }
	}
	return c, nil
}

// Classify returns the class of every statement in sql combined: the most
// privileged one wins and any unknown part makes the whole string unknown.
func (c *Classifier) Classify(sql string) Result {
	if len(sql) > c.cfg.MaxStatementBytes {
		return Result{Class: ClassUnknown, Reason: fmt.Sprintf("statement too large (%d bytes, limit %d)", len(sql), c.cfg.MaxStatementBytes)}
	}
	cacheable := len(sql) <= c.cfg.CacheEntryMaxBytes
	key := sql
	if cacheable {
		key = shapeKey(sql)
		if r, ok := c.cache.get(key); ok {
			c.hits.Add(1)
			return r
		}
	}
	c.misses.Add(1)
	r := c.classifyUncached(sql)
	if cacheable {
		c.cache.add(key, r)
	}
	return r
}

// Stats returns cache counters.
func (c *Classifier) Stats() Stats {
	return Stats{Hits: c.hits.Load(), Misses: c.misses.Load(), Entries: c.cache.len()}
}

func (c *Classifier) classifyUncached(sql string) (r Result) {
	// The parsers are C code behind cgo (PostgreSQL) or a generated Go
	// parser (MySQL) and the tree walks are ours; none
	// should panic, but if one does the statement must still be refused
	// rather than take the gateway connection down.
	defer func() {
		if p := recover(); p != nil {
			c.cfg.Logger.Error("sqlpolicy: classification panicked", "panic", fmt.Sprint(p), "bytes", len(sql))
			r = Result{Class: ClassUnknown, Reason: "internal classification error"}
		}
	}()
	return c.classify(sql)
}

// Allowed reports whether an identity granted `granted` (read, write or
// admin, as in role spec.allow.databases.statements) may run r. Unknown
// statements are allowed only for admin; an unrecognised grant allows nothing.
func Allowed(granted string, r Result) bool {
	g := types.StatementsRank(granted)
	if g == 0 {
		return false
	}
	need := rank(r.Class)
	if need == 0 {
		// ClassUnknown or a zero Result: fail closed.
		return g >= types.StatementsRank(types.StatementsAdmin)
	}
	return g >= need
}

// rank orders known classes the same way types.StatementsRank does; 0 is
// unknown.
func rank(c Class) int {
	switch c {
	case ClassRead, ClassWrite, ClassAdmin:
		return types.StatementsRank(string(c))
	}
	return 0
}

// Normalize returns sql with constants replaced by $n placeholders, for
// storing statements without the values they carried.
func Normalize(sql string) (string, error) {
	if len(sql) > DefaultMaxStatementBytes {
		return "", trace.LimitExceeded("statement too large (%d bytes, limit %d)", len(sql), DefaultMaxStatementBytes)
	}
	out, err := pg_query.Normalize(sql)
	if err != nil {
		return "", trace.BadParameter("normalize: %v", err)
	}
	return out, nil
}

// Grant is what one database session may run: the statements level of
// the role that granted the session and whether its writes wait for a
// human approval.
type Grant struct {
	// Statements is read, write or admin.
	Statements string
	// Role granted it; refusals name it.
	Role string
	// WriteApproval makes each statement the level allows but that is not
	// a read wait for a human approval (see NeedsApproval).
	WriteApproval bool
}

// Refusal applies g's statements level to a classification: the refusal
// message the client gets (naming the statement, its class and the role),
// or "" and true when the level allows it. A write the level allows is
// not refused here even under WriteApproval: the caller asks NeedsApproval.
func (g Grant) Refusal(res Result) (string, bool) {
	reason := res.Reason
	if reason == "" {
		reason = "the statement"
	}
	if !Allowed(g.Statements, res) {
		if res.Class == ClassUnknown || res.Class == "" {
			return fmt.Sprintf("sigil: statement refused: %s cannot be classified, so it needs statements: admin; role %q grants %s", reason, g.Role, g.Statements), false
		}
		return fmt.Sprintf("sigil: statement refused: %s is %s %s statement; role %q grants %s", reason, article(string(res.Class)), res.Class, g.Role, g.Statements), false
	}
	return "", true
}

// NeedsApproval reports whether a statement that Refusal allows must
// first have a human approval: under WriteApproval, anything that is not
// a read. An unclassifiable statement (allowed only to admin) counts as a
// write, since it may be one.
func (g Grant) NeedsApproval(res Result) bool {
	return g.WriteApproval && res.Class != ClassRead && Allowed(g.Statements, res)
}

func article(s string) string {
	if s != "" && strings.ContainsRune("aeiou", rune(s[0])) {
		return "an"
	}
	return "a"
}
