package main

import (
	"context"
	"crypto/tls"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/go-sql-driver/mysql"
	"github.com/gravitational/trace"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spf13/cobra"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/gateway/tunnel"
	"github.com/sigilhq/sigil/tools/internal/version"
)

const (
	mcpDefaultMaxRows = 200
	// mcpMaxResultBytes bounds the values one call returns: what an AI
	// client can usefully read, and what keeps a stray SELECT * from
	// flooding its context.
	mcpMaxResultBytes = 1 << 20
	// mcpMaxValueBytes bounds a single value, so one huge column does not
	// use the whole budget of a call.
	mcpMaxValueBytes = 64 << 10
	// mcpMaxSQL bounds the statement text of a query call.
	mcpMaxSQL = 1 << 20
	// mcpMaxMessage bounds one JSON-RPC message from the client.
	mcpMaxMessage = 4 << 20
	// mcpMaxMessageBody bounds one PostgreSQL message (a row) read from
	// the gateway; values beyond mcpMaxValueBytes are cut anyway.
	mcpMaxMessageBody = 64 << 20
	// mcpDialTimeout bounds opening a database session through the gateway.
	mcpDialTimeout = 15 * time.Second
	// mcpCancelGrace is how long a cancelled query may take to stop after
	// the cancel request before its connection is cut.
	mcpCancelGrace = 5 * time.Second

	// ALPN for the gateway: libpq direct TLS, and the MySQL exchange the
	// tunnel also uses (the main port carries it; MySQL's own listener
	// would need a second address).
	alpnPostgresDirect = "postgresql"
)

func (a *app) mcpCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mcp",
		Short: "Serve Model Context Protocol tools to AI clients over stdio",
		Long: `Serve Model Context Protocol (MCP) tools to an AI client over stdin/stdout.
The AI client (Claude Desktop, an IDE, an agent framework) starts sigil as a
child process; every tool call goes through the Sigil gateway with this
identity, so policy, write approvals and audit apply exactly as for any other
client.`,
		Example: `  sigil mcp db pg1 --db-user reader --db-name app
  sigil --identity /var/lib/agent mcp db pg1`,
	}
	cmd.AddCommand(a.mcpDBCommand())
	return cmd
}

type mcpDBOptions struct {
	database, user, name string
	maxRows              int
	queryTimeout         time.Duration
}

