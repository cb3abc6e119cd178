package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/gateway/tunnel"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/tools/internal/cli"
)

func (a *app) botCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bot",
		Short: "Run a workload's or AI agent's identity",
	}
	cmd.AddCommand(a.botStartCommand())
	return cmd
}

type botOptions struct {
	trust   trustOptions
	token   string
	dest    string
	tunnels []string
	certTTL time.Duration
	oneshot bool
}

func (a *app) botStartCommand() *cobra.Command {
	var opts botOptions
	cmd := &cobra.Command{
		Use:   "start --token T --proxy HOST:PORT --dest DIR [--db-tunnel NAME:PORT ...]",
		Short: "Join with a token and keep a renewed identity in a directory",
		Long: `Join the gateway with a join token (from "sigilctl tokens add" or "sigil agent
token") and keep the bot's or agent's identity in DIR: tls.crt, tls.key,
tls-ca.crt and proxy. The certificate is short-lived and renewed when a third
of its life is left; each file is replaced atomically, and the key stays the
same, so programs that read DIR pick up the new certificate without a restart.
Other sigil commands use it with --identity DIR (or $SIGIL_IDENTITY).

A token works once. When DIR already holds this bot's identity (a restart),
sigil renews it instead and --token is not needed. Each renewal moves the
bot to its next generation; a renewal from an older generation means the
identity was copied, and the gateway locks the bot.

--db-tunnel NAME:PORT[:DBUSER[:DBNAME]] serves database NAME on 127.0.0.1:PORT
for the workload (no TLS, no certificate, no password in its config), like
"sigil proxy db --tunnel"; repeat it for several databases.

On first contact the gateway's CA is verified with --ca-fingerprint (printed
with the token) or --ca-file.`,
		Example: `  sigil bot start --token 3f9a... --proxy sigil.example.com:3443 \
      --ca-fingerprint SHA256:AB:CD:... --dest /var/lib/sigil-bot \
      --db-tunnel pg1:15432:app:orders
  sigil --identity /var/lib/sigil-bot db ls`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.botStart(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.token, "token", os.Getenv("SIGIL_TOKEN"), "join token ($SIGIL_TOKEN); not needed when DIR holds the identity already")
	f.StringVar(&opts.trust.proxy, "proxy", "", "gateway address HOST:PORT (default: the one DIR was joined to)")
	f.StringVar(&opts.dest, "dest", "", "directory to keep the identity in (required; created 0700)")
	f.StringArrayVar(&opts.tunnels, "db-tunnel", nil, "serve a database tunnel: NAME:PORT[:DBUSER[:DBNAME]] (repeatable; port 0 picks a free one)")
	f.StringVar(&opts.trust.caFile, "ca-file", "", "CA bundle to verify the gateway with (\"sigilctl auth export --type tls-ca\")")
	f.StringVar(&opts.trust.fingerprint, "ca-fingerprint", "", "expected fingerprint of the gateway CA (SHA256:...)")
	f.DurationVar(&opts.certTTL, "cert-ttl", 0, "lifetime of each certificate (default and most: 1h)")
	f.BoolVar(&opts.oneshot, "oneshot", false, "join or renew once, then exit (for cron jobs and CI)")
	_ = cmd.MarkFlagRequired("dest")
	return cmd
}

// tunnelSpec parses NAME:PORT[:DBUSER[:DBNAME]].
func tunnelSpec(s string) (proxyDBOptions, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 4 || parts[0] == "" {
		return proxyDBOptions{}, trace.BadParameter("--db-tunnel %q: want NAME:PORT[:DBUSER[:DBNAME]], e.g. pg1:15432", s)
	}
	port, err := strconv.Atoi(parts[1])
	if err != nil || port < 0 || port > 65535 {
		return proxyDBOptions{}, trace.BadParameter("--db-tunnel %q: %q is not a TCP port", s, parts[1])
	}
	opts := proxyDBOptions{database: parts[0], port: port, tunnel: true}
	if len(parts) > 2 {
		opts.user = parts[2]
	}
	if len(parts) > 3 {
		opts.name = parts[3]
	}
	return opts, nil
}

func (a *app) botStart(ctx context.Context, opts botOptions) error {
	if opts.dest == "" {
		return trace.BadParameter("missing --dest DIR: where to keep the identity")
	}
	if opts.certTTL < 0 {
		return trace.BadParameter("--cert-ttl must be positive")
	}
	var tunnels []proxyDBOptions
	for _, s := range opts.tunnels {
		t, err := tunnelSpec(s)
		if err != nil {
			return trace.Wrap(err)
		}
		tunnels = append(tunnels, t)
	}
	if opts.oneshot && len(tunnels) > 0 {
		return trace.BadParameter("--oneshot exits at once, so it cannot serve --db-tunnel")
	}
	dest, err := filepath.Abs(opts.dest)
	if err != nil {
		return trace.Wrap(err)
	}
	b := &botRunner{a: a, dest: dest, ttl: opts.certTTL}
	id, err := b.start(ctx, opts)
	if err != nil {
		return trace.Wrap(err)
	}
	who := fmt.Sprintf("%s %q", id.Kind, id.Name)
	if id.OnBehalfOf != "" {
		who += fmt.Sprintf(" (on behalf of %s)", id.OnBehalfOf)
	}
	fmt.Fprintf(a.stdout, "Identity of %s in %s (roles: %s; generation %d; valid until %s).\n",
		who, dest, strings.Join(id.Roles, ", "), id.Generation, id.Expires.UTC().Format(time.RFC3339))
	if opts.oneshot {
		return nil
	}
	fmt.Fprintf(a.stdout, "Use it with: sigil --identity %s db ls\n", shellQuote(dest))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		cancel()
	}
	a.identityDir = dest
	for _, t := range tunnels {
		tun, err := a.openDBTunnel(ctx, t)
		if err != nil {
			cancel()
			wg.Wait()
			return trace.Wrap(err, "--db-tunnel %s", t.database)
		}
		fmt.Fprint(a.stdout, tun.howTo)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := tun.Serve(ctx); err != nil {
				fail(trace.Wrap(err, "tunnel for %s", t.database))
			}
		}()
	}
	fmt.Fprintln(a.stdout, "Renewing automatically; press Ctrl-C to stop.")
	if err := b.renewLoop(ctx); err != nil {
		fail(err)
	}
	cancel()
	wg.Wait()
	return trace.Wrap(firstErr)
}

