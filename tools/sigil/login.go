package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
)

// anonClient returns a client for the unauthenticated AuthService calls,
// verifying the gateway with caPEM.
func (a *app) anonClient(proxy string, caPEM []byte) (*client.Client, error) {
	pool, err := client.CertPoolFromPEM(caPEM)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	c, err := client.New(client.Config{Addr: proxy, TLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}, Timeout: a.timeout})
	return c, trace.Wrap(err)
}

func checkProxy(proxy string) error {
	if proxy == "" {
		return trace.BadParameter("missing --proxy HOST:PORT (the address of the Sigil gateway, e.g. 127.0.0.1:3443)")
	}
	host, port, err := net.SplitHostPort(proxy)
	if err != nil || host == "" || port == "" {
		return trace.BadParameter("--proxy %q is not HOST:PORT (e.g. 127.0.0.1:3443)", proxy)
	}
	return nil
}

func (a *app) signupCommand() *cobra.Command {
	var (
		opts          trustOptions
		passwordStdin bool
	)
	cmd := &cobra.Command{
		Use:   "signup TOKEN|URL --proxy HOST:PORT",
		Short: "Complete a signup link: choose your password",
		Long: `Complete the signup link an admin created with "sigilctl users add": it sets
your password. TOKEN is the last part of the link; the whole link works too,
and then --proxy defaults to its host:port.

On first contact the gateway's CA fingerprint is shown and you are asked to
trust it; pass --ca-file (from "sigilctl auth export --type tls-ca") to skip
the question.`,
		Example: `  sigil signup https://127.0.0.1:3443/web/signup/7f3c9a...
  sigil signup 7f3c9a... --proxy sigil.example.com:3443 --ca-file sigil-ca.pem
  printf '%s\n' "$PASSWORD" | sigil signup 7f3c9a... --proxy 127.0.0.1:3443 --password-stdin`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			token, proxyFromURL, err := parseSignupArg(args[0])
			if err != nil {
				return trace.Wrap(err)
			}
			if opts.proxy == "" {
				opts.proxy = proxyFromURL
			}
			return a.signup(cmd.Context(), opts, token, passwordStdin)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.proxy, "proxy", "", "gateway address HOST:PORT")
	f.StringVar(&opts.caFile, "ca-file", "", "PEM file of the gateway CA (from \"sigilctl auth export --type tls-ca\")")
	f.StringVar(&opts.fingerprint, "ca-fingerprint", "", "trust the gateway CA only if it has this fingerprint (sha256:AB:CD:...), without asking")
	f.BoolVar(&passwordStdin, "password-stdin", false, "read the password from stdin instead of the terminal")
	return cmd
}

// parseSignupArg accepts a bare token or a https://HOST:PORT/web/signup/TOKEN link.
func parseSignupArg(arg string) (token, proxy string, err error) {
	if !strings.Contains(arg, "://") {
		if arg == "" || strings.ContainsAny(arg, "/ \t") {
			return "", "", trace.BadParameter("invalid signup token %q", arg)
		}
		return arg, "", nil
	}
	u, err := url.Parse(arg)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", "", trace.BadParameter("invalid signup link %q (want https://HOST:PORT/web/signup/TOKEN)", arg)
	}
	const prefix = "/web/signup/"
	if !strings.HasPrefix(u.Path, prefix) || len(u.Path) == len(prefix) || strings.Contains(u.Path[len(prefix):], "/") {
		return "", "", trace.BadParameter("invalid signup link %q (want https://HOST:PORT/web/signup/TOKEN)", arg)
	}
	proxy = u.Host
	if u.Port() == "" {
		proxy = net.JoinHostPort(u.Hostname(), "443")
	}
	return u.Path[len(prefix):], proxy, nil
}

func (a *app) signup(ctx context.Context, opts trustOptions, token string, passwordStdin bool) error {
	if err := checkProxy(opts.proxy); err != nil {
		return trace.Wrap(err)
	}
	home := client.Home()
	caPEM, err := a.resolveCA(ctx, home, opts)
	if err != nil {
		return trace.Wrap(err)
	}
	password, err := a.newPassword(passwordStdin)
	if err != nil {
		return trace.Wrap(err)
	}
	c, err := a.anonClient(opts.proxy, caPEM)
	if err != nil {
		return trace.Wrap(err)
	}
	defer c.Close()
	resp, err := c.Auth.Signup(ctx, connect.NewRequest(&sigilv1.SignupRequest{Token: token, Password: password}))
	if err != nil {
		return apiError(err, opts.proxy)
	}
	user := resp.Msg.GetUser()
	fmt.Fprintf(a.stdout, "Signed up as %q. Next: sigil login --proxy %s --user %s\n", user, opts.proxy, user)
	return nil
}