func (a *app) mcpDBCommand() *cobra.Command {
	var opts mcpDBOptions
	cmd := &cobra.Command{
		Use:   "db NAME [--db-user USER] [--db-name DB] [--max-rows N]",
		Short: "Serve list_databases, describe_table and query tools for one database",
		Long: `Run an MCP server over stdio bound to database NAME as --db-user/--db-name.
It offers three tools:

  list_databases  the databases this identity can see, and the one bound here
  describe_table  the columns of a table (information_schema)
  query           run SQL; rows come back as strings, at most --max-rows rows
                  and 1 MiB per call

Statements run on one connection through the gateway as you (or as the agent
of --identity): the gateway checks them against your roles and records them in
the audit log. A refused statement, e.g. a write by an agent that needs a
human approval, comes back to the AI as a tool error with the database's
message, SQLSTATE included. If the connection ends (a lock, a restart), the
call that saw it fails and the next one reconnects.

The database certificate lives in memory and is renewed before it expires,
using the current profile or the identity directory, reloaded each time.
stdout carries the protocol; logs go to stderr. Databases that require
per-session MFA cannot be served (there is no terminal for the check).

PostgreSQL runs each query with the simple query protocol, so several
statements separated by ";" run in one call (as one implicit transaction)
and the gateway audits the exact text. MySQL runs one statement per call.`,
		Example: `  sigil mcp db pg1 --db-user reader --db-name app
  sigil --identity /var/lib/agent mcp db pg1 --max-rows 50

  # MCP client configuration (e.g. claude_desktop_config.json):
  {"mcpServers": {"pg1": {"command": "sigil", "args": ["mcp", "db", "pg1", "--db-user", "reader"]}}}`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.database = args[0]
			return a.mcpDB(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.user, "db-user", "", "database user to connect as (default: the single one your roles allow)")
	f.StringVar(&opts.name, "db-name", "", "database name inside the server (default: the single one allowed, else the db user)")
	f.IntVar(&opts.maxRows, "max-rows", mcpDefaultMaxRows, "rows returned per query call at most; the rest are counted and dropped")
	f.DurationVar(&opts.queryTimeout, "query-timeout", 10*time.Minute, "bound on each tool call; a query running longer is cancelled")
	return cmd
}

// mcpBinding is the database a server is bound to.
type mcpBinding struct {
	Database string `json:"database" jsonschema:"the Sigil database name the query and describe_table tools use"`
	Protocol string `json:"protocol" jsonschema:"postgres or mysql"`
	DBUser   string `json:"db_user" jsonschema:"the database user statements run as"`
	DBName   string `json:"db_name" jsonschema:"the database (PostgreSQL dbname, MySQL schema) inside the server"`
}

func (a *app) mcpDB(ctx context.Context, opts mcpDBOptions) error {
	if opts.maxRows < 1 {
		return trace.BadParameter("--max-rows must be at least 1, got %d", opts.maxRows)
	}
	if opts.queryTimeout <= 0 {
		return trace.BadParameter("--query-timeout must be positive, got %v", opts.queryTimeout)
	}
	p, bound, first, err := a.mcpRoute(ctx, opts)
	if err != nil {
		return trace.Wrap(err)
	}
	user, name := bound.DBUser, bound.DBName

	level := slog.LevelInfo
	if a.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: level})).With("database", opts.database)
	certs, err := a.renewingDBCerts(first, p.Proxy, opts.database, user, name, 0, log)
	if err != nil {
		return trace.Wrap(err)
	}
	// The pinned CA of the profile, not one from a response: it is what
	// the user agreed to trust.
	pool, err := client.CertPoolFromPEM(p.Identity.TLSCAPEM)
	if err != nil {
		return trace.Wrap(err)
	}
	host, _, err := net.SplitHostPort(p.Proxy)
	if err != nil {
		return trace.BadParameter("gateway address %q is not HOST:PORT", p.Proxy)
	}
	tlsConfig := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		ServerName: host,
		// Asked on every handshake, so a reconnect uses the renewed
		// certificate.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return certs.Current()
		},
	}
	target := sqlTarget{gateway: p.Proxy, tls: tlsConfig, dbUser: user, dbName: name}
	// The SDK reports each connection step at info level; only its
	// warnings are worth a line unless --debug.
	sdkLevel := slog.LevelWarn
	if a.debug {
		sdkLevel = slog.LevelDebug
	}
	srv := &mcpDBServer{
		sdkLog:       slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: sdkLevel})).With("component", "mcp"),
		bound:        bound,
		who:          p.User,
		kind:         p.Kind,
		maxRows:      opts.maxRows,
		maxBytes:     mcpMaxResultBytes,
		queryTimeout: opts.queryTimeout,
		log:          log,
		dial:         target.dialPostgres,
		listDatabases: func(ctx context.Context) ([]*sigilv1.DatabaseInfo, error) {
			p, clt, err := a.freshClient(client.Home(), p.Proxy)
			if err != nil {
				return nil, trace.Wrap(err)
			}
			defer clt.Close()
			return listDatabases(ctx, clt, p.Proxy)
		},
	}
	if bound.Protocol == protocolMySQL {
		srv.dial = target.dialMySQL
	}
	defer srv.close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	renewDone := make(chan struct{})
	go func() {
		defer close(renewDone)
		certs.Renew(ctx)
	}()
	defer func() {
		cancel()
		<-renewDone
	}()

	log.InfoContext(ctx, "MCP server ready on stdio.", "identity", p.User, "kind", p.Kind, "db_user", user, "db_name", name, "gateway", p.Proxy)
	err = srv.mcpServer().Run(ctx, &mcp.IOTransport{
		Reader:        io.NopCloser(a.stdin),
		Writer:        nopWriteCloser{a.stdout},
		MaxLineLength: mcpMaxMessage,
	})
	if err != nil && ctx.Err() == nil && !errors.Is(err, io.EOF) {
		return trace.Wrap(err, "serving MCP on stdio")
	}
	log.InfoContext(ctx, "MCP client disconnected.")
	return nil
}

