package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/tools/internal/cli"
)

// Files of a database login, under <profile>/db/<NAME>/.
const (
	dbDir       = "db"
	dbCertFile  = "tls.crt"
	dbKeyFile   = "tls.key"
	dbCAFile    = "ca.crt"
	dbRouteFile = "route.yaml"
)

const (
	protocolPostgres = "postgres"
	protocolMySQL    = "mysql"
	// dbCertMargin is how long a routed certificate must still be valid
	// for "db connect" to reuse it rather than log in again: a session
	// that starts is not cut by expiry, but a connect a second before
	// expiry would fail confusingly.
	dbCertMargin = time.Minute
	// maxRouteFile bounds route.yaml.
	maxRouteFile = 64 << 10
)

// dbRoute is route.yaml: what the routed certificate next to it is for.
type dbRoute struct {
	Database string    `yaml:"database" json:"database"`
	Protocol string    `yaml:"protocol" json:"protocol"`
	Proxy    string    `yaml:"proxy" json:"proxy"`
	DBUser   string    `yaml:"db_user" json:"db_user"`
	DBName   string    `yaml:"db_name" json:"db_name"`
	Expires  time.Time `yaml:"expires" json:"expires"`
	// MySQLAddr is the gateway's MySQL listener (MySQL databases only):
	// MySQL clients cannot use the main port.
	MySQLAddr string `yaml:"mysql_addr,omitempty" json:"mysql_addr,omitempty"`
}

// dbFiles are the paths of one database login.
type dbFiles struct {
	dir, cert, key, ca, route, myCnf string
}

// dbFilesFor returns the file paths for database name in profile dir.
// The name becomes a path element, so anything that could escape the
// directory is refused rather than flattened.
func dbFilesFor(profileDir, name string) (dbFiles, error) {
	if err := checkDBName(name); err != nil {
		return dbFiles{}, trace.Wrap(err)
	}
	dir := filepath.Join(profileDir, dbDir, name)
	return dbFiles{
		dir:   dir,
		cert:  filepath.Join(dir, dbCertFile),
		key:   filepath.Join(dir, dbKeyFile),
		ca:    filepath.Join(dir, dbCAFile),
		route: filepath.Join(dir, dbRouteFile),
		myCnf: filepath.Join(dir, dbMyCnfFile),
	}, nil
}

func checkDBName(name string) error {
	if name == "" {
		return trace.BadParameter("missing database name; see \"sigil db ls\"")
	}
	if name == "." || name == ".." || len(name) > 253 {
		return trace.BadParameter("invalid database name %q", name)
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_'
		if !ok {
			return trace.BadParameter("invalid database name %q: use letters, digits, '.', '-' and '_'", name)
		}
	}
	return nil
}

func (a *app) dbCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "db",
		Short: "List databases, get certificates for them and connect",
		Long: `Reach the databases your roles allow through the Sigil gateway.

"sigil db login" gets a short-lived certificate routed to one database as one
db user; psql or mariadb then talks TLS to the gateway directly with it
("sigil db connect" does both). For applications and connection pools that
cannot use client certificates, run a local tunnel with "sigil proxy db --tunnel".`,
		Example: `  sigil db ls
  sigil db login pg1 --db-user reader --db-name app
  sigil db connect pg1 -- -c 'select count(*) from items'
  sigil db connect my1 --db-user reader --db-name app -- -e 'select count(*) from items'
  eval "$(sigil db env pg1)" && psql
  sigil proxy db pg1 --tunnel --port 15432 --db-user reader --db-name app`,
	}
	cmd.AddCommand(a.dbLsCommand(), a.dbLoginCommand(), a.dbConnectCommand(), a.dbEnvCommand())
	return cmd
}