// newPassword reads a new password: from stdin, or typed twice on the terminal.
func (a *app) newPassword(fromStdin bool) (string, error) {
	if fromStdin {
		return readPasswordStdin(a.stdin)
	}
	tty, err := a.openTerminal()
	if err != nil {
		return "", trace.BadParameter("no terminal to type a password on; pipe it with --password-stdin")
	}
	defer tty.Close()
	first, err := tty.ReadPassword("New password: ")
	if err != nil {
		return "", trace.Wrap(err)
	}
	if first == "" {
		return "", trace.BadParameter("the password must not be empty")
	}
	second, err := tty.ReadPassword("Repeat password: ")
	if err != nil {
		return "", trace.Wrap(err)
	}
	if first != second {
		return "", trace.BadParameter("the passwords do not match; nothing was changed")
	}
	return first, nil
}

// password reads the login password.
func (a *app) password(fromStdin bool, user, proxy string) (string, error) {
	if fromStdin {
		return readPasswordStdin(a.stdin)
	}
	tty, err := a.openTerminal()
	if err != nil {
		return "", trace.BadParameter("no terminal to type a password on; pipe it with --password-stdin")
	}
	defer tty.Close()
	pw, err := tty.ReadPassword(fmt.Sprintf("Password for %s@%s: ", user, proxy))
	if err != nil {
		return "", trace.Wrap(err)
	}
	if pw == "" {
		return "", trace.BadParameter("empty password")
	}
	return pw, nil
}

type loginOptions struct {
	trust         trustOptions
	user          string
	auth          string
	browser       string
	ttl           time.Duration
	passwordStdin bool
	otp           string
	requestID     string
}

