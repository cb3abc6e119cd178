package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/term"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/tools/internal/cli"
)

// jumpUser is the user name of jump connections to the gateway: any name
// without "@" means "no node yet" to the gateway.
const jumpUser = "jump"

// nodeView is one line of "sigil ls".
type nodeView struct {
	Name        string            `json:"name" yaml:"name"`
	Addr        string            `json:"addr" yaml:"addr"`
	Labels      map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	Description string            `json:"description,omitempty" yaml:"description,omitempty"`
	Logins      []string          `json:"logins" yaml:"logins"`
}

func listNodes(ctx context.Context, clt *client.Client, proxy string) ([]*sigilv1.NodeInfo, error) {
	resp, err := clt.SSH.ListNodes(ctx, connect.NewRequest(&sigilv1.ListNodesRequest{}))
	if err != nil {
		return nil, apiError(err, proxy)
	}
	nodes := resp.Msg.GetNodes()
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].GetName() < nodes[j].GetName() })
	return nodes, nil
}

func (a *app) lsCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the SSH nodes your roles let you reach",
		Long: `List the nodes (SSH servers) your roles let you see, with the logins they
allow there ("*" means any). Connect with "sigil ssh LOGIN@NODE".`,
		Example: `  sigil ls
  sigil ls --format json | jq -r '.[].name'`,
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
			nodes, err := listNodes(cmd.Context(), clt, p.Proxy)
			if err != nil {
				return trace.Wrap(err)
			}
			if format != cli.FormatText {
				out := make([]nodeView, 0, len(nodes))
				for _, n := range nodes {
					out = append(out, nodeView{Name: n.GetName(), Addr: n.GetAddr(), Labels: n.GetLabels(), Description: n.GetDescription(), Logins: n.GetLogins()})
				}
				return trace.Wrap(cli.Write(a.stdout, format, out))
			}
			if len(nodes) == 0 {
				fmt.Fprintln(a.stdout, "No nodes: your roles allow none (ask an admin, or see \"sigil status\" for your roles).")
				return nil
			}
			rows := make([][]string, 0, len(nodes))
			for _, n := range nodes {
				rows = append(rows, []string{n.GetName(), n.GetAddr(), cli.Labels(n.GetLabels()), orNone(strings.Join(n.GetLogins(), ","))})
			}
			return trace.Wrap(cli.Table(a.stdout, []string{"NAME", "ADDR", "LABELS", "LOGINS"}, rows))
		},
	}
	cmd.Flags().StringVar(&format, "format", cli.FormatText, "output format: text, json or yaml")
	return cmd
}

type sshOptions struct {
	target     string
	login      string
	command    []string
	forceTTY   bool
	disableTTY bool
}

func (a *app) sshCommand() *cobra.Command {
	var opts sshOptions
	cmd := &cobra.Command{
		Use:   "ssh [LOGIN@]NODE [-- COMMAND...]",
		Short: "Open a shell or run a command on a node through the gateway",
		Long: `Log in to NODE as LOGIN through the Sigil gateway: an interactive shell (recorded
by the gateway), or COMMAND with its output and exit status.

Without LOGIN, your login is picked from those your roles allow on the node
($USER if allowed, else the first). Stock OpenSSH tools (ssh, scp, sftp,
rsync) work too: see "sigil config ssh".`,
		Example: `  sigil ssh alice@node1
  sigil ssh node1 -- uname -a
  sigil ssh -t alice@node1 -- top`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.target = args[0]
			opts.command = args[1:]
			if len(opts.command) > 0 && opts.command[0] == "--" {
				opts.command = opts.command[1:]
			}
			return a.ssh(cmd.Context(), opts)
		},
	}
	// Flags after NODE belong to the remote command.
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().StringVarP(&opts.login, "login", "l", "", "login on the node (same as LOGIN@NODE)")
	cmd.Flags().BoolVarP(&opts.forceTTY, "tty", "t", false, "allocate a terminal on the node even for a command or without a local terminal")
	cmd.Flags().BoolVarP(&opts.disableTTY, "no-tty", "T", false, "never allocate a terminal")
	return cmd
}