func (a *app) dbLsCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the databases your roles let you see",
		Long: `List the databases your roles let you see, with the db users and db names
they allow ("*" means any). Connecting may still be refused by a deny rule for
one db user or db name.`,
		Example: `  sigil db ls
  sigil db ls --format json | jq -r '.[].name'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.CheckFormat(format); err != nil {
				return trace.Wrap(err)
			}
			p, clt, err := a.dbClient()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			dbs, err := listDatabases(cmd.Context(), clt, p.Proxy)
			if err != nil {
				return trace.Wrap(err)
			}
			if format != cli.FormatText {
				out := make([]dbView, 0, len(dbs))
				for _, d := range dbs {
					out = append(out, viewOf(d))
				}
				return trace.Wrap(cli.Write(a.stdout, format, out))
			}
			if len(dbs) == 0 {
				fmt.Fprintln(a.stdout, "No databases: your roles allow none (ask an admin, or see \"sigil status\" for your roles).")
				return nil
			}
			rows := make([][]string, 0, len(dbs))
			for _, d := range dbs {
				rows = append(rows, []string{d.GetName(), d.GetProtocol(), cli.Labels(d.GetLabels()),
					orNone(strings.Join(d.GetDbUsers(), ",")), orNone(strings.Join(d.GetDbNames(), ","))})
			}
			return trace.Wrap(cli.Table(a.stdout, []string{"NAME", "PROTOCOL", "LABELS", "DB USERS", "DB NAMES"}, rows))
		},
	}
	cmd.Flags().StringVar(&format, "format", cli.FormatText, "output format: text, json or yaml")
	return cmd
}

// dbView is the machine-readable form of a database.
type dbView struct {
	Name        string            `json:"name" yaml:"name"`
	Protocol    string            `json:"protocol" yaml:"protocol"`
	Labels      map[string]string `json:"labels" yaml:"labels"`
	Description string            `json:"description,omitempty" yaml:"description,omitempty"`
	DBUsers     []string          `json:"db_users" yaml:"db_users"`
	DBNames     []string          `json:"db_names" yaml:"db_names"`
}

func viewOf(d *sigilv1.DatabaseInfo) dbView {
	v := dbView{Name: d.GetName(), Protocol: d.GetProtocol(), Labels: d.GetLabels(), Description: d.GetDescription(),
		DBUsers: d.GetDbUsers(), DBNames: d.GetDbNames()}
	if v.Labels == nil {
		v.Labels = map[string]string{}
	}
	if v.DBUsers == nil {
		v.DBUsers = []string{}
	}
	if v.DBNames == nil {
		v.DBNames = []string{}
	}
	return v
}

func listDatabases(ctx context.Context, clt *client.Client, proxy string) ([]*sigilv1.DatabaseInfo, error) {
	resp, err := clt.Databases.ListDatabases(ctx, connect.NewRequest(&sigilv1.ListDatabasesRequest{}))
	if err != nil {
		return nil, apiError(err, proxy)
	}
	dbs := resp.Msg.GetDatabases()
	sort.Slice(dbs, func(i, j int) bool { return dbs[i].GetName() < dbs[j].GetName() })
	return dbs, nil
}

// loginProfile loads the current profile and refuses an expired login
// up front: the gateway would refuse too, but less helpfully.
func (a *app) loginProfile() (*client.Profile, error) {
	p, err := a.currentProfile()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if err := a.checkLoginValid(p); err != nil {
		return nil, trace.Wrap(err)
	}
	return p, nil
}

func (a *app) checkLoginValid(p *client.Profile) error {
	if exp := p.Identity.Expires(); !a.now().Before(exp) {
		return trace.AccessDenied("your Sigil login to %s expired at %s; run \"sigil login --proxy %s\"", p.Proxy, exp.UTC().Format(time.RFC3339), p.Proxy)
	}
	return nil
}

// dbClient returns the current profile and a client authenticated with it.
func (a *app) dbClient() (*client.Profile, *client.Client, error) {
	p, err := a.loginProfile()
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	clt, err := client.NewFromIdentity(p.Identity, a.timeout)
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	return p, clt, nil
}

// isPattern says whether a db user or name from a role is a pattern
// rather than one name, so it cannot be picked as a default.
func isPattern(s string) bool {
	return s == "" || strings.ContainsAny(s, "*?[") || strings.Contains(s, "{{")
}

// routeDefaults fills a missing db user (the single one the roles allow)
// and db name (the single one allowed, else the db user, which is what
// PostgreSQL itself defaults to).
func routeDefaults(d *sigilv1.DatabaseInfo, user, name string) (string, string, error) {
	if user == "" {
		var plain []string
		for _, u := range d.GetDbUsers() {
			if !isPattern(u) {
				plain = append(plain, u)
			}
		}
		if len(plain) != 1 {
			allowed := strings.Join(d.GetDbUsers(), ", ")
			if allowed == "" {
				allowed = "none"
			}
			return "", "", trace.BadParameter("choose a db user for %s with --db-user (your roles allow: %s)", d.GetName(), allowed)
		}
		user = plain[0]
	}
	if name == "" {
		if names := d.GetDbNames(); len(names) == 1 && !isPattern(names[0]) {
			name = names[0]
		} else {
			name = user
		}
	}
	return user, name, nil
}

func findDatabase(dbs []*sigilv1.DatabaseInfo, name string) (*sigilv1.DatabaseInfo, error) {
	for _, d := range dbs {
		if d.GetName() == name {
			return d, nil
		}
	}
	return nil, trace.NotFound("database %q does not exist or your roles do not allow it; see \"sigil db ls\"", name)
}

// dbCert is a freshly issued routed certificate with its key.
type dbCert struct {
	certPEM, keyPEM, caPEM []byte
	pair                   tls.Certificate
	resp                   *sigilv1.GenerateDatabaseCertResponse
}

// issueDBCert asks the gateway for a certificate for a new key, routed to
// database as user/name, authenticating with p's login certificate.
func (a *app) issueDBCert(ctx context.Context, p *client.Profile, clt *client.Client, database, user, name string, ttl time.Duration) (*dbCert, error) {
	pub, keyPEM, err := newKey()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	resp, err := clt.Databases.GenerateDatabaseCert(ctx, connect.NewRequest(&sigilv1.GenerateDatabaseCertRequest{
		Database: database, DbUser: user, DbName: name, TlsPublicKey: pub, TtlSeconds: int64(ttl / time.Second),
	}))
	if err != nil {
		return nil, apiError(err, p.Proxy)
	}
	return dbCertFrom(p, resp.Msg, keyPEM)
}

// newKey makes a fresh key to have signed: its PKIX DER public key and
// PEM private key.
func newKey() (pub, keyPEM []byte, err error) {
	key, err := client.GenerateKey()
	if err != nil {
		return nil, nil, trace.Wrap(err)
	}
	if pub, err = client.MarshalPublicKeyDER(key); err != nil {
		return nil, nil, trace.Wrap(err)
	}
	if keyPEM, err = client.MarshalPrivateKeyPEM(key); err != nil {
		return nil, nil, trace.Wrap(err)
	}
	return pub, keyPEM, nil
}

// dbCertFrom pairs an issued certificate with its key; the profile's
// gateway CA stands in when the answer carries none.
func dbCertFrom(p *client.Profile, resp *sigilv1.GenerateDatabaseCertResponse, keyPEM []byte) (*dbCert, error) {
	c := &dbCert{certPEM: resp.GetTlsCertPem(), keyPEM: keyPEM, caPEM: resp.GetTlsCaPem(), resp: resp}
	if len(c.caPEM) == 0 {
		c.caPEM = p.Identity.TLSCAPEM
	}
	var err error
	if c.pair, err = tls.X509KeyPair(c.certPEM, keyPEM); err != nil {
		return nil, trace.BadParameter("the gateway returned an unusable database certificate: %v", err)
	}
	return c, nil
}

type dbLoginOptions struct {
	database, user, name string
	ttl                  time.Duration
	// otp answers a per-session MFA check (else the terminal is asked).
	otp string
}

// dbLogin issues a routed certificate and writes it with route.yaml.
func (a *app) dbLogin(ctx context.Context, p *client.Profile, clt *client.Client, opts dbLoginOptions) (*dbRoute, dbFiles, error) {
	files, err := dbFilesFor(p.Dir, opts.database)
	if err != nil {
		return nil, dbFiles{}, trace.Wrap(err)
	}
	if opts.ttl < 0 {
		return nil, dbFiles{}, trace.BadParameter("--ttl must be positive, got %v", opts.ttl)
	}
	if opts.ttl > 0 && opts.ttl < time.Minute {
		return nil, dbFiles{}, trace.BadParameter("--ttl %v is too short; use at least 1m", opts.ttl)
	}
	user, name := opts.user, opts.name
	if user == "" || name == "" {
		dbs, err := listDatabases(ctx, clt, p.Proxy)
		if err != nil {
			return nil, dbFiles{}, trace.Wrap(err)
		}
		d, err := findDatabase(dbs, opts.database)
		if err != nil {
			return nil, dbFiles{}, trace.Wrap(err)
		}
		if user, name, err = routeDefaults(d, user, name); err != nil {
			return nil, dbFiles{}, trace.Wrap(err)
		}
	}
	role, err := a.sessionMFARole(ctx, p, clt, opts.database, user, name)
	if err != nil {
		return nil, dbFiles{}, trace.Wrap(err)
	}
	var c *dbCert
	if role != "" {
		c, err = a.mfaDBCert(ctx, p, clt, role, opts.database, user, name, opts.otp)
	} else {
		c, err = a.issueDBCert(ctx, p, clt, opts.database, user, name, opts.ttl)
	}
	if err != nil {
		return nil, dbFiles{}, trace.Wrap(err)
	}
	route := &dbRoute{
		Database: opts.database, Protocol: c.resp.GetDatabase().GetProtocol(), Proxy: p.Proxy,
		DBUser: user, DBName: name, Expires: c.pair.Leaf.NotAfter.UTC(),
	}
	if route.Protocol == "" {
		route.Protocol = protocolPostgres
	}
	if route.Protocol == protocolMySQL {
		if route.MySQLAddr, err = fetchMySQLAddr(ctx, clt, p.Proxy); err != nil {
			return nil, dbFiles{}, trace.Wrap(err)
		}
	}
	if err := writeDBLogin(files, route, c); err != nil {
		return nil, dbFiles{}, trace.Wrap(err)
	}
	return route, files, nil
}

func writeDBLogin(files dbFiles, route *dbRoute, c *dbCert) error {
	if err := os.MkdirAll(files.dir, 0o700); err != nil {
		return trace.ConvertSystemError(err)
	}
	routeYAML, err := yaml.Marshal(route)
	if err != nil {
		return trace.Wrap(err)
	}
	type file struct {
		path string
		data []byte
		mode os.FileMode
	}
	// Key first, then certificate, route last: route.yaml is what marks a
	// login usable, so a crash midway leaves no route pointing at a
	// certificate for another key. libpq refuses keys readable by others.
	toWrite := []file{
		{files.key, c.keyPEM, 0o600},
		{files.cert, c.certPEM, 0o644},
		{files.ca, c.caPEM, 0o644},
	}
	if route.Protocol == protocolMySQL {
		cnf, err := myCnf(route, files)
		if err != nil {
			return trace.Wrap(err)
		}
		// MariaDB ignores world-writable option files; 0600 keeps it private.
		toWrite = append(toWrite, file{files.myCnf, cnf, 0o600})
	}
	for _, f := range append(toWrite, file{files.route, routeYAML, 0o600}) {
		if err := client.WriteFileAtomic(f.path, f.data, f.mode); err != nil {
			return trace.Wrap(err)
		}
	}
	return nil
}

// loadDBLogin reads route.yaml and checks that the certificate and key
// next to it still form a pair.
func loadDBLogin(files dbFiles) (*dbRoute, error) {
	data, err := os.ReadFile(files.route)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, trace.NotFound("no database login")
		}
		return nil, trace.ConvertSystemError(err)
	}
	if len(data) > maxRouteFile {
		return nil, trace.LimitExceeded("%s is too large", files.route)
	}
	route := &dbRoute{}
	if err := yaml.Unmarshal(data, route); err != nil {
		return nil, trace.BadParameter("corrupt %s: %v", files.route, err)
	}
	if _, err := tls.LoadX509KeyPair(files.cert, files.key); err != nil {
		return nil, trace.BadParameter("the certificate in %s is unusable: %v", files.dir, err)
	}
	return route, nil
}

func (a *app) dbLoginCommand() *cobra.Command {
	var opts dbLoginOptions
	cmd := &cobra.Command{
		Use:   "login NAME [--db-user USER] [--db-name DB]",
		Short: "Get a certificate routed to a database, for psql or any libpq client",
		Long: `Get a short-lived certificate routed to database NAME as one db user and db