func (a *app) loginCommand() *cobra.Command {
	var opts loginOptions
	cmd := &cobra.Command{
		Use:   "login --proxy HOST:PORT [--user USER | --auth CONNECTOR]",
		Short: "Log in to a gateway and store short-lived certificates in a profile",
		Long: `Log in to a Sigil gateway with your password (and one-time code if your
account has one), or through your identity provider with --auth CONNECTOR.
sigil generates a fresh key, the gateway signs a short-lived certificate for
it, and both are stored in the profile $SIGIL_HOME/profiles/HOST_PORT
(default ~/.sigil), which becomes current.

With --auth CONNECTOR (an OIDC or SAML connector; the gateway's /web/login
page lists them), sigil prints a login URL and opens it in a browser when
there is a display. After you log in at the identity provider, the browser
comes back to a listener sigil runs on 127.0.0.1, and your roles and traits
are whatever the connector maps your groups and claims to at that moment.

The first time you reach a gateway, sigil shows the fingerprint of its CA and
asks whether to trust it, like ssh does for host keys; the answer is kept in
$SIGIL_HOME/known_cas and a later change of CA is refused. To skip the
question, pass the CA itself (--ca-file, from "sigilctl auth export --type
tls-ca") or the fingerprint you expect (--ca-fingerprint).`,
		Example: `  sigil login --proxy 127.0.0.1:3443
  sigil login --proxy sigil.example.com:3443 --user alice --ca-file sigil-ca.pem --ttl 2h
  printf '%s\n' "$PASSWORD" | sigil login --proxy 127.0.0.1:3443 --user alice --password-stdin --otp 123456
  sigil login --proxy sigil.example.com:3443 --auth okta
  sigil login --proxy sigil.example.com:3443 --auth okta --browser none   # print the URL only
  sigil login --request-id 6f1c...   # add the roles of an approved access request`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.login(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.trust.proxy, "proxy", "", "gateway address HOST:PORT")
	f.StringVar(&opts.user, "user", os.Getenv("USER"), "user to log in as")
	f.StringVar(&opts.auth, "auth", types.AuthLocal, "authentication method: local (password) or the name of an SSO connector")
	f.StringVar(&opts.browser, "browser", "", "with --auth CONNECTOR: \"none\" only prints the login URL instead of also opening a browser")
	f.StringVar(&opts.trust.caFile, "ca-file", "", "PEM file of the gateway CA (from \"sigilctl auth export --type tls-ca\")")
	f.StringVar(&opts.trust.fingerprint, "ca-fingerprint", "", "trust the gateway CA only if it has this fingerprint (sha256:AB:CD:...), without asking")
	f.DurationVar(&opts.ttl, "ttl", 0, "certificate lifetime (e.g. 2h); default and maximum come from your roles")
	f.BoolVar(&opts.passwordStdin, "password-stdin", false, "read the password from stdin instead of the terminal")
	f.StringVar(&opts.otp, "otp", "", "one-time code from your authenticator app")
	f.StringVar(&opts.requestID, "request-id", "", "add the roles of your approved access request ID to the current login (see \"sigil request\"); no password needed")
	return cmd
}

func (a *app) login(ctx context.Context, opts loginOptions) error {
	if opts.requestID != "" {
		// The current login proves who you are; the request adds roles.
		p, clt, err := a.dbClient()
		if err != nil {
			return trace.Wrap(err)
		}
		defer clt.Close()
		if opts.trust.proxy != "" && opts.trust.proxy != p.Proxy {
			return trace.BadParameter("--request-id uses the current login (to %s), not %s; log in to %s first", p.Proxy, opts.trust.proxy, opts.trust.proxy)
		}
		return trace.Wrap(a.assumeRequest(ctx, p, clt, opts.requestID))
	}
	proxy := opts.trust.proxy
	if err := checkProxy(proxy); err != nil {
		return trace.Wrap(err)
	}
	if opts.ttl < 0 {
		return trace.BadParameter("--ttl must be positive, got %v", opts.ttl)
	}
	if opts.ttl > 0 && opts.ttl < time.Minute {
		return trace.BadParameter("--ttl %v is too short; use at least 1m", opts.ttl)
	}
	if opts.auth == "" {
		return trace.BadParameter("--auth: use local (password) or the name of an SSO connector")
	}
	if opts.auth != types.AuthLocal {
		return a.ssoLogin(ctx, opts)
	}
	if opts.user == "" {
		return trace.BadParameter("missing --user (and $USER is not set)")
	}
	home := client.Home()
	caPEM, err := a.resolveCA(ctx, home, opts.trust)
	if err != nil {
		return trace.Wrap(err)
	}
	password, err := a.password(opts.passwordStdin, opts.user, proxy)
	if err != nil {
		return trace.Wrap(err)
	}
	pubDER, keyPEM, err := newKey()
	if err != nil {
		return trace.Wrap(err)
	}
	c, err := a.anonClient(proxy, caPEM)
	if err != nil {
		return trace.Wrap(err)
	}
	defer c.Close()
	a.logger().DebugContext(ctx, "Logging in.", "proxy", proxy, "user", opts.user, "ttl", opts.ttl)
	req := &sigilv1.LoginRequest{
		User:         opts.user,
		Password:     password,
		Otp:          opts.otp,
		TlsPublicKey: pubDER,
		TtlSeconds:   int64(opts.ttl / time.Second),
	}
	if err := a.loginSecondFactor(ctx, c, proxy, req); err != nil {
		return trace.Wrap(err)
	}
	resp, err := c.Auth.Login(ctx, connect.NewRequest(req))
	if err != nil {
		return apiError(err, proxy)
	}
	return a.saveLogin(ctx, home, proxy, opts.user, caPEM, keyPEM, resp.Msg)
}

// saveLogin writes the profile of a finished login (password or SSO) and
// makes it current.
func (a *app) saveLogin(ctx context.Context, home, proxy, user string, caPEM, keyPEM []byte, resp *sigilv1.LoginResponse) error {
	id := &client.Identity{Proxy: proxy, CertPEM: resp.GetTlsCertPem(), KeyPEM: keyPEM, TLSCAPEM: caPEM}
	if len(id.CertPEM) == 0 {
		return trace.BadParameter("the gateway returned no certificate")
	}
	// A certificate for another key would make a profile that cannot work.
	if _, err := id.TLSConfig(); err != nil {
		return trace.Wrap(err, "the gateway returned an unusable certificate")
	}
	p := profileFromLogin(proxy, user, resp, id)
	if err := client.SaveProfile(home, p); err != nil {
		return trace.Wrap(err, "saving the profile")
	}
	a.logger().DebugContext(ctx, "Saved profile.", "dir", p.Dir)
	a.loginSSH(ctx, p)
	return trace.Wrap(a.printStatus(p, "text"))
}

func profileFromLogin(proxy, user string, resp *sigilv1.LoginResponse, id *client.Identity) *client.Profile {
	p := &client.Profile{Proxy: proxy, User: user, Kind: "human", Identity: id, Expires: id.Expires()}
	if ident := resp.GetIdentity(); ident != nil {
		if ident.GetName() != "" {
			p.User = ident.GetName()
		}
		p.Kind = kindName(ident.GetKind())
		p.Roles = append([]string(nil), ident.GetRoles()...)
		sort.Strings(p.Roles)
		if len(ident.GetTraits()) > 0 {
			p.Traits = make(map[string][]string, len(ident.GetTraits()))
			for k, v := range ident.GetTraits() {
				p.Traits[k] = append([]string(nil), v.GetValues()...)
			}
		}
	}
	if resp.GetExpires() != nil && p.Expires.IsZero() {
		p.Expires = resp.GetExpires().AsTime()
	}
	return p
}

func kindName(k sigilv1.IdentityKind) string {
	switch k {
	case sigilv1.IdentityKind_IDENTITY_KIND_HUMAN:
		return "human"
	case sigilv1.IdentityKind_IDENTITY_KIND_BOT:
		return "bot"
	case sigilv1.IdentityKind_IDENTITY_KIND_AGENT:
		return "agent"
	}
	return "unknown"
}