// mcpRoute resolves the database and route of a server and issues its
// first certificate.
func (a *app) mcpRoute(ctx context.Context, opts mcpDBOptions) (*client.Profile, mcpBinding, *dbCert, error) {
	if err := checkDBName(opts.database); err != nil {
		return nil, mcpBinding{}, nil, trace.Wrap(err)
	}
	p, clt, err := a.dbClient()
	if err != nil {
		return nil, mcpBinding{}, nil, trace.Wrap(err)
	}
	defer clt.Close()
	dbs, err := listDatabases(ctx, clt, p.Proxy)
	if err != nil {
		return nil, mcpBinding{}, nil, trace.Wrap(err)
	}
	d, err := findDatabase(dbs, opts.database)
	if err != nil {
		return nil, mcpBinding{}, nil, trace.Wrap(err)
	}
	switch d.GetProtocol() {
	case protocolPostgres, protocolMySQL:
	default:
		return nil, mcpBinding{}, nil, trace.BadParameter("database %s has protocol %q; the MCP server speaks PostgreSQL and MySQL only", d.GetName(), d.GetProtocol())
	}
	user, name, err := routeDefaults(d, opts.user, opts.name)
	if err != nil {
		return nil, mcpBinding{}, nil, trace.Wrap(err)
	}
	role, err := a.sessionMFARole(ctx, p, clt, opts.database, user, name)
	if err != nil {
		return nil, mcpBinding{}, nil, trace.Wrap(err)
	}
	if role != "" {
		return nil, mcpBinding{}, nil, trace.AccessDenied("role %q requires per-session MFA for %s, and an MCP server has no terminal for the check; serve it with an identity whose roles do not set require_session_mfa", role, opts.database)
	}
	first, err := a.issueDBCert(ctx, p, clt, opts.database, user, name, 0)
	if err != nil {
		return nil, mcpBinding{}, nil, trace.Wrap(err)
	}
	return p, mcpBinding{Database: opts.database, Protocol: d.GetProtocol(), DBUser: user, DBName: name}, first, nil
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// mcpDBServer serves the tools of one bound database over one connection
// to the gateway, opened on first use and again after it ends.
type mcpDBServer struct {
	bound         mcpBinding
	who, kind     string
	maxRows       int
	maxBytes      int
	queryTimeout  time.Duration
	log           *slog.Logger
	sdkLog        *slog.Logger
	dial          func(ctx context.Context) (sqlSession, error)
	listDatabases func(ctx context.Context) ([]*sigilv1.DatabaseInfo, error)

	// mu serialises tool calls: a database connection runs one statement
	// at a time, and session state (SET, BEGIN) belongs to the caller.
	mu   sync.Mutex
	sess sqlSession
}

// sqlSession is one database session through the gateway.
type sqlSession interface {
	// run executes sql as the client sent it and collects its results
	// within budget.
	run(ctx context.Context, sql string, budget *rowBudget) ([]statementResult, error)
	// describe lists the columns of schema.table; an empty schema means
	// the session's default.
	describe(ctx context.Context, schema, table string) (string, []columnInfo, error)
	// alive is false once the connection is known to be unusable.
	alive() bool
	close()
}

func (s *mcpDBServer) instructions() string {
	refusal := "SQLSTATE 42501"
	if s.bound.Protocol == protocolMySQL {
		refusal = "MySQL error 1142"
	}
	return fmt.Sprintf(`These tools reach the %s database %q (db user %q, db name %q) through the Sigil access gateway as the Sigil %s identity %q.
Every statement is checked against that identity's roles and recorded in Sigil's audit log under its name.
A statement refused by policy comes back as a tool error with %s and the reason. If the message names an approval, a human must approve that exact statement in Sigil before it can run: tell the user, and retry the same statement once they say it is approved.
Query results are capped at %d rows and %d KiB per call: use LIMIT and select only the columns you need.`,
		s.bound.Protocol, s.bound.Database, s.bound.DBUser, s.bound.DBName, s.kind, s.who, refusal, s.maxRows, s.maxBytes>>10)
}

func (s *mcpDBServer) mcpServer() *mcp.Server {
	server := mcp.NewServer(&mcp.Implementation{Name: "sigil", Title: "Sigil database gateway", Version: version.Version},
		&mcp.ServerOptions{Instructions: s.instructions(), Logger: s.sdkLog})
	closedWorld := false
	mcp.AddTool(server, &mcp.Tool{
		Name:        "list_databases",
		Description: "List the Sigil databases this identity may see, with their labels and the db users and db names its roles allow, and which database this server is bound to.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, IdempotentHint: true, OpenWorldHint: &closedWorld},
	}, s.toolListDatabases)
	mcp.AddTool(server, &mcp.Tool{
		Name:        "describe_table",
		Description: fmt.Sprintf("Describe the columns (name, type, nullable, default) of a table or view in database %s, from information_schema, through the Sigil gateway.", s.bound.Database),
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, IdempotentHint: true, OpenWorldHint: &closedWorld},
	}, s.toolDescribeTable)
	mcp.AddTool(server, &mcp.Tool{
		Name: "query",
		Description: fmt.Sprintf("Run SQL on %s database %s as db user %s through the Sigil gateway, which checks it against policy and audits it. Returns columns and rows (values as strings, null for NULL; at most %d rows), or the command tag of a write. A refusal or database error is returned as an error result with the database's message.",
			s.bound.Protocol, s.bound.Database, s.bound.DBUser, s.maxRows),
		Annotations: &mcp.ToolAnnotations{OpenWorldHint: &closedWorld},
	}, s.toolQuery)
	return server
}

type listDatabasesInput struct{}

type listDatabasesOutput struct {
	Bound     mcpBinding `json:"bound" jsonschema:"the database this server's query and describe_table tools use"`
	Identity  string     `json:"identity" jsonschema:"the Sigil identity every call runs as"`
	Kind      string     `json:"kind" jsonschema:"the identity kind: human, bot or agent"`
	Databases []dbView   `json:"databases" jsonschema:"the databases this identity's roles let it see"`
}

func (s *mcpDBServer) toolListDatabases(ctx context.Context, _ *mcp.CallToolRequest, _ listDatabasesInput) (*mcp.CallToolResult, *listDatabasesOutput, error) {
	dbs, err := s.listDatabases(ctx)
	if err != nil {
		return nil, nil, toolError(err)
	}
	out := &listDatabasesOutput{Bound: s.bound, Identity: s.who, Kind: s.kind, Databases: make([]dbView, 0, len(dbs))}
	for _, d := range dbs {
		out.Databases = append(out.Databases, viewOf(d))
	}
	return nil, out, nil
}