// pickLogin chooses the login for node when the user named none.
func (a *app) pickLogin(ctx context.Context, p *client.Profile, node string) (string, error) {
	clt, err := client.NewFromIdentity(p.Identity, a.timeout)
	if err != nil {
		return "", trace.Wrap(err)
	}
	defer clt.Close()
	nodes, err := listNodes(ctx, clt, p.Proxy)
	if err != nil {
		return "", trace.Wrap(err)
	}
	for _, n := range nodes {
		if n.GetName() != node {
			continue
		}
		var logins []string
		for _, l := range n.GetLogins() {
			if !isPattern(l) {
				logins = append(logins, l)
			}
		}
		if u := os.Getenv("USER"); u != "" && slices.Contains(logins, u) {
			return u, nil
		}
		if len(logins) == 0 {
			return "", trace.AccessDenied("your roles allow no login on node %s; ask an admin (logins come from roles and your logins trait)", node)
		}
		return logins[0], nil
	}
	return "", trace.NotFound("no node %q among those you may reach; see \"sigil ls\"", node)
}

func (a *app) ssh(ctx context.Context, opts sshOptions) error {
	if opts.forceTTY && opts.disableTTY {
		return trace.BadParameter("-t and -T contradict each other")
	}
	login, node := opts.login, opts.target
	if l, n, ok := strings.Cut(opts.target, "@"); ok {
		login, node = l, n
	}
	if node == "" || (login == "" && strings.HasSuffix(opts.target, "@")) {
		return trace.BadParameter("%q is not [LOGIN@]NODE", opts.target)
	}
	p, err := a.loginProfile()
	if err != nil {
		return trace.Wrap(err)
	}
	creds, err := a.sshCredsFor(ctx, p)
	if err != nil {
		return trace.Wrap(err)
	}
	if login == "" {
		if login, err = a.pickLogin(ctx, p, node); err != nil {
			return trace.Wrap(err)
		}
	}
	clt, err := a.dialGateway(ctx, p, creds, login+"@"+node)
	if err != nil {
		return trace.Wrap(err)
	}
	defer clt.Close()
	sess, err := clt.NewSession()
	if err != nil {
		return trace.Wrap(channelError(err), "opening a session on %s", node)
	}
	defer sess.Close()

	stdinFile, stdinIsFile := a.stdin.(*os.File)
	localTTY := stdinIsFile && term.IsTerminal(int(stdinFile.Fd()))
	wantTTY := opts.forceTTY || (localTTY && len(opts.command) == 0 && !opts.disableTTY)
	if wantTTY {
		width, height := 80, 24
		if localTTY {
			if w, h, err := term.GetSize(int(stdinFile.Fd())); err == nil {
				width, height = w, h
			}
		}
		termName := os.Getenv("TERM")
		if termName == "" {
			termName = "xterm"
		}
		if err := sess.RequestPty(termName, height, width, gossh.TerminalModes{gossh.ECHO: 1}); err != nil {
			return trace.Wrap(err, "requesting a terminal on %s", node)
		}
		if localTTY {
			state, err := term.MakeRaw(int(stdinFile.Fd()))
			if err != nil {
				return trace.Wrap(err, "putting the terminal in raw mode")
			}
			defer term.Restore(int(stdinFile.Fd()), state)
			stop := watchWindowSize(stdinFile, sess)
			defer stop()
		}
	}
	for _, env := range []string{"LANG", "LC_ALL", "LC_CTYPE", "TZ"} {
		if v := os.Getenv(env); v != "" {
			_ = sess.Setenv(env, v)
		}
	}
	sess.Stdin, sess.Stdout, sess.Stderr = a.stdin, a.stdout, a.stderr
	if len(opts.command) > 0 {
		err = sess.Start(shellJoin(opts.command))
	} else {
		err = sess.Shell()
	}
	if err != nil {
		return trace.Wrap(err, "starting on %s", node)
	}
	if !wantTTY {
		stop := forwardSignals(sess)
		defer stop()
	}
	return sshExit(sess.Wait(), node)
}

// sshExit turns the end of a remote command into sigil's exit status.
func sshExit(err error, node string) error {
	var exitErr *gossh.ExitError
	var missing *gossh.ExitMissingError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &exitErr):
		if exitErr.ExitStatus() > 0 {
			return exitCode(exitErr.ExitStatus())
		}
		// Killed by a signal: like OpenSSH, exit 255.
		return exitCode(255)
	case errors.As(err, &missing), errors.Is(err, io.EOF):
		// The gateway said why on stderr (e.g. a lock).
		return exitCode(255)
	}
	return trace.Wrap(err, "session on %s", node)
}