name, and store it in the current profile under db/NAME/ (tls.crt, tls.key,
ca.crt, route.yaml). Any libpq client can then connect to the gateway with
sslmode=verify-full and these files; "sigil db env" prints them as PG*
variables. For a MySQL/MariaDB database a MariaDB option file, my.cnf, is
written too ("sigil db env" points the mariadb client at it). A new login
replaces the previous one for the same database.

--db-user may be left out when your roles allow exactly one db user;
--db-name defaults to the one allowed db name, else to the db user (as in
PostgreSQL). The certificate expires with your Sigil login at the latest.`,
		Example: `  sigil db login pg1 --db-user reader --db-name app
  sigil db login pg1 --db-user reader --ttl 1h
  sigil db login pg1 --db-user reader && eval "$(sigil db env pg1)" && psql`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.database = args[0]
			p, clt, err := a.dbClient()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			route, files, err := a.dbLogin(cmd.Context(), p, clt, opts)
			if err != nil {
				return trace.Wrap(err)
			}
			a.printDBLogin(route, files)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.user, "db-user", "", "database user to connect as")
	f.StringVar(&opts.name, "db-name", "", "database name inside the server (the PostgreSQL dbname)")
	f.DurationVar(&opts.ttl, "ttl", 0, "certificate lifetime (e.g. 1h); default: until your Sigil login expires")
	f.StringVar(&opts.otp, "otp", "", "one-time code for a per-session MFA check (default: asked on the terminal)")
	return cmd
}

func (a *app) printDBLogin(route *dbRoute, files dbFiles) {
	fmt.Fprintf(a.stdout, "Logged in to database %s as db user %q, db name %q.\n", route.Database, route.DBUser, route.DBName)
	fmt.Fprintf(a.stdout, "Certificate valid until %s [%s], files in %s\n",
		route.Expires.UTC().Format("2006-01-02 15:04:05 MST"), humanDuration(route.Expires.Sub(a.now())), files.dir)
	if route.Protocol == protocolMySQL {
		fmt.Fprintf(a.stdout, `
