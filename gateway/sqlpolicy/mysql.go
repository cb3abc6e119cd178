package sqlpolicy

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/gravitational/trace"
	"github.com/pingcap/tidb/pkg/parser"
	"github.com/pingcap/tidb/pkg/parser/ast"
	"github.com/pingcap/tidb/pkg/parser/mysql"
	// The parser needs a value-expression driver to build literals; the
	// test driver is the self-contained one (TiDB's own pulls in the whole
	// server). Its init only fills the parser's constructor hooks.
	_ "github.com/pingcap/tidb/pkg/parser/test_driver"
)

const (
	// mysqlMaxDepth bounds the AST depth the classifier walks. Real
	// statements nest a few dozen levels; beyond this the statement is
	// unknown rather than a deep recursion on every visit.
	mysqlMaxDepth = 2000
	// mysqlMaxPrepareDepth bounds PREPARE ... FROM 'PREPARE ... FROM ...'.
	mysqlMaxPrepareDepth = 3
	// sigilVarPrefix marks the user and system variables the gateway sets
	// to name the identity; clients must not be able to forge them. The
	// prefix is deliberately wider than "sigil_".
	sigilVarPrefix = "sigil"
)

// mysqlParsers reuses parsers: one is not safe for concurrent use, and a
// fresh one allocates a 200-entry symbol stack.
type mysqlParsers struct {
	pool sync.Pool
}

func newMySQLParsers() *mysqlParsers {
	return &mysqlParsers{pool: sync.Pool{New: func() any { return parser.New() }}}
}

func (m *mysqlParsers) parse(sql string) ([]ast.StmtNode, error) {
	return m.parseMode(sql, 0)
}

// parseMode parses with the default SQL mode plus extra.
func (m *mysqlParsers) parseMode(sql string, extra mysql.SQLMode) (stmts []ast.StmtNode, err error) {
	p := m.pool.Get().(*parser.Parser)
	defer func() {
		if r := recover(); r != nil {
			// The test driver panics on numeric literals it cannot
			// represent (over 81 digits). A parser that panicked is
			// dropped rather than pooled.
			stmts, err = nil, errors.New("the parser failed on this text")
			return
		}
		// Reset restores the default SQL mode: a pooled parser must
		// not keep an alternate one for the next caller.
		p.Reset()
		m.pool.Put(p)
	}()
	if extra != 0 {
		mode, err := mysql.GetSQLMode(mysql.DefaultSQLMode)
		if err != nil {
			return nil, err
		}
		p.SetSQLMode(mode | extra)
	}
	stmts, _, err = p.Parse(sql, "", "")
	return stmts, err
}

// mysqlAltModes are the sql_mode flags that change where quoted tokens end,
// and so where statements end: a session may set them (SET sql_mode is
// read, drivers send it) or the server default may hold them.
var mysqlAltModes = []struct {
	name string
	mode mysql.SQLMode
}{
	{"ANSI_QUOTES", mysql.ModeANSIQuotes},
	{"NO_BACKSLASH_ESCAPES", mysql.ModeNoBackslashEscapes},
	{"ANSI_QUOTES,NO_BACKSLASH_ESCAPES", mysql.ModeANSIQuotes | mysql.ModeNoBackslashEscapes},
}

// classifyText parses sql with the TiDB/MySQL grammar and combines the
// verdicts of its statements. The text is classified as the server would
// read it under any sql_mode: `SELECT 'a\'; DROP TABLE t; -- '` is one
// SELECT by default but a DROP under NO_BACKSLASH_ESCAPES.
func (m *mysqlParsers) classifyText(sql string, depth int) Result {
	if bad, ok := mysqlUnsafeBytes(sql); ok {
		return Result{Class: ClassUnknown, Reason: bad}
	}
	// MariaDB runs /*M! ... */ like /*! ... */; the TiDB lexer would skip
	// it as a comment.
	sql = mariaDBComments(sql)
	r := m.classifyMode(sql, depth, 0)
	if r.Class == ClassUnknown || !strings.ContainsAny(sql, "\\\"") {
		return r
	}
	for _, alt := range mysqlAltModes {
		ar := m.classifyMode(sql, depth, alt.mode)
		if strings.HasPrefix(ar.Reason, "parse error") {
			// The server in that mode refuses the text, but it parses
			// and runs a multi-statement string one statement at a
			// time: whatever precedes the error still runs. Those
			// statements end at a semicolon, so classify every prefix
			// ending at one that parses in that mode.
			var ok bool
			if ar, ok = m.classifyPrefixes(sql, depth, alt.mode); !ok {
				return Result{Class: ClassUnknown, Reason: "statement boundaries depend on sql_mode " + alt.name}
			}
			if ar.Statements == 0 {
				continue
			}
		}
		if severity(ar.Class) > severity(r.Class) {
			r = Result{Class: ar.Class, Reason: ar.Reason + " (under sql_mode " + alt.name + ")", Statements: max(r.Statements, ar.Statements)}
		}
	}
	return r
}