type describeTableInput struct {
	Table  string `json:"table" jsonschema:"table or view name as stored, without quotes (PostgreSQL stores unquoted names in lower case)"`
	Schema string `json:"schema,omitempty" jsonschema:"schema holding the table; default: PostgreSQL the first schema on the search_path that has it, MySQL the connected database"`
}

type columnInfo struct {
	Name     string  `json:"name"`
	Type     string  `json:"type"`
	Nullable bool    `json:"nullable"`
	Default  *string `json:"default" jsonschema:"the column default expression, null if none"`
}

type describeTableOutput struct {
	Database string       `json:"database"`
	Schema   string       `json:"schema"`
	Table    string       `json:"table"`
	Columns  []columnInfo `json:"columns"`
}

func (s *mcpDBServer) toolDescribeTable(ctx context.Context, _ *mcp.CallToolRequest, in describeTableInput) (*mcp.CallToolResult, *describeTableOutput, error) {
	if err := checkSQLName("table", in.Table, true); err != nil {
		return nil, nil, toolError(err)
	}
	if err := checkSQLName("schema", in.Schema, false); err != nil {
		return nil, nil, toolError(err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.queryTimeout)
	defer cancel()
	var out *describeTableOutput
	err := s.withSession(ctx, func(sess sqlSession) error {
		schema, cols, err := sess.describe(ctx, in.Schema, in.Table)
		if err != nil {
			return err
		}
		out = &describeTableOutput{Database: s.bound.Database, Schema: schema, Table: in.Table, Columns: cols}
		return nil
	})
	if err != nil {
		return nil, nil, toolError(err)
	}
	if len(out.Columns) == 0 {
		where := "on the search_path"
		if in.Schema != "" {
			where = "in schema " + strconv.Quote(in.Schema)
		} else if s.bound.Protocol == protocolMySQL {
			where = "in database " + strconv.Quote(s.bound.DBName)
		}
		return nil, nil, toolError(trace.NotFound("no table %q %s, or db user %q may not see its columns", in.Table, where, s.bound.DBUser))
	}
	return nil, out, nil
}

// checkSQLName refuses names no table has; they are passed as parameters,
// so this is about clear errors, not injection.
func checkSQLName(what, name string, required bool) error {
	switch {
	case name == "" && required:
		return trace.BadParameter("%s is empty", what)
	case len(name) > 1024:
		return trace.BadParameter("%s is too long", what)
	case !utf8.ValidString(name) || strings.ContainsRune(name, 0):
		return trace.BadParameter("%s is not valid UTF-8 text", what)
	}
	return nil
}

type queryInput struct {
	SQL string `json:"sql" jsonschema:"the SQL to run, sent to the database as is"`
}

type resultColumn struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// statementResult is what one statement returned.
type statementResult struct {
	Columns []resultColumn `json:"columns,omitempty" jsonschema:"the result columns; absent for statements that return no rows"`
	Rows    [][]*string    `json:"rows,omitempty" jsonschema:"the rows kept, values as text, null for SQL NULL"`
	// RowCount counts every row the statement returned, including those
	// dropped by the limits.
	RowCount   int    `json:"row_count" jsonschema:"rows the statement returned (all of them, also those not kept)"`
	Truncated  bool   `json:"truncated,omitempty" jsonschema:"true when rows were dropped by the row or size limit"`
	CommandTag string `json:"command_tag,omitempty" jsonschema:"the database's completion tag, e.g. INSERT 0 1 or SELECT 3"`
}

type queryOutput struct {
	Results []statementResult `json:"results" jsonschema:"one entry per statement, in order"`
	Note    string            `json:"note,omitempty" jsonschema:"present when rows were dropped"`
}

func (s *mcpDBServer) toolQuery(ctx context.Context, _ *mcp.CallToolRequest, in queryInput) (*mcp.CallToolResult, *queryOutput, error) {
	if strings.TrimSpace(in.SQL) == "" {
		return nil, nil, toolError(trace.BadParameter("sql is empty"))
	}
	if len(in.SQL) > mcpMaxSQL {
		return nil, nil, toolError(trace.LimitExceeded("sql is %d bytes; at most %d are accepted", len(in.SQL), mcpMaxSQL))
	}
	ctx, cancel := context.WithTimeout(ctx, s.queryTimeout)
	defer cancel()
	budget := &rowBudget{maxRows: s.maxRows, maxBytes: s.maxBytes}
	var results []statementResult
	err := s.withSession(ctx, func(sess sqlSession) error {
		var err error
		results, err = sess.run(ctx, in.SQL, budget)
		return err
	})
	if err != nil {
		return nil, nil, toolError(err)
	}
	return nil, &queryOutput{Results: results, Note: budget.note()}, nil
}

// withSession runs fn on the open session, opening one first when there
// is none or the last one ended. A session found dead before anything
// was sent on it is replaced and fn runs again; one that dies during fn
// is dropped after reporting the error, so the next call reconnects.
func (s *mcpDBServer) withSession(ctx context.Context, fn func(sqlSession) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 0; ; attempt++ {
		reused := s.sess != nil && s.sess.alive()
		if !reused {
			if s.sess != nil {
				s.sess.close()
				s.sess = nil
			}
			sess, err := s.dial(ctx)
			if err != nil {
				return trace.Wrap(err)
			}
			s.log.DebugContext(ctx, "Opened a database session through the gateway.")
			s.sess = sess
		}
		err := fn(s.sess)
		if s.sess.alive() {
			return err
		}
		s.log.InfoContext(ctx, "The database session ended; the next call reconnects.", "error", err)
		s.sess.close()
		s.sess = nil
		if err == nil {
			return nil
		}
		if reused && attempt == 0 && safeToRetry(err) {
			continue
		}
		return &sessionEndedError{err: err}
	}
}

func (s *mcpDBServer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sess != nil {
		s.sess.close()
		s.sess = nil
	}
}

// safeToRetry says whether err guarantees the statement never reached
// the server.
func safeToRetry(err error) bool {
	return errors.Is(err, driver.ErrBadConn) || pgconn.SafeToRetry(err)
}

// sessionEndedError is an error after which the session closed.
type sessionEndedError struct{ err error }

func (e *sessionEndedError) Error() string { return e.err.Error() }
func (e *sessionEndedError) Unwrap() error { return e.err }

// toolError turns err into the error a tool returns: the SDK sends its
// text as an error result the AI can read, not as a protocol error.
func toolError(err error) error {
	return errors.New(toolErrorText(err))
}

// toolErrorText renders err in the database's own words, SQLSTATE, detail
// and hint included, so that a refusal's reason (and an approval id)
// reaches the AI and through it the user.
func toolErrorText(err error) string {
	var msg string
	var pgErr *pgconn.PgError
	var myErr *mysql.MySQLError
	var dialErr *dialFailure
	switch {
	case errors.As(err, &dialErr):
		msg = dialErr.Error()
	case errors.As(err, &pgErr):
		var b strings.Builder
		severity := pgErr.Severity
		if severity == "" {
			severity = "ERROR"
		}
		fmt.Fprintf(&b, "%s: %s (SQLSTATE %s)", severity, pgErr.Message, pgErr.Code)
		if pgErr.Detail != "" {
			fmt.Fprintf(&b, "\nDETAIL: %s", pgErr.Detail)
		}
		if pgErr.Hint != "" {
			fmt.Fprintf(&b, "\nHINT: %s", pgErr.Hint)
		}
		if pgErr.Position > 0 {
			fmt.Fprintf(&b, "\nPOSITION: character %d of the statement", pgErr.Position)
		}
		msg = b.String()
	case errors.As(err, &myErr):
		msg = fmt.Sprintf("ERROR %d", myErr.Number)
		if myErr.SQLState != [5]byte{} {
			msg += fmt.Sprintf(" (SQLSTATE %s)", myErr.SQLState[:])
		}
		msg += ": " + myErr.Message
	default:
		msg = errorMessage(err)
	}
	var ended *sessionEndedError
	if errors.As(err, &ended) {
		msg += "\n(The database session through the gateway ended; the next call opens a new one.)"
	}
	return msg
}

// rowBudget bounds the rows and bytes one call returns, across all its
// statements.
type rowBudget struct {
	maxRows, maxBytes int
	rows, bytes       int
	// full stops keeping rows once one did not fit, so what is kept is a
	// prefix of the result.
	full bool
	// dropped counts rows returned but not kept.
	dropped int
}

// add counts row in res and keeps it if it fits.
func (b *rowBudget) add(res *statementResult, row []*string) {
	res.RowCount++
	size := 0
	for _, v := range row {
		size += 8 // quotes, comma; null's length
		if v != nil {
			size += len(*v)
		}
	}
	if b.full || b.rows >= b.maxRows || b.bytes+size > b.maxBytes {
		b.full = true
		b.dropped++
		res.Truncated = true
		return
	}
	b.rows++
	b.bytes += size
	res.Rows = append(res.Rows, row)
}

func (b *rowBudget) note() string {
	if b.dropped == 0 {
		return ""
	}
	return fmt.Sprintf("%d rows kept, %d dropped: a call returns at most %d rows and %d KiB; add a LIMIT or select fewer columns", b.rows, b.dropped, b.maxRows, b.maxBytes>>10)
}

// textValue renders a value the database sent as text; nil is NULL.
// Invalid UTF-8 is replaced (JSON cannot carry it) and long values are
// cut with a note saying how long they were.
func textValue(v []byte) *string {
	if v == nil {
		return nil
	}
	s := capValue(string(v))
	return &s
}

func capValue(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= mcpMaxValueBytes {
		return s
	}
	cut := mcpMaxValueBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… [value cut: %d bytes in total]", s[:cut], len(s))
}

// driverValue renders a value from database/sql/driver as text.
func driverValue(v driver.Value) *string {
	var s string
	switch v := v.(type) {
	case nil:
		return nil
	case []byte:
		return textValue(v)
	case string:
		s = v
	case int64:
		s = strconv.FormatInt(v, 10)
	case uint64:
		s = strconv.FormatUint(v, 10)
	case float64:
		s = strconv.FormatFloat(v, 'g', -1, 64)
	case float32:
		s = strconv.FormatFloat(float64(v), 'g', -1, 32)
	case bool:
		s = strconv.FormatBool(v)
	case time.Time:
		s = v.Format("2006-01-02 15:04:05.999999999")
	default:
		s = fmt.Sprint(v)
	}
	s = capValue(s)
	return &s
}

// sqlTarget is how to reach the bound database through the gateway.
type sqlTarget struct {
	gateway        string
	tls            *tls.Config
	dbUser, dbName string
}

// pgSession is a PostgreSQL session over direct TLS to the gateway.
type pgSession struct {
	conn  *pgconn.PgConn
	types *pgtype.Map
	// ended is set by a FATAL error: the server (or the gateway, on a
	// lock) closes the connection after it, before pgconn notices.
	ended bool
}

func (t sqlTarget) dialPostgres(ctx context.Context) (sqlSession, error) {
	host, port, err := net.SplitHostPort(t.gateway)
	if err != nil {
		return nil, trace.BadParameter("gateway address %q is not HOST:PORT", t.gateway)
	}
	portNum, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, trace.BadParameter("gateway address %q has no valid port", t.gateway)
	}
	// ParseConfig makes a valid Config (the only way to); whatever the PG*
	// environment put in is then replaced, since the route is fixed.
	cfg, err := pgconn.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, trace.Wrap(err, "reading PostgreSQL settings from the environment (PG* variables)")
	}
	tlsConfig := t.tls.Clone()
	tlsConfig.NextProtos = []string{alpnPostgresDirect}
	cfg.Host, cfg.Port = host, uint16(portNum)
	cfg.User, cfg.Database, cfg.Password = t.dbUser, t.dbName, ""
	cfg.TLSConfig, cfg.SSLNegotiation, cfg.SSLCertMode = tlsConfig, "direct", ""
	cfg.Fallbacks = nil
	cfg.RuntimeParams = map[string]string{}
	cfg.ConnectTimeout = mcpDialTimeout
	cfg.MaxProtocolMessageBodyLen = mcpMaxMessageBody
	cfg.ValidateConnect, cfg.AfterConnect = nil, nil
	cfg.AfterNetConnect = func(_ context.Context, _ *pgconn.Config, conn net.Conn) (net.Conn, error) {
		return &copyInRefuser{Conn: conn}, nil
	}
	// A cancelled call cancels its query on the server rather than cutting
	// the connection; the deadline is the backstop.
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: c, DeadlineDelay: mcpCancelGrace}
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, dialError(err, t, "PostgreSQL")
	}
	return &pgSession{conn: conn, types: pgtype.NewMap()}, nil
}