Connect with:
  sigil db connect %s
or the mariadb client:
  eval "$(sigil db env %s)" && mariadb
  mariadb --defaults-extra-file=%s
Applications and pools that cannot use certificates:
  sigil proxy db %s --tunnel --db-user %s --db-name %s
`, route.Database, route.Database, shellQuote(files.myCnf), route.Database, shellQuote(route.DBUser), shellQuote(route.DBName))
		return
	}
	if route.Protocol != protocolPostgres {
		return
	}
	info, err := pgConnInfo(route, files)
	if err != nil {
		return
	}
	fmt.Fprintf(a.stdout, `
Connect with:
  sigil db connect %s
or any libpq client:
  psql %s
  eval "$(sigil db env %s)" && psql
Applications and pools that cannot use certificates:
  sigil proxy db %s --tunnel --db-user %s --db-name %s
`, route.Database, shellQuote(info), route.Database, route.Database, shellQuote(route.DBUser), shellQuote(route.DBName))
}

// pgParams are the libpq connection parameters for a database login.
func pgParams(route *dbRoute, files dbFiles) ([][2]string, error) {
	host, port, err := net.SplitHostPort(route.Proxy)
	if err != nil {
		return nil, trace.BadParameter("gateway address %q is not HOST:PORT", route.Proxy)
	}
	return [][2]string{
		{"host", host}, {"port", port}, {"sslmode", "verify-full"},
		{"sslcert", files.cert}, {"sslkey", files.key}, {"sslrootcert", files.ca},
		{"user", route.DBUser}, {"dbname", route.DBName},
	}, nil
}

// pgConnInfo renders the libpq keyword=value connection string.
func pgConnInfo(route *dbRoute, files dbFiles) (string, error) {
	params, err := pgParams(route, files)
	if err != nil {
		return "", trace.Wrap(err)
	}
	parts := make([]string, 0, len(params))
	for _, kv := range params {
		parts = append(parts, kv[0]+"="+connInfoQuote(kv[1]))
	}
	return strings.Join(parts, " "), nil
}

// connInfoQuote quotes a libpq conninfo value when it needs it: empty, or
// holding spaces, quotes or backslashes.
func connInfoQuote(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r'\\") {
		return v
	}
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `\'`)
	return "'" + v + "'"
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=@,+%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

