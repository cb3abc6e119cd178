package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	"github.com/sigilhq/sigil/api/client"
	"github.com/sigilhq/sigil/gateway/tunnel"
)

func (a *app) proxyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run local listeners that carry connections to the gateway",
		Long: `Run local listeners that carry connections to the gateway for clients that
cannot present Sigil certificates themselves.`,
		Example: `  sigil proxy db pg1 --tunnel --port 15432 --db-user reader --db-name app
  ssh -o ProxyCommand="sigil proxy ssh %r@%h:%p" alice@node1`,
	}
	cmd.AddCommand(a.proxyDBCommand(), a.proxySSHCommand())
	return cmd
}

type proxyDBOptions struct {
	database, user, name string
	otp                  string
	tunnel               bool
	port                 int
	certTTL              time.Duration
}

func (a *app) proxyDBCommand() *cobra.Command {
	var opts proxyDBOptions
	cmd := &cobra.Command{
		Use:   "db NAME --tunnel [--port PORT] [--db-user USER] [--db-name DB]",
		Short: "Serve a database without TLS on 127.0.0.1 for apps and pools",
		Long: `Serve database NAME on 127.0.0.1 as plain PostgreSQL or MySQL: applications
and connection pools connect with no TLS, no certificate and no password, and each
connection is carried to the gateway over TLS with a certificate routed to
NAME as --db-user/--db-name. Only this machine can connect (the listener is on
loopback), and every query is still checked and audited by the gateway as you.

The certificate lives in memory and is renewed when a third of its lifetime is
left; open connections are not affected by a renewal. The renewals use your
Sigil login, so when that expires, run "sigil login" again: the tunnel picks it
up without a restart, and open connections keep working meanwhile.

When a role requires per-session MFA (require_session_mfa), the tunnel first
asks for an MFA check (a one-time code, or a security key in the browser).
The certificate it yields opens sessions for one minute; open sessions then
live on. After that minute, a new connection is refused with a message and
the tunnel asks for a new check on its terminal; connect again once it passed.

Without --port a free port is chosen and printed. Stop with Ctrl-C.`,
		Example: `  sigil proxy db pg1 --tunnel --port 15432 --db-user reader --db-name app
  DATABASE_URL='postgres://reader@127.0.0.1:15432/app?sslmode=disable' ./my-app
  sigil proxy db my1 --tunnel --port 13306 --db-user reader --db-name app
  mariadb -h 127.0.0.1 -P 13306 -u reader --skip-ssl app`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.database = args[0]
			return a.proxyDB(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&opts.tunnel, "tunnel", false, "serve the database without TLS locally and handle certificates in sigil (required)")
	f.IntVar(&opts.port, "port", 0, "local port on 127.0.0.1 (default: a free port)")
	f.StringVar(&opts.user, "db-user", "", "database user to connect as")
	f.StringVar(&opts.name, "db-name", "", "database name inside the server (the PostgreSQL dbname)")
	f.StringVar(&opts.otp, "otp", "", "one-time code for the first per-session MFA check (later ones are asked on the terminal)")
	f.DurationVar(&opts.certTTL, "cert-ttl", 0, "lifetime of each database certificate (testing renewals)")
	f.MarkHidden("cert-ttl")
	return cmd
}

func (a *app) proxyDB(ctx context.Context, opts proxyDBOptions) error {
	if !opts.tunnel {
		return trace.BadParameter("only tunnel mode exists: add --tunnel (psql can reach the gateway directly with \"sigil db connect %s\")", opts.database)
	}
	tun, err := a.openDBTunnel(ctx, opts)
	if err != nil {
		return trace.Wrap(err)
	}
	fmt.Fprintf(a.stdout, "%sPress Ctrl-C to stop.\n", tun.howTo)
	return trace.Wrap(tun.Serve(ctx))
}

// dbTunnel is a tunnel ready to serve, with how to connect to it.
type dbTunnel struct {
	*tunnel.Tunnel
	howTo string
}

// openDBTunnel checks the route, gets the first certificate and opens the
// local listener of a database tunnel; Serve runs it and renews its
// certificates from the current profile (or identity directory).
func (a *app) openDBTunnel(ctx context.Context, opts proxyDBOptions) (*dbTunnel, error) {
	if opts.port < 0 || opts.port > 65535 {
		return nil, trace.BadParameter("--port %d is not a TCP port", opts.port)
	}
	if opts.certTTL < 0 {
		return nil, trace.BadParameter("--cert-ttl must be positive")
	}
	if err := checkDBName(opts.database); err != nil {
		return nil, trace.Wrap(err)
	}
	p, clt, err := a.dbClient()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	defer clt.Close()
	dbs, err := listDatabases(ctx, clt, p.Proxy)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	d, err := findDatabase(dbs, opts.database)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	switch d.GetProtocol() {
	case protocolPostgres, protocolMySQL:
	default:
		return nil, trace.BadParameter("database %s has protocol %q, which the tunnel cannot carry", d.GetName(), d.GetProtocol())
	}
	user, name, err := routeDefaults(d, opts.user, opts.name)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	role, err := a.sessionMFARole(ctx, p, clt, opts.database, user, name)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	var first *dbCert
	if role != "" {
		first, err = a.mfaDBCert(ctx, p, clt, role, opts.database, user, name, opts.otp)
	} else {
		first, err = a.issueDBCert(ctx, p, clt, opts.database, user, name, opts.certTTL)
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}

	level := slog.LevelInfo
	if a.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: level})).With("database", opts.database)
	home, proxy := client.Home(), p.Proxy
	var certs tunnel.CertSource
	if role != "" {
		// Each certificate opens sessions for a minute only: the tunnel
		// keeps it for new connections meanwhile, then asks again.
		certs = newMFACerts(&first.pair, func(ctx context.Context) (*tls.Certificate, error) {
			p, clt, err := a.freshClient(home, proxy)
			if err != nil {
				return nil, trace.Wrap(err)
			}
			defer clt.Close()
			c, err := a.mfaDBCert(ctx, p, clt, role, opts.database, user, name, "")
			if err != nil {
				return nil, trace.Wrap(err)
			}
			return &c.pair, nil
		}, log, a.now)
	} else if certs, err = a.renewingDBCerts(first, proxy, opts.database, user, name, opts.certTTL, log); err != nil {
		return nil, trace.Wrap(err)
	}
	// The pinned CA of the profile, not one from a response: it is what
	// the user agreed to trust.
	pool, err := client.CertPoolFromPEM(p.Identity.TLSCAPEM)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	tun, err := tunnel.New(tunnel.Config{
		Protocol:    d.GetProtocol(),
		ListenAddr:  net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.port)),
		GatewayAddr: p.Proxy,
		Certs:       certs,
		RootCAs:     pool,
		Logger:      log,
	})
	if err != nil {
		return nil, trace.Wrap(err, "starting the local listener (is port %d free?)", opts.port)
	}
	_, port, _ := net.SplitHostPort(tun.Addr().String())
	if d.GetProtocol() == protocolMySQL {
		// --skip-ssl: the leg to the gateway is the encrypted one, and
		// newer clients would otherwise insist on TLS to 127.0.0.1.
		return &dbTunnel{Tunnel: tun, howTo: fmt.Sprintf(`Tunnel for database %s (db user %q, db name %q) listening on %s
Connect without TLS or password, e.g.:
  mariadb -h 127.0.0.1 -P %s -u %s --skip-ssl %s
  %s
`, opts.database, user, name, tun.Addr(), port, shellQuote(user), shellQuote(name), goMySQLDSN(user, tun.Addr().String(), name))}, nil
	}
	dsn := url.URL{Scheme: "postgres", User: url.User(user), Host: tun.Addr().String(), Path: "/" + name, RawQuery: "sslmode=disable"}
	return &dbTunnel{Tunnel: tun, howTo: fmt.Sprintf(`Tunnel for database %s (db user %q, db name %q) listening on %s
Connect without TLS or password, e.g.:
  psql 'host=127.0.0.1 port=%s user=%s dbname=%s sslmode=disable'
  %s
`, opts.database, user, name, tun.Addr(), port, connInfoQuote(user), connInfoQuote(name), dsn.String())}, nil
}

// renewingDBCerts keeps a database certificate renewed from the profile
// (reloaded each time, so a "sigil login" or a bot renewal done meanwhile
// is used), starting with first.
func (a *app) renewingDBCerts(first *dbCert, proxy, database, user, name string, ttl time.Duration, log *slog.Logger) (*tunnel.RenewingCerts, error) {
	home := client.Home()
	certs, err := tunnel.NewRenewingCerts(tunnel.RenewingCertsConfig{
		Initial: &first.pair,
		Issue: func(ctx context.Context) (*tls.Certificate, error) {
			p, clt, err := a.freshClient(home, proxy)
			if err != nil {
				return nil, trace.Wrap(err)
			}
			defer clt.Close()
			c, err := a.issueDBCert(ctx, p, clt, database, user, name, ttl)
			if err != nil {
				return nil, trace.Wrap(err)
			}
			return &c.pair, nil
		},
		Logger: log,
		Clock:  a.now,
	})
	return certs, trace.Wrap(err)
}