// channelError makes a refused session channel readable.
func channelError(err error) error {
	var oce *gossh.OpenChannelError
	if errors.As(err, &oce) {
		return trace.AccessDenied("%s", strings.TrimPrefix(oce.Message, "sigil: "))
	}
	return err
}

// shellJoin builds the command line the node's shell runs: arguments
// given after "--" are joined as ssh does, so "sigil ssh n -- ls -l /" is
// "ls -l /".
func shellJoin(args []string) string { return strings.Join(args, " ") }

// watchWindowSize sends the terminal size to the node on every SIGWINCH.
func watchWindowSize(tty *os.File, sess *gossh.Session) func() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-ch:
				if w, h, err := term.GetSize(int(tty.Fd())); err == nil {
					_ = sess.WindowChange(h, w)
				}
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}

// forwardSignals passes Ctrl-C and termination to the remote command when
// there is no terminal to carry them as keystrokes.
func forwardSignals(sess *gossh.Session) func() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case s := <-ch:
				sig := gossh.SIGINT
				switch s {
				case syscall.SIGTERM:
					sig = gossh.SIGTERM
				case syscall.SIGHUP:
					sig = gossh.SIGHUP
				}
				_ = sess.Signal(sig)
			}
		}
	}()
	return func() {
		signal.Stop(ch)
		close(done)
	}
}

func (a *app) proxySSHCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "ssh [LOGIN@]NODE[:PORT]",
		Short: "Carry one SSH connection to a node over stdin/stdout (for ProxyCommand)",
		Long: `Connect to the gateway with your Sigil SSH certificate and open a channel to
NODE (a node name, NODE.CLUSTER, or its registered address), then carry stdin
and stdout over it. Stock ssh runs this as its ProxyCommand and speaks SSH
through it: the gateway answers as NODE (with a host certificate from Sigil's
SSH host CA), checks your login, records the session and connects to the node.
"sigil config ssh" prints the ssh_config that uses it.`,
		Example: `  ssh -o ProxyCommand="sigil proxy ssh %r@%h:%p" alice@node1
  # ~/.ssh/config:  ProxyCommand sigil proxy ssh %r@%h:%p`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.proxySSH(cmd.Context(), args[0])
		},
	}
}

// parseSSHTarget splits [USER@]HOST[:PORT]; the port defaults to 22.
func parseSSHTarget(s string) (user, host string, port int, err error) {
	if u, rest, ok := strings.Cut(s, "@"); ok {
		user, s = u, rest
	}
	host, port = s, 22
	if h, p, serr := net.SplitHostPort(s); serr == nil {
		n, perr := strconv.Atoi(p)
		if perr != nil || n <= 0 || n > 65535 {
			return "", "", 0, trace.BadParameter("%q: bad port %q", s, p)
		}
		host, port = h, n
	}
	if host == "" {
		return "", "", 0, trace.BadParameter("%q names no node", s)
	}
	return user, host, port, nil
}

// alpnSSH is the gateway's ALPN route for one SSH connection to a node
// inside TLS (gateway/ssh.ALPNProtocol).
const alpnSSH = "sigil-ssh"

// maxProxyReply bounds the gateway's answer line.
const maxProxyReply = 4096