// mysqlMaxPrefixParses bounds the prefixes classifyPrefixes parses.
const mysqlMaxPrefixParses = 32

// classifyPrefixes combines the classes of every prefix of sql ending at a
// semicolon that parses in mode extra. It reports false if there are too
// many semicolons to try.
func (m *mysqlParsers) classifyPrefixes(sql string, depth int, extra mysql.SQLMode) (Result, bool) {
	if strings.Count(sql, ";") > mysqlMaxPrefixParses {
		return Result{}, false
	}
	var best Result
	for i := 0; i < len(sql); i++ {
		if sql[i] != ';' {
			continue
		}
		pr := m.classifyMode(sql[:i], depth, extra)
		if strings.HasPrefix(pr.Reason, "parse error") || pr.Statements == 0 {
			continue
		}
		if best.Statements == 0 || severity(pr.Class) > severity(best.Class) {
			best = pr
		}
	}
	return best, true
}

// classifyMode classifies sql parsed with the default SQL mode plus extra.
func (m *mysqlParsers) classifyMode(sql string, depth int, extra mysql.SQLMode) Result {
	stmts, err := m.parseMode(sql, extra)
	if err != nil {
		return Result{Class: ClassUnknown, Reason: "parse error: " + mysqlParseError(err)}
	}
	n := len(stmts)
	if n == 0 {
		// Only whitespace, comments or semicolons (the server answers
		// ER_EMPTY_QUERY); nothing runs.
		return Result{Class: ClassRead, Reason: "empty statement", Statements: 0}
	}
	var best verdict
	for i, s := range stmts {
		v := m.classifyStmt(s, depth)
		if n > 1 {
			v.reason = fmt.Sprintf("statement %d of %d: %s", i+1, n, v.reason)
		}
		if i == 0 {
			best = v
			continue
		}
		best = best.max(v)
	}
	return Result{Class: best.class, Reason: best.reason, Statements: n}
}

// mysqlParseError shortens the parser's error (which quotes up to 80 bytes
// of the statement) to one line without the internal stack.
func mysqlParseError(err error) string {
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	return strings.TrimSpace(msg)
}

// mariaDBComments rewrites MariaDB's executable comments /*M!ver ... */ to
// the MySQL spelling /*! ... */ the TiDB lexer treats as code. The length is
// unchanged, and inside a string literal the rewrite changes only the
// literal's bytes, never the statement's structure. MariaDB spells it with
// a capital M only.
func mariaDBComments(sql string) string {
	i := strings.Index(sql, "/*M!")
	if i < 0 {
		return sql
	}
	b := []byte(sql)
	for ; i >= 0; i = strings.Index(string(b), "/*M!") {
		// MariaDB versions have six digits, MySQL's lexer takes five;
		// blank them so the lexer sees no version at all.
		copy(b[i:], "/*! ")
		for j := i + 4; j < len(b) && b[j] >= '0' && b[j] <= '9'; j++ {
			b[j] = ' '
		}
	}
	return string(b)
}