// copyInRefuser answers a CopyInResponse with CopyFail. A COPY FROM
// STDIN waits for data the client streams, which an MCP call has no way
// to send; pgconn would wait with the server until the call timed out,
// holding up every call behind it. With CopyFail the server ends the COPY
// with an error at once and the session goes on. It follows the framing
// of what the gateway sends (type byte, length) without buffering it.
type copyInRefuser struct {
	net.Conn
	hdr       [5]byte
	hdrLen    int
	remaining int
}

// copyInRefusal is the reason the server reports ("COPY from stdin failed: ...").
const copyInRefusal = "sigil mcp: COPY FROM STDIN needs data streamed by the client, which MCP cannot send; use INSERT ... VALUES"

func (c *copyInRefuser) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.scan(p[:n]) {
		msg := make([]byte, 5, 6+len(copyInRefusal))
		msg[0] = 'f'
		binary.BigEndian.PutUint32(msg[1:], uint32(4+len(copyInRefusal)+1))
		msg = append(append(msg, copyInRefusal...), 0)
		// A failed write breaks the connection, which pgconn then reports.
		_, _ = c.Conn.Write(msg)
	}
	return n, err
}

// scan advances over the messages in b and says whether a CopyInResponse
// started among them.
func (c *copyInRefuser) scan(b []byte) bool {
	copyIn := false
	for len(b) > 0 {
		if c.remaining > 0 {
			k := min(c.remaining, len(b))
			c.remaining -= k
			b = b[k:]
			continue
		}
		k := copy(c.hdr[c.hdrLen:], b)
		c.hdrLen += k
		b = b[k:]
		if c.hdrLen < len(c.hdr) {
			break
		}
		c.hdrLen = 0
		c.remaining = max(int(binary.BigEndian.Uint32(c.hdr[1:]))-4, 0)
		if c.hdr[0] == 'G' {
			copyIn = true
		}
	}
	return copyIn
}

