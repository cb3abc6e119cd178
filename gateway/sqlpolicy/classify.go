package sqlpolicy

import (
	"fmt"
	"strings"
	"unicode/utf8"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// verdict is the class of one statement (or part of one) and why.
type verdict struct {
	class  Class
	reason string
}

// severity orders classes for combining: unknown outranks admin because it
// must never be allowed below admin.
func severity(c Class) int {
	switch c {
	case ClassRead:
		return 1
	case ClassWrite:
		return 2
	case ClassAdmin:
		return 3
	}
	return 4
}

// max keeps the earlier verdict on ties so the reason names the first
// statement (or clause) that decided the class.
func (v verdict) max(o verdict) verdict {
	if severity(o.class) > severity(v.class) {
		return o
	}
	return v
}

func read(reason string) verdict    { return verdict{ClassRead, reason} }
func write(reason string) verdict   { return verdict{ClassWrite, reason} }
func admin(reason string) verdict   { return verdict{ClassAdmin, reason} }
func unknown(reason string) verdict { return verdict{ClassUnknown, reason} }

// classifyText parses sql and combines the verdicts of its statements.
func classifyText(sql string) Result {
	if !utf8.ValidString(sql) {
		// pg_query's protobuf tree cannot carry invalid UTF-8 and a UTF8
		// server would reject the bytes anyway; only a SQL_ASCII database
		// takes them, so they stay admin-only.
		return Result{Class: ClassUnknown, Reason: "statement is not valid UTF-8"}
	}
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return Result{Class: ClassUnknown, Reason: "parse error: " + err.Error()}
	}
	n := len(tree.GetStmts())
	if n == 0 {
		// Only whitespace, comments or semicolons: the server answers with
		// EmptyQueryResponse and does nothing. Drivers use it as a ping
		// (JDBC isValid), so refusing it would break read-only pools.
		return Result{Class: ClassRead, Reason: "empty statement", Statements: 0}
	}
	best := verdict{class: ClassRead}
	for i, raw := range tree.GetStmts() {
		v := classifyNode(raw.GetStmt())
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

// classifyNode classifies one top-level (or EXPLAIN/PREPARE/DECLARE/COPY
// inner) statement.
func classifyNode(n *pg_query.Node) verdict {
	if n == nil || n.Node == nil {
		return unknown("missing statement")
	}
	switch s := n.Node.(type) {
	case *pg_query.Node_SelectStmt:
		return query(n, read(selectReason(s.SelectStmt)))
	case *pg_query.Node_InsertStmt:
		return query(n, write("INSERT into "+relName(s.InsertStmt.GetRelation())))
	case *pg_query.Node_UpdateStmt:
		return query(n, write("UPDATE "+relName(s.UpdateStmt.GetRelation())))
	case *pg_query.Node_DeleteStmt:
		return query(n, write("DELETE from "+relName(s.DeleteStmt.GetRelation())))
	case *pg_query.Node_MergeStmt:
		return query(n, write("MERGE into "+relName(s.MergeStmt.GetRelation())))

	case *pg_query.Node_ExplainStmt:
		if !explainAnalyze(s.ExplainStmt.GetOptions()) {
			// Without ANALYZE the statement is only planned, never run.
			return read("EXPLAIN without ANALYZE")
		}
		inner := classifyNode(s.ExplainStmt.GetQuery())
		inner.reason = "EXPLAIN ANALYZE executes " + inner.reason
		return inner
	case *pg_query.Node_PrepareStmt:
		inner := classifyNode(s.PrepareStmt.GetQuery())
		inner.reason = "PREPARE " + s.PrepareStmt.GetName() + ": " + inner.reason
		return inner
	case *pg_query.Node_ExecuteStmt:
		// SQL-level EXECUTE names a statement PREPAREd earlier in the
		// session, possibly in another message; its text is not here. A
		// caller that tracks PREPARE results per session may decide
		// itself; this package fails closed.
		return unknown("EXECUTE of prepared statement " + s.ExecuteStmt.GetName() + ": its text is not visible")
	case *pg_query.Node_DeallocateStmt:
		return read("DEALLOCATE")
	case *pg_query.Node_DeclareCursorStmt:
		inner := classifyNode(s.DeclareCursorStmt.GetQuery())
		inner.reason = "DECLARE CURSOR for " + inner.reason
		return inner
	case *pg_query.Node_FetchStmt:
		if s.FetchStmt.GetIsmove() {
			return read("MOVE")
		}
		return read("FETCH")
	case *pg_query.Node_ClosePortalStmt:
		return read("CLOSE")

	case *pg_query.Node_VariableShowStmt:
		return read("SHOW")
	case *pg_query.Node_VariableSetStmt:
		return setVerdict(s.VariableSetStmt)
	case *pg_query.Node_ConstraintsSetStmt:
		return read("SET CONSTRAINTS")
	case *pg_query.Node_TransactionStmt:
		return transactionVerdict(s.TransactionStmt)
	case *pg_query.Node_ListenStmt:
		return read("LISTEN")
	case *pg_query.Node_UnlistenStmt:
		return read("UNLISTEN")
	case *pg_query.Node_NotifyStmt:
		return write("NOTIFY")
	case *pg_query.Node_DiscardStmt:
		return read("DISCARD")

	case *pg_query.Node_CopyStmt:
		return copyVerdict(n, s.CopyStmt)

	case *pg_query.Node_TruncateStmt:
		// TRUNCATE removes rows like DELETE (it has its own privilege and
		// takes a stronger lock) but changes no schema: write.
		return write("TRUNCATE")
	case *pg_query.Node_LockStmt:
		return write("LOCK TABLE")
	case *pg_query.Node_RefreshMatViewStmt:
		return write("REFRESH MATERIALIZED VIEW " + relName(s.RefreshMatViewStmt.GetRelation()))
	case *pg_query.Node_VacuumStmt:
		if s.VacuumStmt.GetIsVacuumcmd() {
			// VACUUM FULL rewrites tables under an exclusive lock.
			return admin("VACUUM")
		}
		// ANALYZE only refreshes planner statistics: no data or schema
		// change, so a data writer may run it.
		return write("ANALYZE")
	case *pg_query.Node_CreateTableAsStmt:
		switch {
		case s.CreateTableAsStmt.GetIsSelectInto():
			return admin("SELECT INTO creates a table")
		case s.CreateTableAsStmt.GetObjtype() == pg_query.ObjectType_OBJECT_MATVIEW:
			return admin("CREATE MATERIALIZED VIEW")
		}
		return admin("CREATE TABLE AS")
	case *pg_query.Node_GrantStmt:
		if s.GrantStmt.GetIsGrant() {
			return admin("GRANT")
		}
		return admin("REVOKE")
	case *pg_query.Node_GrantRoleStmt:
		if s.GrantRoleStmt.GetIsGrant() {
			return admin("GRANT role")
		}
		return admin("REVOKE role")

	case *pg_query.Node_DoStmt:
		// The body is PL/pgSQL (or another language) that may do anything.
		return unknown("DO block")
	case *pg_query.Node_CallStmt:
		// Procedures may commit, write and run dynamic SQL.
		return unknown("CALL procedure")
	}
	if reason, ok := adminStmts[stmtName(n)]; ok {
		return admin(reason)
	}
	return unknown(fmt.Sprintf("unrecognised statement (%s)", stmtName(n)))
}

// adminStmts change schema, privileges, roles, server configuration or
// server-side resources.
var adminStmts = map[protoreflect.Name]string{
	"CreateSchemaStmt":             "CREATE SCHEMA",
	"AlterTableStmt":               "ALTER TABLE",
	"AlterCollationStmt":           "ALTER COLLATION",
	"AlterDomainStmt":              "ALTER DOMAIN",
	"AlterDefaultPrivilegesStmt":   "ALTER DEFAULT PRIVILEGES",
	"CreateStmt":                   "CREATE TABLE",
	"CreateTableSpaceStmt":         "CREATE TABLESPACE",
	"DropTableSpaceStmt":           "DROP TABLESPACE",
	"AlterTableSpaceOptionsStmt":   "ALTER TABLESPACE",
	"AlterTableMoveAllStmt":        "ALTER TABLE ... SET TABLESPACE",
	"CreateExtensionStmt":          "CREATE EXTENSION",
	"AlterExtensionStmt":           "ALTER EXTENSION",
	"AlterExtensionContentsStmt":   "ALTER EXTENSION",
	"CreateFdwStmt":                "CREATE FOREIGN DATA WRAPPER",
	"AlterFdwStmt":                 "ALTER FOREIGN DATA WRAPPER",
	"CreateForeignServerStmt":      "CREATE SERVER",
	"AlterForeignServerStmt":       "ALTER SERVER",
	"CreateForeignTableStmt":       "CREATE FOREIGN TABLE",
	"CreateUserMappingStmt":        "CREATE USER MAPPING",
	"AlterUserMappingStmt":         "ALTER USER MAPPING",
	"DropUserMappingStmt":          "DROP USER MAPPING",
	"ImportForeignSchemaStmt":      "IMPORT FOREIGN SCHEMA",
	"CreatePolicyStmt":             "CREATE POLICY",
	"AlterPolicyStmt":              "ALTER POLICY",
	"CreateAmStmt":                 "CREATE ACCESS METHOD",
	"CreateTrigStmt":               "CREATE TRIGGER",
	"CreateEventTrigStmt":          "CREATE EVENT TRIGGER",
	"AlterEventTrigStmt":           "ALTER EVENT TRIGGER",
	"CreatePLangStmt":              "CREATE LANGUAGE",
	"CreateRoleStmt":               "CREATE ROLE",
	"AlterRoleStmt":                "ALTER ROLE",
	"AlterRoleSetStmt":             "ALTER ROLE SET",
	"DropRoleStmt":                 "DROP ROLE",
	"CreateSeqStmt":                "CREATE SEQUENCE",
	"AlterSeqStmt":                 "ALTER SEQUENCE",
	"DefineStmt":                   "CREATE AGGREGATE/OPERATOR/TYPE",
	"CreateDomainStmt":             "CREATE DOMAIN",
	"CreateOpClassStmt":            "CREATE OPERATOR CLASS",
	"CreateOpFamilyStmt":           "CREATE OPERATOR FAMILY",
	"AlterOpFamilyStmt":            "ALTER OPERATOR FAMILY",
	"DropStmt":                     "DROP",
	"CommentStmt":                  "COMMENT",
	"SecLabelStmt":                 "SECURITY LABEL",
	"IndexStmt":                    "CREATE INDEX",
	"CreateStatsStmt":              "CREATE STATISTICS",
	"AlterStatsStmt":               "ALTER STATISTICS",
	"CreateFunctionStmt":           "CREATE FUNCTION",
	"AlterFunctionStmt":            "ALTER FUNCTION",
	"RenameStmt":                   "ALTER ... RENAME",
	"AlterObjectDependsStmt":       "ALTER ... DEPENDS ON EXTENSION",
	"AlterObjectSchemaStmt":        "ALTER ... SET SCHEMA",
	"AlterOwnerStmt":               "ALTER ... OWNER TO",
	"AlterOperatorStmt":            "ALTER OPERATOR",
	"AlterTypeStmt":                "ALTER TYPE",
	"RuleStmt":                     "CREATE RULE",
	"CompositeTypeStmt":            "CREATE TYPE",
	"CreateEnumStmt":               "CREATE TYPE AS ENUM",
	"CreateRangeStmt":              "CREATE TYPE AS RANGE",
	"AlterEnumStmt":                "ALTER TYPE (enum)",
	"ViewStmt":                     "CREATE VIEW",
	"LoadStmt":                     "LOAD",
	"CreatedbStmt":                 "CREATE DATABASE",
	"AlterDatabaseStmt":            "ALTER DATABASE",
	"AlterDatabaseRefreshCollStmt": "ALTER DATABASE REFRESH COLLATION VERSION",
	"AlterDatabaseSetStmt":         "ALTER DATABASE SET",
	"DropdbStmt":                   "DROP DATABASE",
	"AlterSystemStmt":              "ALTER SYSTEM",
	"ClusterStmt":                  "CLUSTER",
	"CheckPointStmt":               "CHECKPOINT",
	"ReindexStmt":                  "REINDEX",
	"CreateConversionStmt":         "CREATE CONVERSION",
	"CreateCastStmt":               "CREATE CAST",
	"CreateTransformStmt":          "CREATE TRANSFORM",
	"DropOwnedStmt":                "DROP OWNED",
	"ReassignOwnedStmt":            "REASSIGN OWNED",
	"AlterTSDictionaryStmt":        "ALTER TEXT SEARCH DICTIONARY",
	"AlterTSConfigurationStmt":     "ALTER TEXT SEARCH CONFIGURATION",
	"CreatePublicationStmt":        "CREATE PUBLICATION",
	"AlterPublicationStmt":         "ALTER PUBLICATION",
	"CreateSubscriptionStmt":       "CREATE SUBSCRIPTION",
	"AlterSubscriptionStmt":        "ALTER SUBSCRIPTION",
	"DropSubscriptionStmt":         "DROP SUBSCRIPTION",
}

// stmtName is the protobuf message name of the statement a Node holds.
func stmtName(n *pg_query.Node) protoreflect.Name {
	var name protoreflect.Name = "?"
	n.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if md := fd.Message(); md != nil {
			name = md.Name()
		}
		return false
	})
	return name
}