// mysqlUnsafeBytes refuses a byte of 0x80 or more directly before a
// backslash in text that is not UTF-8. In big5, cp932, gbk, gb18030 and sjis the second byte
// of a character may be 0x5c ('\\'), so a connection in one of those
// character sets ends string literals elsewhere than the UTF-8 parse: the
// classic escape bypass. Valid UTF-8 never has a lead byte there and
// latin1/binary text needs no escaping there, so this costs little.
func mysqlUnsafeBytes(sql string) (string, bool) {
	if utf8.ValidString(sql) {
		return "", false
	}
	for i := 1; i < len(sql); i++ {
		if sql[i] == '\\' && sql[i-1] >= 0x80 {
			return "byte 0x80 or above before a backslash in text that is not UTF-8: its meaning depends on the connection character set", true
		}
	}
	return "", false
}

// classifyStmt classifies one top-level (or EXPLAIN/PREPARE inner) statement.
func (m *mysqlParsers) classifyStmt(s ast.StmtNode, depth int) verdict {
	switch s := s.(type) {
	case *ast.SelectStmt:
		return myWalk(s, read(mySelectReason(s)))
	case *ast.SetOprStmt:
		return myWalk(s, read("SELECT ... UNION"))
	case *ast.ShowStmt:
		return myWalk(s, read("SHOW"))
	case *ast.ExplainStmt:
		if s.Stmt == nil {
			return unknown("EXPLAIN of a plan digest")
		}
		if _, ok := s.Stmt.(*ast.ShowStmt); ok {
			return read("DESCRIBE")
		}
		if !s.Analyze {
			// Without ANALYZE the statement is only planned, never run.
			return read("EXPLAIN without ANALYZE")
		}
		inner := m.classifyStmt(s.Stmt, depth)
		inner.reason = "EXPLAIN ANALYZE executes " + inner.reason
		return inner
	case *ast.ExplainForStmt:
		return read("EXPLAIN FOR CONNECTION")
	case *ast.UseStmt:
		return read("USE")
	case *ast.HelpStmt:
		return read("HELP")
	case *ast.SetStmt:
		return mySetVerdict(s)
	case *ast.BeginStmt:
		return read("BEGIN")
	case *ast.CommitStmt:
		return read("COMMIT")
	case *ast.RollbackStmt:
		if s.SavepointName != "" {
			return read("ROLLBACK TO SAVEPOINT")
		}
		return read("ROLLBACK")
	case *ast.SavepointStmt:
		return read("SAVEPOINT")
	case *ast.ReleaseSavepointStmt:
		return read("RELEASE SAVEPOINT")
	case *ast.DoStmt:
		return myWalk(s, read("DO"))
	case *ast.DeallocateStmt:
		return read("DEALLOCATE PREPARE")
	case *ast.UnlockTablesStmt:
		return read("UNLOCK TABLES")

	case *ast.InsertStmt:
		verb := "INSERT into "
		if s.IsReplace {
			verb = "REPLACE into "
		}
		return myWalk(s, write(verb+myTableRefs(s.Table)))
	case *ast.UpdateStmt:
		return myWalk(s, write("UPDATE "+myTableRefs(s.TableRefs)))
	case *ast.DeleteStmt:
		return myWalk(s, write("DELETE from "+myTableRefs(s.TableRefs)))
	case *ast.LoadDataStmt:
		return myLoadData(s)
	case *ast.LockTablesStmt:
		return write("LOCK TABLES")

	case *ast.PrepareStmt:
		if s.SQLVar != nil {
			return unknown("PREPARE " + s.Name + " FROM a variable: its text is not visible")
		}
		if depth >= mysqlMaxPrepareDepth {
			return unknown("PREPARE nested too deeply")
		}
		inner := m.classifyText(s.SQLText, depth+1)
		if inner.Statements > 1 {
			// The server refuses multi-statement PREPARE text anyway.
			return unknown("PREPARE " + s.Name + " of several statements")
		}
		return verdict{inner.Class, "PREPARE " + s.Name + ": " + inner.Reason}
	case *ast.ExecuteStmt:
		// The prepared text was classified at PREPARE time, maybe in
		// another message; this package keeps no session state.
		return unknown("EXECUTE of prepared statement " + s.Name + ": its text is not visible")
	case *ast.CallStmt:
		// Stored procedures may write, run dynamic SQL and commit.
		return unknown("CALL procedure")

	case *ast.TruncateTableStmt:
		// In MySQL TRUNCATE is DDL (drop and re-create, implicit commit,
		// needs DROP privilege), unlike PostgreSQL where it is write.
		return admin("TRUNCATE TABLE " + myTableName(s.Table))
	case *ast.KillStmt:
		// KILL QUERY of the client's own connection is harmless, but the
		// connection id the server sees is the gateway's; the gateway
		// decides that case itself.
		if s.Query {
			return admin("KILL QUERY")
		}
		return admin("KILL CONNECTION")
	case *ast.FlushStmt:
		return admin("FLUSH")
	case *ast.GrantStmt, *ast.GrantRoleStmt, *ast.GrantProxyStmt:
		return admin("GRANT")
	case *ast.RevokeStmt, *ast.RevokeRoleStmt:
		return admin("REVOKE")
	case *ast.CreateUserStmt:
		return admin("CREATE USER")
	case *ast.AlterUserStmt:
		return admin("ALTER USER")
	case *ast.DropUserStmt:
		return admin("DROP USER")
	case *ast.RenameUserStmt:
		return admin("RENAME USER")
	case *ast.SetPwdStmt:
		return admin("SET PASSWORD")
	case *ast.SetRoleStmt:
		// Activates other roles' privileges in the session.
		return admin("SET ROLE")
	case *ast.SetDefaultRoleStmt:
		return admin("SET DEFAULT ROLE")
	case *ast.SetConfigStmt:
		return admin("SET CONFIG")
	case *ast.ShutdownStmt:
		return admin("SHUTDOWN")
	case *ast.RestartStmt:
		return admin("RESTART")
	case *ast.AlterInstanceStmt:
		return admin("ALTER INSTANCE")
	case *ast.BinlogStmt:
		return admin("BINLOG")
	case *ast.ImportIntoStmt:
		return admin("IMPORT INTO")
	case *ast.BRIEStmt:
		return admin("BACKUP/RESTORE")
	case *ast.AnalyzeTableStmt:
		// Statistics only, like PostgreSQL's ANALYZE.
		return write("ANALYZE TABLE")
	case *ast.CreateTableStmt:
		return admin("CREATE TABLE " + myTableName(s.Table))
	case *ast.DropTableStmt:
		if s.IsView {
			return admin("DROP VIEW")
		}
		return admin("DROP TABLE")
	case *ast.AlterTableStmt:
		return admin("ALTER TABLE " + myTableName(s.Table))
	case *ast.RenameTableStmt:
		return admin("RENAME TABLE")
	case *ast.CreateDatabaseStmt:
		return admin("CREATE DATABASE")
	case *ast.DropDatabaseStmt:
		return admin("DROP DATABASE")
	case *ast.CreateIndexStmt:
		return admin("CREATE INDEX")
	case *ast.DropIndexStmt:
		return admin("DROP INDEX")
	case *ast.CreateViewStmt:
		return admin("CREATE VIEW")
	case *ast.ProcedureInfo:
		return admin("CREATE PROCEDURE")
	case *ast.DropProcedureStmt:
		return admin("DROP PROCEDURE")
	case ast.DDLNode:
		// Every other schema change the grammar knows (databases,
		// sequences, OPTIMIZE/REPAIR TABLE, TiDB placement policies...).
		return admin("DDL (" + myStmtName(s) + ")")
	}
	// TiDB-only administration (ADMIN, SPLIT, TRACE, bindings, stats...)
	// and anything a later grammar adds.
	return unknown("unrecognised statement (" + myStmtName(s) + ")")
}