// botRunner keeps one bot identity directory current.
type botRunner struct {
	a    *app
	dest string
	ttl  time.Duration
}

func (b *botRunner) log() *slog.Logger { return b.a.logger().With("dest", b.dest) }

// start renews the identity already in dest (a restart) or joins with
// the token, and returns the identity now in dest.
func (b *botRunner) start(ctx context.Context, opts botOptions) (*certid.Identity, error) {
	existing, err := client.LoadIdentityDir(b.dest)
	switch {
	case err == nil:
		if opts.trust.proxy != "" && opts.trust.proxy != existing.Proxy {
			return nil, trace.BadParameter("%s holds an identity for %s, not %s; use another --dest", b.dest, existing.Proxy, opts.trust.proxy)
		}
		cur, cerr := existing.Certificate()
		if cerr == nil && b.a.now().Before(cur.NotAfter) {
			id, rerr := b.renew(ctx)
			if rerr == nil || opts.oneshot || trace.IsAccessDenied(rerr) {
				return id, trace.Wrap(rerr)
			}
			// The gateway is unreachable for now: a restarted bot goes on
			// with the certificate it has and the loop retries.
			b.log().WarnContext(ctx, "Renewal at start failed; using the current certificate meanwhile.", "error", errorMessage(rerr))
			return identityOfPEM(existing.CertPEM)
		}
		if opts.token == "" {
			return nil, trace.AccessDenied("the identity in %s expired at %s and cannot be renewed; join again with a new token (--token)", b.dest, cur.NotAfter.UTC().Format(time.RFC3339))
		}
	case trace.IsNotFound(err):
		if opts.token == "" {
			return nil, trace.BadParameter("%s holds no identity yet: pass the join token with --token (from \"sigilctl tokens add\" or \"sigil agent token\")", b.dest)
		}
	default:
		return nil, trace.Wrap(err)
	}
	return b.join(ctx, opts)
}