// query classifies SELECT/INSERT/UPDATE/DELETE/MERGE/COPY by walking the
// whole tree: data-modifying CTEs, row locks, SELECT INTO and deny-listed
// function calls can appear at any depth.
func query(root *pg_query.Node, base verdict) verdict {
	v := base
	rootMsg := root.ProtoReflect().Interface()
	var rootInner any
	root.ProtoReflect().Range(func(_ protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		rootInner = val.Message().Interface()
		return false
	})
	walk(root.ProtoReflect(), func(m protoreflect.Message) {
		msg := m.Interface()
		if msg == rootMsg || msg == rootInner {
			return
		}
		switch x := msg.(type) {
		case *pg_query.InsertStmt:
			v = v.max(write("data-modifying WITH: INSERT into " + relName(x.GetRelation())))
		case *pg_query.UpdateStmt:
			v = v.max(write("data-modifying WITH: UPDATE " + relName(x.GetRelation())))
		case *pg_query.DeleteStmt:
			v = v.max(write("data-modifying WITH: DELETE from " + relName(x.GetRelation())))
		case *pg_query.MergeStmt:
			v = v.max(write("data-modifying WITH: MERGE into " + relName(x.GetRelation())))
		case *pg_query.SelectStmt:
			v = v.max(selectClauses(x))
		case *pg_query.FuncCall:
			name := funcName(x)
			if rule, ok := lookupFunc(name); ok {
				v = v.max(verdict{rule.class, "function " + name + " " + rule.why})
			}
		}
	})
	// The root SelectStmt is skipped above so its base reason stays first;
	// its own INTO and locking clauses still count.
	if sel, ok := rootInner.(*pg_query.SelectStmt); ok {
		v = v.max(selectClauses(sel))
	}
	return v
}