// myStmtName is the AST type name, e.g. "CreateSequenceStmt".
func myStmtName(s ast.Node) string {
	name := fmt.Sprintf("%T", s)
	return strings.TrimPrefix(name, "*ast.")
}

func mySelectReason(s *ast.SelectStmt) string {
	switch s.Kind {
	case ast.SelectStmtKindTable:
		return "TABLE"
	case ast.SelectStmtKindValues:
		return "VALUES"
	}
	return "SELECT"
}

// mySetVerdict classifies SET of user and system variables. Session
// settings are read because every driver sends them on connect.
func mySetVerdict(s *ast.SetStmt) verdict {
	if len(s.Variables) == 0 {
		return unknown("SET without a variable")
	}
	var v verdict
	for i, a := range s.Variables {
		if a == nil {
			return unknown("SET without a variable")
		}
		name := strings.ToLower(a.Name)
		var av verdict
		switch {
		case strings.HasPrefix(name, sigilVarPrefix):
			// The gateway names the identity in these; a client must
			// not be able to overwrite them.
			av = admin("SET " + mySetTarget(a) + " (gateway identity variable)")
		case a.Name == ast.SetNames || a.Name == ast.SetCharset || (a.IsSystem && name == "character_set_client"):
			av = myClientCharset(a)
		case a.IsSystem && (a.IsGlobal || a.IsInstance):
			av = admin("SET GLOBAL " + name)
		case a.IsSystem && mysqlPrivilegedSessionVars[name]:
			av = admin("SET " + name + " (needs SYSTEM_VARIABLES_ADMIN)")
		default:
			av = read("SET " + mySetTarget(a))
		}
		// The value may be a subquery or call a deny-listed function.
		if a.Value != nil {
			av = myWalk(a.Value, av)
		}
		if i == 0 {
			v = av
			continue
		}
		v = v.max(av)
	}
	return v
}

