// Command sigilctl is the Sigil admin CLI. On the daemon host it uses the
// local admin identity in the data dir; elsewhere the current sigil
// profile, if it holds an admin role.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	"github.com/sigilhq/sigil/api/client"
	"github.com/sigilhq/sigil/tools/internal/cli"
	"github.com/sigilhq/sigil/tools/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// env is what every command needs.
type env struct {
	dataDir string
	format  string
	timeout time.Duration
	stdin   io.Reader
	stdout  io.Writer
	stderr  io.Writer
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{stdin: stdin, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "sigilctl",
		Short: "Administer a Sigil cluster: users, roles, resources, tokens, locks, CAs",
		Long: `sigilctl administers a Sigil cluster.

On the daemon host it needs no login: it uses the admin identity sigild keeps
in its data dir (--data-dir, $SIGIL_DATA_DIR, or ./sigil-data). Elsewhere it
uses your current "sigil login" profile, which must hold an admin role.`,
		Example: `  sigilctl --data-dir ./sigil-data users add alice --roles dev --traits logins=alice
  sigilctl create -f roles.yaml
  sigilctl get role dev --format yaml
  sigilctl lock --user alice --message "laptop stolen"`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return cli.CheckFormat(e.format)
		},
	}
	root.PersistentFlags().StringVar(&e.dataDir, "data-dir", "", "sigild data dir on this host (default $SIGIL_DATA_DIR, then ./sigil-data, then the current sigil profile)")
	root.PersistentFlags().StringVar(&e.format, "format", cli.FormatText, "output format: text, json or yaml")
	root.PersistentFlags().DurationVar(&e.timeout, "timeout", 30*time.Second, "timeout of each API call")
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(
		e.resourceCommands()...,
	)
	root.AddCommand(e.usersCommand(), e.tokensCommand(), e.botsCommand(), e.authCommand(), e.auditCommand(), e.dbCommand(), e.nodesCommand(), e.statusCommand(), e.versionCommand())
	root.AddCommand(e.lockCommands()...)
	root.AddCommand(e.requestsCommand())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "ERROR: %s\n", cli.Message(err))
		return 1
	}
	return 0
}

func (e *env) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Fprintf(e.stdout, "sigilctl %s\n", version.Version)
		},
	}
}

// identity finds the credentials to call the API with.
func (e *env) identity() (*client.Identity, error) {
	dir := e.dataDir
	if dir == "" {
		dir = os.Getenv("SIGIL_DATA_DIR")
	}
	explicit := dir != ""
	if dir == "" {
		dir = "sigil-data"
	}
	adminDir := filepath.Join(dir, "admin")
	if _, err := os.Stat(adminDir); err == nil {
		id, err := client.LoadIdentityDir(adminDir)
		return id, trace.Wrap(err)
	} else if explicit {
		return nil, trace.NotFound("no admin identity in %s: is it the data dir of a sigild that has started at least once (and can you read it)?", dir)
	}
	p, err := client.CurrentProfile(client.Home())
	if err != nil {
		return nil, trace.NotFound("no credentials: pass --data-dir on the sigild host, or run \"sigil login\" as a user with an admin role")
	}
	if p.Identity == nil {
		return nil, trace.NotFound("the current sigil profile has no certificate: run \"sigil login\"")
	}
	return p.Identity, nil
}

// proxyAddr is the gateway address of the resolved identity, for the
// commands sigilctl prints.
func (e *env) proxyAddr() string {
	id, err := e.identity()
	if err != nil {
		return "HOST:PORT"
	}
	return id.Proxy
}

// client connects with the resolved identity.
func (e *env) client() (*client.Client, error) {
	id, err := e.identity()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if exp := id.Expires(); !exp.IsZero() && time.Now().After(exp) {
		return nil, trace.AccessDenied("the credentials expired at %s: restart sigild or run \"sigil login\" again", exp.Format(time.RFC3339))
	}
	return client.NewFromIdentity(id, e.timeout)
}