type dbConnectOptions struct {
	database, user, name string
	extra                []string
	otp                  string
}

func (a *app) dbConnectCommand() *cobra.Command {
	var opts dbConnectOptions
	cmd := &cobra.Command{
		Use:   "connect NAME [--db-user USER] [--db-name DB] [-- PSQL ARGS...]",
		Short: "Open psql or mariadb on a database through the gateway",
		Long: `Open psql (PostgreSQL) or mariadb (MySQL/MariaDB) on database NAME. The
client talks TLS to the gateway directly with a certificate routed to the
database and verifies the gateway (sslmode=verify-full, --ssl-verify-server-cert);
no local proxy runs.

The certificate from "sigil db login" is reused when it is for the same db
user and db name and valid for at least another minute; otherwise sigil logs
in to the database first. Without --db-user, the db user of the last login is
used, else the single one your roles allow. Arguments after "--" go to the
client.

When one of your roles requires per-session MFA (require_session_mfa), sigil
first runs an MFA check: it asks for a one-time code from your authenticator
app (or --otp), or prints a console link where you touch your security key,
and waits. The certificate it gets is valid one minute to connect; the
session then lasts as long as your roles allow.

psql comes from the postgresql-client package (apt install postgresql-client),
mariadb from mariadb-client (apt install mariadb-client); an Oracle MySQL
"mysql" client is used when there is no mariadb.`,
		Example: `  sigil db connect pg1
  sigil db connect pg1 --db-user reader --db-name app
  sigil db connect pg1 --db-user reader -- -c 'select count(*) from items'
  sigil db connect my1 --db-user reader --db-name app -- -e 'select name from items'`,
		Args: func(cmd *cobra.Command, args []string) error {
			n := len(args)
			if dash := cmd.ArgsLenAtDash(); dash >= 0 {
				n = dash
			}
			if n != 1 {
				return trace.BadParameter("give one database name before any \"--\" (got %d); see \"sigil db ls\"", n)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.database = args[0]
			opts.extra = args[1:]
			return a.dbConnect(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.user, "db-user", "", "database user to connect as")
	f.StringVar(&opts.name, "db-name", "", "database name inside the server (the PostgreSQL dbname)")
	f.StringVar(&opts.otp, "otp", "", "one-time code for a per-session MFA check (default: asked on the terminal)")
	return cmd
}

func (a *app) dbConnect(ctx context.Context, opts dbConnectOptions) error {
	p, err := a.loginProfile()
	if err != nil {
		return trace.Wrap(err)
	}
	files, err := dbFilesFor(p.Dir, opts.database)
	if err != nil {
		return trace.Wrap(err)
	}
	route, err := loadDBLogin(files)
	if err != nil && !trace.IsNotFound(err) {
		a.logger().DebugContext(ctx, "Ignoring unusable database login.", "error", err)
	}
	if route != nil {
		if opts.user == "" {
			opts.user = route.DBUser
			if opts.name == "" {
				opts.name = route.DBName
			}
		}
		reusable := route.Proxy == p.Proxy && route.DBUser == opts.user &&
			(opts.name == "" || route.DBName == opts.name) && a.now().Add(dbCertMargin).Before(route.Expires) &&
			(route.Protocol != protocolMySQL || route.MySQLAddr != "")
		if !reusable {
			route = nil
		}
	}
	clt, err := client.NewFromIdentity(p.Identity, a.timeout)
	if err != nil {
		return trace.Wrap(err)
	}
	defer clt.Close()
	if route != nil {
		// A stored certificate never carries a per-session MFA check (those
		// last a minute), so it is no use when a role asks for one.
		role, err := a.sessionMFARole(ctx, p, clt, route.Database, route.DBUser, route.DBName)
		if err != nil {
			return trace.Wrap(err)
		}
		if role != "" {
			route = nil
		}
	}
	if route == nil {
		route, files, err = a.dbLogin(ctx, p, clt, dbLoginOptions{database: opts.database, user: opts.user, name: opts.name, otp: opts.otp})
		if err != nil {
			return trace.Wrap(err)
		}
		a.logger().DebugContext(ctx, "Logged in to the database.", "database", route.Database, "db_user", route.DBUser, "db_name", route.DBName)
	}
	var bin string
	var args []string
	switch route.Protocol {
	case protocolPostgres:
		if bin, err = exec.LookPath("psql"); err != nil {
			return trace.NotFound("psql not found in $PATH; install it (Debian/Ubuntu: apt install postgresql-client), or use \"sigil db env %s\" with another client", route.Database)
		}
		info, err := pgConnInfo(route, files)
		if err != nil {
			return trace.Wrap(err)
		}
		args = []string{info}
	case protocolMySQL:
		var mariadb bool
		if bin, mariadb, err = mysqlClient(route.Database); err != nil {
			return trace.Wrap(err)
		}
		if args, err = mysqlArgs(route, files, mariadb); err != nil {
			return trace.Wrap(err)
		}
	default:
		return trace.BadParameter("database %s has protocol %q, which sigil cannot connect to", route.Database, route.Protocol)
	}
	cmd := exec.Command(bin, append(args, opts.extra...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = a.stdin, a.stdout, a.stderr
	// No context: Ctrl-C belongs to the client (it cancels the running
	// query); sigil waits for it and passes on its exit status.
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			return exitCode(ee.ExitCode())
		}
		return trace.Wrap(err, "running %s", filepath.Base(bin))
	}
	return nil
}

// exitCode is returned by a command whose child already told the user
// what went wrong: sigil exits with this code and prints nothing more.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func (a *app) dbEnvCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "env NAME",
		Short: "Print environment variables for the last database login",
		Long: `Print environment variables that make clients connect to database NAME
through the gateway with the certificate from "sigil db login NAME".

PostgreSQL: the PG* variables (PGHOST, PGPORT, PGSSLMODE, PGSSLCERT, PGSSLKEY,
PGSSLROOTCERT, PGUSER, PGDATABASE) for any libpq client (psql, pg_dump, most
drivers).

MySQL/MariaDB: TLS options have no variables there, so "sigil db login" writes
a MariaDB option file, my.cnf, next to the certificate, and MYSQL_HOME and
MARIADB_HOME point the MariaDB clients (mariadb, mariadb-dump, ...) at it;
MYSQL_HOST and MYSQL_TCP_PORT are set too. Options in ~/.my.cnf still win.

A warning goes to stderr when the certificate has expired; the variables stay
valid after the next "sigil db login", which writes to the same files.`,
		Example: `  eval "$(sigil db env pg1)" && psql -c 'select 1'
  eval "$(sigil db env my1)" && mariadb -e 'select 1'
  sigil db env pg1 --format json`,
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := cli.CheckFormat(format); err != nil {
				return trace.Wrap(err)
			}
			p, err := a.currentProfile()
			if err != nil {
				return trace.Wrap(err)
			}
			files, err := dbFilesFor(p.Dir, args[0])
			if err != nil {
				return trace.Wrap(err)
			}
			route, err := loadDBLogin(files)
			if trace.IsNotFound(err) {
				return trace.NotFound("no certificate for database %s; run \"sigil db login %s --db-user USER\" first", args[0], args[0])
			}
			if err != nil {
				return trace.Wrap(err, "run \"sigil db login %s\" again", args[0])
			}
			if route.Protocol != protocolPostgres && route.Protocol != protocolMySQL {
				return trace.BadParameter("database %s has protocol %q, which sigil has no variables for", route.Database, route.Protocol)
			}
			if !a.now().Before(route.Expires) {
				fmt.Fprintf(a.stderr, "WARNING: the certificate for %s expired at %s; run \"sigil db login %s\".\n", route.Database, route.Expires.UTC().Format(time.RFC3339), route.Database)
			}
			var vars [][2]string
			if route.Protocol == protocolMySQL {
				if vars, err = mysqlEnv(route, files); err != nil {
					return trace.Wrap(err)
				}
			} else {
				params, err := pgParams(route, files)
				if err != nil {
					return trace.Wrap(err)
				}
				names := map[string]string{"host": "PGHOST", "port": "PGPORT", "sslmode": "PGSSLMODE", "sslcert": "PGSSLCERT",
					"sslkey": "PGSSLKEY", "sslrootcert": "PGSSLROOTCERT", "user": "PGUSER", "dbname": "PGDATABASE"}
				for _, kv := range params {
					vars = append(vars, [2]string{names[kv[0]], kv[1]})
				}
			}
			if format != cli.FormatText {
				env := make(map[string]string, len(vars))
				for _, kv := range vars {
					env[kv[0]] = kv[1]
				}
				return trace.Wrap(cli.Write(a.stdout, format, env))
			}
			for _, kv := range vars {
				fmt.Fprintf(a.stdout, "export %s=%s\n", kv[0], shellQuote(kv[1]))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&format, "format", cli.FormatText, "output format: text, json or yaml")
	return cmd
}