// selectClauses returns what a SELECT's own INTO or FOR ... clauses need.
func selectClauses(s *pg_query.SelectStmt) verdict {
	v := read("SELECT")
	if into := s.GetIntoClause(); into != nil {
		v = v.max(admin("SELECT INTO creates table " + relName(into.GetRel())))
	}
	for _, lc := range s.GetLockingClause() {
		v = v.max(write("SELECT ... " + lockStrength(lc.GetLockingClause().GetStrength()) + " takes row locks"))
	}
	return v
}

func selectReason(s *pg_query.SelectStmt) string {
	if len(s.GetValuesLists()) > 0 {
		return "VALUES"
	}
	return "SELECT"
}

func lockStrength(s pg_query.LockClauseStrength) string {
	switch s {
	case pg_query.LockClauseStrength_LCS_FORKEYSHARE:
		return "FOR KEY SHARE"
	case pg_query.LockClauseStrength_LCS_FORSHARE:
		return "FOR SHARE"
	case pg_query.LockClauseStrength_LCS_FORNOKEYUPDATE:
		return "FOR NO KEY UPDATE"
	}
	return "FOR UPDATE"
}

// walk visits m and every message below it.
func walk(m protoreflect.Message, visit func(protoreflect.Message)) {
	visit(m)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walk(l.Get(i).Message(), visit)
			}
		case fd.IsMap():
			// pg_query's tree has no maps.
		default:
			walk(v.Message(), visit)
		}
		return true
	})
}