// myClientCharset allows client character sets in which a multibyte
// character never contains the byte '\\' or a quote, so that the
// classifier's UTF-8 reading of string literals ends them where the server
// does. big5, cp932, gbk, gb18030 and sjis do not have that property (the
// escape bypass behind CVE-2006-2753); the gateway must likewise refuse them
// in the handshake.
func myClientCharset(a *ast.VariableAssignment) verdict {
	cs := ""
	switch x := a.Value.(type) {
	case ast.ValueExpr:
		cs = strings.ToLower(x.GetString())
	case *ast.ColumnNameExpr:
		cs = x.Name.Name.L
	}
	switch {
	case a.IsGlobal || a.IsInstance:
		return admin("SET GLOBAL " + mySetName(a))
	case cs == "" || strings.Trim(cs, "0123456789") == "":
		// The server also takes a collation number, which may name any
		// character set, unsafe ones included.
		return unknown("SET " + mySetName(a) + " to a value that is not a character set name")
	case mysqlUnsafeCharsets[cs]:
		return unknown("SET " + mySetName(a) + " " + cs + ": its multibyte characters may contain a backslash byte")
	}
	return read("SET " + mySetName(a) + " " + cs)
}

// name is how a SET target reads in a reason.
func mySetName(a *ast.VariableAssignment) string {
	switch a.Name {
	case ast.SetNames:
		return "NAMES"
	case ast.SetCharset:
		return "CHARACTER SET"
	}
	return mySetTarget(a)
}

var mysqlUnsafeCharsets = map[string]bool{
	"big5": true, "cp932": true, "gbk": true, "gb18030": true, "sjis": true,
}

func mySetTarget(a *ast.VariableAssignment) string {
	if a.IsSystem {
		return "@@" + strings.ToLower(a.Name)
	}
	return "@" + strings.ToLower(a.Name)
}

// mysqlPrivilegedSessionVars are session variables whose change affects
// replication, the binary log or auditing; MySQL requires
// SYSTEM_VARIABLES_ADMIN (or SUPER) to set them even for the session.
var mysqlPrivilegedSessionVars = map[string]bool{
	"sql_log_bin":               true,
	"sql_log_off":               true,
	"gtid_next":                 true,
	"pseudo_thread_id":          true,
	"pseudo_slave_mode":         true,
	"pseudo_replica_mode":       true,
	"binlog_format":             true,
	"binlog_row_image":          true,
	"original_commit_timestamp": true,
	"original_server_version":   true,
	"immediate_server_version":  true,
	"rbr_exec_mode":             true,
	"skip_replication":          true,
	"gtid_seq_no":               true,
	"gtid_domain_id":            true,
	"server_id":                 true,
}

