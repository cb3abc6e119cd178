package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	"github.com/sigilhq/sigil/api/client"
)

// app carries what every command needs; tests build one with fakes.
type app struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	// stdinLines reads prompts' answers from stdin when there is no
	// terminal (see promptLine); made on first use.
	stdinLines *bufio.Reader

	// openTerminal opens the controlling terminal for prompts. Prompts do
	// not use stdin because stdin may carry the password.
	openTerminal func() (terminal, error)
	now          func() time.Time

	debug   bool
	timeout time.Duration
	log     *slog.Logger
	// identityDir, when set (--identity or $SIGIL_IDENTITY), replaces the
	// current profile: a directory a bot or agent keeps renewed with
	// "sigil bot start".
	identityDir string
}

// run executes the sigil command line args and returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{
		stdin:        stdin,
		stdout:       stdout,
		stderr:       stderr,
		openTerminal: openTTY,
		now:          time.Now,
	}
	return a.run(ctx, args)
}

func (a *app) run(ctx context.Context, args []string) int {
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		var code exitCode
		if errors.As(err, &code) {
			return int(code)
		}
		fmt.Fprintf(a.stderr, "ERROR: %s\n", errorMessage(err))
		return 1
	}
	return 0
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "sigil",
		Short: "Sigil user CLI: log in to a Sigil gateway and reach databases, servers and apps",
		Long: `sigil logs you in to a Sigil gateway and keeps short-lived certificates in a
profile under $SIGIL_HOME (default ~/.sigil). Every other command uses the
current profile.

First time? An admin gives you a signup link; complete it, then log in:

  sigil signup https://sigil.example.com:3443/web/signup/TOKEN
  sigil login --proxy sigil.example.com:3443 --user alice
  sigil status`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		PersistentPreRun: func(*cobra.Command, []string) {
			level := slog.LevelWarn
			if a.debug {
				level = slog.LevelDebug
			}
			a.log = slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: level}))
		},
	}
	root.PersistentFlags().BoolVar(&a.debug, "debug", false, "print debug logs to stderr")
	root.PersistentFlags().DurationVar(&a.timeout, "timeout", client.DefaultTimeout, "bound on each call to the gateway")
	root.PersistentFlags().StringVar(&a.identityDir, "identity", os.Getenv("SIGIL_IDENTITY"), "use the identity directory a bot or agent keeps with \"sigil bot start --dest DIR\" instead of the current profile ($SIGIL_IDENTITY)")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return trace.BadParameter("%v (see \"%s --help\")", err, cmd.CommandPath())
	})
	root.AddCommand(a.signupCommand(), a.loginCommand(), a.statusCommand(), a.logoutCommand(),
		a.dbCommand(), a.proxyCommand())
	root.AddCommand(a.requestCommand())
	root.AddCommand(a.approvalCommand())
	root.AddCommand(a.mfaCommand())
	root.AddCommand(a.botCommand(), a.agentCommand())
	root.AddCommand(a.lsCommand(), a.sshCommand(), a.playCommand(), a.configCommand())
	root.AddCommand(a.mcpCommand())
	return root
}

func (a *app) logger() *slog.Logger {
	if a.log == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return a.log
}

var multiTab = regexp.MustCompile(`\n\t*`)

// errorMessage renders err as one human line: no stack, no debug report.
func errorMessage(err error) string {
	msg := trace.UserMessage(err)
	return strings.TrimSpace(multiTab.ReplaceAllString(msg, ": "))
}

// apiError turns a Connect error from the gateway at addr into a trace
// error whose message tells the user what happened and what to do.
func apiError(err error, addr string) error {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return trace.Wrap(err)
	}
	msg := ce.Message()
	if msg == "" {
		msg = ce.Code().String()
	}
	var verr *tls.CertificateVerificationError
	var herr x509.HostnameError
	switch {
	case errors.As(err, &herr):
		return trace.AccessDenied("the certificate of the gateway at %s is not valid for that name (%v); use the address it was issued for, e.g. --proxy localhost:PORT or 127.0.0.1:PORT", addr, herr)
	case errors.As(err, &verr):
		return trace.AccessDenied("the gateway at %s presented a certificate the trusted CA did not sign (%v); check --ca-file (\"sigilctl auth export --type tls-ca\") or the line for %s in known_cas", addr, verr.Err, addr)
	}
	switch ce.Code() {
	case connect.CodeUnavailable:
		return trace.ConnectionProblem(err, "cannot reach the gateway at %s: %s (is sigild running there? check --proxy)", addr, msg)
	case connect.CodeDeadlineExceeded:
		return trace.LimitExceeded("the gateway at %s did not answer in time: %s", addr, msg)
	case connect.CodeUnauthenticated, connect.CodePermissionDenied:
		return trace.AccessDenied("%s", msg)
	case connect.CodeNotFound:
		return trace.NotFound("%s", msg)
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition:
		return trace.BadParameter("%s", msg)
	case connect.CodeAlreadyExists:
		return trace.AlreadyExists("%s", msg)
	case connect.CodeResourceExhausted:
		return trace.LimitExceeded("%s", msg)
	case connect.CodeUnimplemented:
		return trace.NotImplemented("the gateway at %s does not support this call: %s", addr, msg)
	}
	return trace.Errorf("%s", msg)
}