// funcName is the unqualified, lower-cased name of a called function.
func funcName(f *pg_query.FuncCall) string {
	parts := f.GetFuncname()
	if len(parts) == 0 {
		return ""
	}
	return strings.ToLower(parts[len(parts)-1].GetString_().GetSval())
}

func relName(rv *pg_query.RangeVar) string {
	if rv == nil {
		return "?"
	}
	if rv.GetSchemaname() != "" {
		return rv.GetSchemaname() + "." + rv.GetRelname()
	}
	return rv.GetRelname()
}

// explainAnalyze reports whether EXPLAIN options ask for ANALYZE, which
// executes the statement. An argument we cannot read counts as on.
func explainAnalyze(opts []*pg_query.Node) bool {
	on := false
	for _, o := range opts {
		d := o.GetDefElem()
		if d == nil || !strings.EqualFold(d.GetDefname(), "analyze") {
			continue
		}
		on = boolOption(d.GetArg())
	}
	return on
}

func boolOption(arg *pg_query.Node) bool {
	if arg == nil {
		return true
	}
	switch a := arg.Node.(type) {
	case *pg_query.Node_Boolean:
		return a.Boolean.GetBoolval()
	case *pg_query.Node_Integer:
		return a.Integer.GetIval() != 0
	case *pg_query.Node_String_:
		switch strings.ToLower(a.String_.GetSval()) {
		case "off", "of", "false", "fals", "fal", "fa", "f", "no", "n", "0":
			return false
		}
	case *pg_query.Node_Float:
		return a.Float.GetFval() != "0"
	}
	return true
}