func (a *app) proxySSH(ctx context.Context, target string) error {
	_, host, port, err := parseSSHTarget(target)
	if err != nil {
		return trace.Wrap(err)
	}
	p, err := a.loginProfile()
	if err != nil {
		return trace.Wrap(err)
	}
	// ssh reads the certificate files after starting the ProxyCommand, so
	// an expired SSH certificate can still be renewed here.
	if _, err := a.sshCredsFor(ctx, p); err != nil {
		return trace.Wrap(err)
	}
	tlsCfg, err := p.Identity.TLSConfig()
	if err != nil {
		return trace.Wrap(err)
	}
	tlsCfg.NextProtos = []string{alpnSSH}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: a.timeout}, Config: tlsCfg}
	dctx, cancel := context.WithTimeout(ctx, a.timeout)
	nc, err := d.DialContext(dctx, "tcp", p.Proxy)
	cancel()
	if err != nil {
		return trace.ConnectionProblem(err, "cannot reach the gateway at %s: %v", p.Proxy, err)
	}
	conn := nc.(*tls.Conn)
	defer conn.Close()
	if conn.ConnectionState().NegotiatedProtocol != alpnSSH {
		return trace.NotImplemented("the gateway at %s does not carry SSH for \"sigil proxy ssh\" (no ALPN %s); upgrade sigild", p.Proxy, alpnSSH)
	}
	_ = conn.SetDeadline(time.Now().Add(a.timeout))
	if _, err := conn.Write([]byte(net.JoinHostPort(host, strconv.Itoa(port)) + "\n")); err != nil {
		return trace.Wrap(err)
	}
	br := bufio.NewReaderSize(conn, maxProxyReply)
	line, err := br.ReadSlice('\n')
	if err != nil {
		return trace.ConnectionProblem(err, "the gateway closed the connection to %s: %v", host, err)
	}
	reply := strings.TrimSpace(string(line))
	if msg, refused := strings.CutPrefix(reply, "ERR "); refused {
		return trace.AccessDenied("%s", strings.TrimPrefix(msg, "sigil: "))
	}
	if reply != "OK" {
		return trace.BadParameter("unexpected answer from the gateway: %q", reply)
	}
	_ = conn.SetDeadline(time.Time{})
	go func() {
		_, _ = io.Copy(conn, a.stdin)
		// ssh closing its side only half-closes: the node may still talk.
		_ = conn.CloseWrite()
	}()
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		_, _ = io.Copy(a.stdout, br)
	}()
	select {
	case <-outDone:
	case <-ctx.Done():
	}
	return nil
}

func (a *app) configCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Print configuration for other tools",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "ssh",
		Short: "Print an ssh_config snippet for stock ssh, scp and sftp through the gateway",
		Long: `Print an ssh_config snippet that makes stock OpenSSH clients use your Sigil
login: nodes are reached as NODE.CLUSTER through "sigil proxy ssh", trusting
host certificates from Sigil's SSH host CA (the @cert-authority line in the
profile's known_hosts) and presenting your certificate from "sigil login".
The gateway itself is also a jump host (ssh -J). Add the output to
~/.ssh/config, or save it and pass it with ssh -F.`,
		Example: `  sigil config ssh >> ~/.ssh/config
  ssh alice@node1.sigil uname -a
  scp ./file alice@node1.sigil:/tmp/
  ssh -J sigil-gateway alice@node1.sigil`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := a.loginProfile()
			if err != nil {
				return trace.Wrap(err)
			}
			creds, err := a.sshCredsFor(cmd.Context(), p)
			if err != nil {
				return trace.Wrap(err)
			}
			self, err := os.Executable()
			if err != nil {
				self = "sigil"
			}
			_, err = io.WriteString(a.stdout, sshConfig(p, creds, self, os.Getenv("SIGIL_HOME")))
			return trace.Wrap(err)
		},
	})
	return cmd
}

// sshConfig renders the ssh_config snippet.
func sshConfig(p *client.Profile, creds *sshCreds, sigilPath, sigilHome string) string {
	host, port, _ := net.SplitHostPort(p.Proxy)
	cluster := creds.cluster
	if cluster == "" {
		cluster = "sigil"
	}
	proxyCmd := quoteSSHConfig(sigilPath) + " proxy ssh %r@%h:%p"
	if sigilHome != "" {
		abs, err := filepath.Abs(sigilHome)
		if err == nil {
			sigilHome = abs
		}
		proxyCmd = "env SIGIL_HOME=" + quoteSSHConfig(sigilHome) + " " + proxyCmd
	}
	common := fmt.Sprintf(`    UserKnownHostsFile %s
    IdentityFile %s
    CertificateFile %s
    IdentitiesOnly yes
`, quoteSSHConfig(creds.files.knownHosts), quoteSSHConfig(creds.files.key), quoteSSHConfig(creds.files.cert))
	return fmt.Sprintf(`# Sigil gateway %[1]s (profile of %[2]s), from "sigil config ssh".
# Nodes: ssh LOGIN@NODE.%[3]s (also scp, sftp, rsync).
Host *.%[3]s
    ProxyCommand %[4]s
%[5]s
# The gateway as a jump host: ssh -J %[3]s-gateway LOGIN@NODE.%[3]s
Host %[3]s-gateway
    HostName %[6]s
    Port %[7]s
    User %[8]s
    ProxyCommand none
%[5]s`, p.Proxy, p.User, cluster, proxyCmd, common, host, port, jumpUser)
}

// quoteSSHConfig quotes a value for ssh_config when it holds spaces.
func quoteSSHConfig(s string) string {
	if strings.ContainsAny(s, " \t\"") {
		return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
	}
	return s
}