func myLoadData(s *ast.LoadDataStmt) verdict {
	v := write("LOAD DATA LOCAL into " + myTableName(s.Table))
	if s.FileLocRef != ast.FileLocClient {
		v = admin("LOAD DATA reads a file on the database server")
	}
	for _, c := range s.ColumnsAndUserVars {
		if c != nil && c.UserVar != nil && strings.HasPrefix(strings.ToLower(c.UserVar.Name), sigilVarPrefix) {
			v = v.max(admin("LOAD DATA into @" + strings.ToLower(c.UserVar.Name) + " (gateway identity variable)"))
		}
	}
	return myWalk(s, v)
}

func myTableName(t *ast.TableName) string {
	if t == nil {
		return "?"
	}
	if t.Schema.O != "" {
		return t.Schema.O + "." + t.Name.O
	}
	return t.Name.O
}

// myTableRefs names the first table of a FROM/INTO clause, enough for a
// reason string.
func myTableRefs(c *ast.TableRefsClause) string {
	if c == nil || c.TableRefs == nil {
		return "?"
	}
	var name string
	c.TableRefs.Accept(&firstTable{name: &name})
	if name == "" {
		return "?"
	}
	return name
}

type firstTable struct{ name *string }

func (f *firstTable) Enter(n ast.Node) (ast.Node, bool) {
	if *f.name != "" {
		return n, true
	}
	if t, ok := n.(*ast.TableName); ok {
		*f.name = myTableName(t)
		return n, true
	}
	return n, false
}

func (f *firstTable) Leave(n ast.Node) (ast.Node, bool) { return n, true }

// myWalk raises base by everything found anywhere in the tree: nested
// SELECT locking and INTO clauses, deny-listed function calls and
// assignments to the gateway's identity variables.
func myWalk(root ast.Node, base verdict) verdict {
	w := &myWalker{v: base}
	root.Accept(w)
	return w.v
}

type myWalker struct {
	v     verdict
	depth int
}

func (w *myWalker) Enter(n ast.Node) (ast.Node, bool) {
	w.depth++
	if w.depth > mysqlMaxDepth {
		w.v = w.v.max(unknown("statement nested too deeply"))
		return n, true
	}
	switch x := n.(type) {
	case *ast.SelectStmt:
		w.v = w.v.max(mySelectClauses(x))
	case *ast.FuncCallExpr:
		name := x.FnName.L
		if rule, ok := lookupMySQLFunc(name); ok {
			w.v = w.v.max(verdict{rule.class, "function " + name + " " + rule.why})
		}
	case *ast.VariableExpr:
		if x.Value != nil && !x.IsSystem && strings.HasPrefix(strings.ToLower(x.Name), sigilVarPrefix) {
			w.v = w.v.max(admin("assignment to @" + strings.ToLower(x.Name) + " (gateway identity variable)"))
		}
	}
	return n, false
}

func (w *myWalker) Leave(n ast.Node) (ast.Node, bool) {
	w.depth--
	return n, true
}

// mySelectClauses returns what a SELECT's own INTO and locking clauses need.
func mySelectClauses(s *ast.SelectStmt) verdict {
	v := read("SELECT")
	if into := s.SelectIntoOpt; into != nil {
		switch into.Tp {
		case ast.SelectIntoOutfile:
			v = v.max(admin("SELECT INTO OUTFILE writes a file on the database server"))
		case ast.SelectIntoDumpfile:
			v = v.max(admin("SELECT INTO DUMPFILE writes a file on the database server"))
		default:
			v = v.max(unknown("SELECT INTO"))
		}
	}
	if li := s.LockInfo; li != nil && li.LockType != ast.SelectLockNone {
		v = v.max(write("SELECT ... " + strings.ToUpper(li.LockType.String()) + " takes row locks"))
	}
	return v
}

// NormalizeMySQL returns sql with constants replaced by '?', for storing
// statements without the values they carried.
func NormalizeMySQL(sql string) (string, error) {
	if len(sql) > DefaultMaxStatementBytes {
		return "", trace.LimitExceeded("statement too large (%d bytes, limit %d)", len(sql), DefaultMaxStatementBytes)
	}
	if _, err := newMySQLParsers().parse(sql); err != nil {
		return "", trace.BadParameter("normalize: %s", mysqlParseError(err))
	}
	normalized, _ := parser.NormalizeDigest(sql)
	return normalized, nil
}