// dialError says which session could not be opened, keeping the
// database's own refusal (a PostgreSQL FATAL, a MySQL error) findable.
func dialError(err error, t sqlTarget, protocol string) error {
	return trace.Wrap(&dialFailure{err: err, what: fmt.Sprintf("cannot open a %s session as db user %q, db name %q through the gateway %s", protocol, t.dbUser, t.dbName, t.gateway)})
}

type dialFailure struct {
	err  error
	what string
}

func (e *dialFailure) Error() string { return e.what + ": " + toolErrorText(e.err) }
func (e *dialFailure) Unwrap() error { return e.err }

func (s *pgSession) alive() bool { return !s.ended && !s.conn.IsClosed() }

// check notes whether err ended the session, and returns it.
func (s *pgSession) check(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Severity == "FATAL" || pgErr.Severity == "PANIC") {
		s.ended = true
	}
	return err
}

func (s *pgSession) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.conn.Close(ctx)
}

// run uses the simple query protocol: the gateway sees and audits the
// exact text, and several statements may be sent at once.
func (s *pgSession) run(ctx context.Context, sql string, budget *rowBudget) ([]statementResult, error) {
	mrr := s.conn.Exec(ctx, sql)
	var results []statementResult
	for mrr.NextResult() {
		rr := mrr.ResultReader()
		var res statementResult
		fields := rr.FieldDescriptions()
		for _, f := range fields {
			res.Columns = append(res.Columns, resultColumn{Name: f.Name, Type: s.typeName(f.DataTypeOID)})
		}
		for rr.NextRow() {
			vals := rr.Values()
			row := make([]*string, len(vals))
			for i, v := range vals {
				row[i] = textValue(v)
			}
			budget.add(&res, row)
		}
		tag, err := rr.Close()
		if err != nil {
			_ = mrr.Close()
			return nil, s.check(err)
		}
		res.CommandTag = tag.String()
		results = append(results, res)
	}
	if err := mrr.Close(); err != nil {
		return nil, s.check(err)
	}
	return results, nil
}