func (b *botRunner) join(ctx context.Context, opts botOptions) (*certid.Identity, error) {
	if err := checkProxy(opts.trust.proxy); err != nil {
		return nil, trace.Wrap(err)
	}
	if err := os.MkdirAll(b.dest, 0o700); err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	// known_cas lives with the identity: a bot has no home of its own.
	caPEM, err := b.a.resolveCA(ctx, b.dest, opts.trust)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	key, err := client.GenerateKey()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	pubDER, err := client.MarshalPublicKeyDER(key)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	clt, err := b.a.anonClient(opts.trust.proxy, caPEM)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	defer clt.Close()
	resp, err := clt.Join.Join(ctx, connect.NewRequest(&sigilv1.JoinRequest{
		Token: opts.token, TlsPublicKey: pubDER, TtlSeconds: int64(b.ttl / time.Second),
	}))
	if err != nil {
		return nil, apiError(err, opts.trust.proxy)
	}
	keyPEM, err := client.MarshalPrivateKeyPEM(key)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	// The CA the user verified, not one from the response.
	if err := client.WriteIdentityDir(b.dest, &client.Identity{
		Proxy: opts.trust.proxy, CertPEM: resp.Msg.TlsCertPem, KeyPEM: keyPEM, TLSCAPEM: caPEM,
	}); err != nil {
		return nil, trace.Wrap(err)
	}
	return identityOfPEM(resp.Msg.TlsCertPem)
}

// renew asks for the next generation with the current certificate and
// replaces only the certificate file: the key stays, so a reader never
// sees a certificate next to a key that does not match it.
func (b *botRunner) renew(ctx context.Context) (*certid.Identity, error) {
	cur, err := client.LoadIdentityDir(b.dest)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	key, err := client.ParsePrivateKeyPEM(cur.KeyPEM)
	if err != nil {
		return nil, trace.Wrap(err, "reading %s", filepath.Join(b.dest, client.KeyFile))
	}
	pubDER, err := client.MarshalPublicKeyDER(key)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	clt, err := client.NewFromIdentity(cur, b.a.timeout)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	defer clt.Close()
	resp, err := clt.Join.RenewBotCert(ctx, connect.NewRequest(&sigilv1.RenewBotCertRequest{
		TlsPublicKey: pubDER, TtlSeconds: int64(b.ttl / time.Second),
	}))
	if err != nil {
		return nil, apiError(err, cur.Proxy)
	}
	if err := client.WriteFileAtomic(filepath.Join(b.dest, client.CertFile), resp.Msg.TlsCertPem, 0o644); err != nil {
		return nil, trace.Wrap(err)
	}
	return identityOfPEM(resp.Msg.TlsCertPem)
}

// renewAt is when a certificate is renewed: with a third of its life left.
func renewAt(cert *x509.Certificate) time.Time {
	return cert.NotAfter.Add(-cert.NotAfter.Sub(cert.NotBefore) / 3)
}