func setVerdict(s *pg_query.VariableSetStmt) verdict {
	verb := "SET "
	if s.GetKind() == pg_query.VariableSetKind_VAR_RESET || s.GetKind() == pg_query.VariableSetKind_VAR_RESET_ALL {
		verb = "RESET "
	}
	name := strings.ToLower(s.GetName())
	switch {
	case s.GetKind() == pg_query.VariableSetKind_VAR_RESET_ALL:
		// RESET ALL skips role and session_authorization (GUC_NO_RESET_ALL)
		// and returns sigil.* to its connection-start value.
		return read("RESET ALL")
	case name == "role":
		return admin(verb + "ROLE")
	case name == "session_authorization":
		return admin(verb + "SESSION AUTHORIZATION")
	case strings.HasPrefix(name, "sigil."):
		// The gateway names the identity in sigil.* settings for the
		// database's logs; a client must not overwrite them.
		return admin(verb + name + " (gateway identity setting)")
	case name == "":
		return unknown(verb + "without a name")
	}
	if s.GetKind() == pg_query.VariableSetKind_VAR_SET_MULTI {
		// SET TRANSACTION / SET SESSION CHARACTERISTICS AS TRANSACTION.
		return read(verb + s.GetName())
	}
	return read(verb + name)
}

func transactionVerdict(s *pg_query.TransactionStmt) verdict {
	switch s.GetKind() {
	case pg_query.TransactionStmtKind_TRANS_STMT_BEGIN:
		return read("BEGIN")
	case pg_query.TransactionStmtKind_TRANS_STMT_START:
		return read("START TRANSACTION")
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT:
		return read("COMMIT")
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK:
		return read("ROLLBACK")
	case pg_query.TransactionStmtKind_TRANS_STMT_SAVEPOINT:
		return read("SAVEPOINT")
	case pg_query.TransactionStmtKind_TRANS_STMT_RELEASE:
		return read("RELEASE SAVEPOINT")
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
		return read("ROLLBACK TO SAVEPOINT")
	case pg_query.TransactionStmtKind_TRANS_STMT_PREPARE:
		// A prepared transaction outlives the session and holds locks.
		return write("PREPARE TRANSACTION (two-phase commit)")
	case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED:
		// May commit writes made in another session by the same role.
		return write("COMMIT PREPARED (two-phase commit)")
	case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
		return write("ROLLBACK PREPARED (two-phase commit)")
	}
	return unknown("unrecognised transaction statement")
}

func copyVerdict(n *pg_query.Node, s *pg_query.CopyStmt) verdict {
	switch {
	case s.GetIsProgram():
		return admin("COPY ... PROGRAM runs a command on the database server")
	case s.GetFilename() != "":
		if s.GetIsFrom() {
			return admin("COPY FROM a file on the database server")
		}
		return admin("COPY TO a file on the database server")
	case s.GetIsFrom():
		// The WHERE clause may call functions.
		return query(n, write("COPY "+relName(s.GetRelation())+" FROM STDIN"))
	case s.GetQuery() != nil:
		inner := classifyNode(s.GetQuery())
		inner.reason = "COPY (" + inner.reason + ") TO STDOUT"
		return inner
	}
	return read("COPY " + relName(s.GetRelation()) + " TO STDOUT")
}