func (s *pgSession) typeName(oid uint32) string {
	if t, ok := s.types.TypeForOID(oid); ok {
		return t.Name
	}
	return "oid " + strconv.FormatUint(uint64(oid), 10)
}

// pgDescribe lists columns with the extended protocol: the names travel
// as parameters, never as SQL text. Without a schema, the schemas on the
// search_path are searched in order.
const pgDescribe = `SELECT c.table_schema::text, c.column_name::text,
  CASE WHEN c.data_type IN ('USER-DEFINED', 'ARRAY') THEN c.udt_name::text ELSE c.data_type::text END,
  c.is_nullable::text, c.column_default::text
FROM information_schema.columns c
WHERE c.table_name = $1::text
  AND CASE WHEN $2::text IS NULL THEN c.table_schema = ANY (current_schemas(false)) ELSE c.table_schema = $2::text END
ORDER BY array_position(current_schemas(false), c.table_schema::name), c.table_schema, c.ordinal_position`

func (s *pgSession) describe(ctx context.Context, schema, table string) (string, []columnInfo, error) {
	var schemaParam []byte
	if schema != "" {
		schemaParam = []byte(schema)
	}
	res := s.conn.ExecParams(ctx, pgDescribe, [][]byte{[]byte(table), schemaParam}, nil, nil, nil).Read()
	if res.Err != nil {
		return "", nil, s.check(res.Err)
	}
	return describedColumns(res.Rows)
}

// describedColumns turns rows of (schema, name, type, nullable, default)
// into columns of the first schema that has the table.
func describedColumns(rows [][][]byte) (string, []columnInfo, error) {
	var schema string
	var cols []columnInfo
	for _, r := range rows {
		if len(r) != 5 {
			return "", nil, trace.BadParameter("information_schema returned %d columns, want 5", len(r))
		}
		if len(cols) == 0 {
			schema = string(r[0])
		} else if string(r[0]) != schema {
			break
		}
		cols = append(cols, columnInfo{
			Name:     string(r[1]),
			Type:     string(r[2]),
			Nullable: strings.EqualFold(string(r[3]), "YES"),
			Default:  textValue(r[4]),
		})
	}
	return schema, cols, nil
}

// mysqlSession is a MySQL session carried in TLS to the gateway's main
// port with ALPN sigil-mysql, as the tunnel does.
type mysqlSession struct {
	conn driver.Conn
}