// renewLoop renews until ctx ends. A refusal (lock, generation mismatch,
// removed bot) ends it with the gateway's reason; other failures are
// retried until the certificate expires.
func (b *botRunner) renewLoop(ctx context.Context) error {
	for {
		cur, err := client.LoadIdentityDir(b.dest)
		if err != nil {
			return trace.Wrap(err)
		}
		cert, err := cur.Certificate()
		if err != nil {
			return trace.Wrap(err)
		}
		wait := renewAt(cert).Sub(b.a.now())
		if !tunnel.Sleep(ctx, wait) {
			return nil
		}
		id, err := b.renew(ctx)
		for err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if trace.IsAccessDenied(err) || errors.Is(err, os.ErrPermission) {
				return trace.Wrap(err, "renewal refused; the identity in %s is no longer renewed", b.dest)
			}
			left := cert.NotAfter.Sub(b.a.now())
			if left <= 0 {
				return trace.Wrap(err, "the certificate in %s expired before it could be renewed", b.dest)
			}
			retry := min(max(left/10, time.Second), 30*time.Second)
			b.log().WarnContext(ctx, "Renewal failed; retrying.", "error", errorMessage(err), "retry_in", retry)
			if !tunnel.Sleep(ctx, retry) {
				return nil
			}
			id, err = b.renew(ctx)
		}
		b.log().InfoContext(ctx, "Renewed.", "generation", id.Generation, "expires", id.Expires.UTC().Format(time.RFC3339))
	}
}

func (a *app) agentCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Give an AI agent its own identity, acting on your behalf",
	}
	cmd.AddCommand(a.agentTokenCommand())
	return cmd
}

func (a *app) agentTokenCommand() *cobra.Command {
	var (
		name, roles, format string
		ttl                 time.Duration
	)
	cmd := &cobra.Command{
		Use:   "token --name NAME --roles R1[,R2]",
		Short: "Create a join token for an AI agent that acts on your behalf",
		Long: `Create a join token for an AI agent of yours. The agent joins with "sigil bot
start" and gets its own identity (kind agent) that acts on your behalf: it can
do only what both its roles and your current roles allow, it runs read-only
statements unless a role says otherwise, and where a role asks for
write_approval each of its writes waits for a person to approve it. Everything
it does is audited as the agent, on your behalf.

The agent's roles may be ones you lack (roles your admins wrote for agents,
e.g. with write_approval): what it can do is always also bounded by your own
current access, and a lock on you stops it too. The token works once, within
--ttl.`,
		Example: `  sigil agent token --name copilot --roles reader
  sigil bot start --token TOKEN --proxy HOST:PORT --ca-fingerprint SHA256:... --dest ./copilot
  sigil --identity ./copilot mcp db pg1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.CheckFormat(format); err != nil {
				return trace.Wrap(err)
			}
			if ttl <= 0 {
				return trace.BadParameter("--ttl must be positive")
			}
			p, clt, err := a.dbClient()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Tokens.AddToken(cmd.Context(), connect.NewRequest(&sigilv1.AddTokenRequest{
				Kind: "agent", Name: name, Roles: cli.SplitList(roles), TtlSeconds: int64(ttl / time.Second), OnBehalfOf: p.User,
			}))
			if err != nil {
				return apiError(err, p.Proxy)
			}
			fp := ""
			if certs, err := client.ParseCertificatesPEM(p.Identity.TLSCAPEM); err == nil {
				fp = client.Fingerprint(certs[0].Raw)
			}
			start := fmt.Sprintf("sigil bot start --token %s --proxy %s --ca-fingerprint %s --dest ./%s", resp.Msg.Token, p.Proxy, fp, name)
			if format != cli.FormatText {
				return cli.Write(a.stdout, format, map[string]string{
					"token": resp.Msg.Token, "name": name, "on_behalf_of": p.User, "proxy": p.Proxy, "ca_fingerprint": fp, "start": start,
				})
			}
			fmt.Fprintf(a.stdout, "Join token for agent %q acting on behalf of %s (roles: %s; usable once within %s):\n\n  %s\n\nStart the agent's identity with:\n\n  %s\n",
				name, p.User, strings.Join(cli.SplitList(roles), ", "), ttl, resp.Msg.Token, start)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name of the agent (required)")
	cmd.Flags().StringVar(&roles, "roles", "", "comma-separated roles for the agent, from your own (required)")
	cmd.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token can be used to join")
	cmd.Flags().StringVar(&format, "format", "text", "output format: text, json or yaml")
	_ = cmd.MarkFlagRequired("name")
	_ = cmd.MarkFlagRequired("roles")
	return cmd
}