func (t sqlTarget) dialMySQL(ctx context.Context) (sqlSession, error) {
	cfg := mysql.NewConfig()
	cfg.User, cfg.DBName = t.dbUser, t.dbName
	cfg.Net, cfg.Addr = "tcp", t.gateway
	cfg.Timeout = mcpDialTimeout
	tlsConfig := t.tls.Clone()
	tlsConfig.NextProtos = []string{tunnel.ALPNMySQL}
	// TLS is outside the MySQL protocol here (the gateway offers no
	// CLIENT_SSL on this path), so the driver itself does none.
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: mcpDialTimeout}, Config: tlsConfig}
		return d.DialContext(ctx, network, addr)
	}
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	conn, err := connector.Connect(ctx)
	if err != nil {
		return nil, dialError(err, t, "MySQL")
	}
	return &mysqlSession{conn: conn}, nil
}

func (s *mysqlSession) alive() bool {
	v, ok := s.conn.(driver.Validator)
	return !ok || v.IsValid()
}

func (s *mysqlSession) close() { _ = s.conn.Close() }

// run sends one COM_QUERY (the text protocol: the gateway audits the
// exact text).
func (s *mysqlSession) run(ctx context.Context, sql string, budget *rowBudget) ([]statementResult, error) {
	q, ok := s.conn.(driver.QueryerContext)
	if !ok {
		return nil, trace.NotImplemented("the MySQL driver cannot run queries directly")
	}
	rows, err := q.QueryContext(ctx, sql, nil)
	if err != nil {
		return nil, err
	}
	results, err := s.readResults(rows, budget)
	if cerr := rows.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if len(results) == 1 && len(results[0].Columns) == 0 {
		// The driver keeps the affected-rows count of a query to itself;
		// ROW_COUNT() on the same session tells it.
		n, err := s.rowCount(ctx, q)
		if err != nil {
			return nil, err
		}
		results[0].CommandTag = fmt.Sprintf("OK, %s rows affected", n)
	}
	return results, nil
}

func (s *mysqlSession) readResults(rows driver.Rows, budget *rowBudget) ([]statementResult, error) {
	var results []statementResult
	for {
		var res statementResult
		names := rows.Columns()
		typed, _ := rows.(driver.RowsColumnTypeDatabaseTypeName)
		for i, n := range names {
			c := resultColumn{Name: n}
			if typed != nil {
				c.Type = strings.ToLower(typed.ColumnTypeDatabaseTypeName(i))
			}
			res.Columns = append(res.Columns, c)
		}
		if len(names) > 0 {
			dest := make([]driver.Value, len(names))
			for {
				err := rows.Next(dest)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return nil, err
				}
				row := make([]*string, len(dest))
				for i, v := range dest {
					row[i] = driverValue(v)
				}
				budget.add(&res, row)
			}
			res.CommandTag = fmt.Sprintf("SELECT %d", res.RowCount)
		}
		results = append(results, res)
		next, ok := rows.(driver.RowsNextResultSet)
		if !ok || !next.HasNextResultSet() {
			return results, nil
		}
		if err := next.NextResultSet(); err != nil {
			if errors.Is(err, io.EOF) {
				return results, nil
			}
			return nil, err
		}
	}
}

func (s *mysqlSession) rowCount(ctx context.Context, q driver.QueryerContext) (string, error) {
	rows, err := q.QueryContext(ctx, "SELECT ROW_COUNT()", nil)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	dest := make([]driver.Value, 1)
	if err := rows.Next(dest); err != nil {
		return "", err
	}
	if v := driverValue(dest[0]); v != nil {
		return *v, nil
	}
	return "0", nil
}

// mysqlDescribe is prepared: the names travel as parameters.
const mysqlDescribe = `SELECT table_schema, column_name, column_type, is_nullable, column_default
FROM information_schema.columns
WHERE table_name = ? AND table_schema = COALESCE(?, DATABASE())
ORDER BY table_schema, ordinal_position`

func (s *mysqlSession) describe(ctx context.Context, schema, table string) (string, []columnInfo, error) {
	prep, ok := s.conn.(driver.ConnPrepareContext)
	if !ok {
		return "", nil, trace.NotImplemented("the MySQL driver cannot prepare statements")
	}
	stmt, err := prep.PrepareContext(ctx, mysqlDescribe)
	if err != nil {
		return "", nil, err
	}
	defer stmt.Close()
	sq, ok := stmt.(driver.StmtQueryContext)
	if !ok {
		return "", nil, trace.NotImplemented("the MySQL driver cannot run prepared queries")
	}
	var schemaArg driver.Value
	if schema != "" {
		schemaArg = schema
	}
	rows, err := sq.QueryContext(ctx, []driver.NamedValue{{Ordinal: 1, Value: table}, {Ordinal: 2, Value: schemaArg}})
	if err != nil {
		return "", nil, err
	}
	defer rows.Close()
	var raw [][][]byte
	dest := make([]driver.Value, 5)
	for {
		err := rows.Next(dest)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", nil, err
		}
		r := make([][]byte, len(dest))
		for i, v := range dest {
			if s := driverValue(v); s != nil {
				r[i] = []byte(*s)
			}
		}
		raw = append(raw, r)
	}
	return describedColumns(raw)
}
