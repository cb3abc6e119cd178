// Command sigild is the Sigil daemon: identity service, gateway, web
// console and audit in one process.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	"github.com/sigilhq/sigil/services/process"
	"github.com/sigilhq/sigil/tools/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "ERROR: %s\n", strings.TrimSpace(trace.UserMessage(err)))
		return 1
	}
	return 0
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "sigild",
		Short:         "Sigil daemon: identity service, gateway, web console and audit log",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var (
		configFile string
		flags      process.Config
		debug      bool
	)
	start := &cobra.Command{
		Use:   "start",
		Short: "Start the all-in-one daemon",
		Long: `Start the all-in-one daemon.

With no config file it keeps everything (embedded storage, the CAs' sealing
key, the audit log and a local admin identity for sigilctl) in ./sigil-data
(or $SIGIL_DATA_DIR) and serves the gateway on 127.0.0.1:3443.

The first start creates the certificate authorities and prints a one-time
link to create the first admin user.`,
		Example: `  sigild start
  sigild start --data-dir /var/lib/sigil --listen 0.0.0.0:3443
  sigild start --config /etc/sigil.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := &process.Config{}
			if configFile != "" {
				var err error
				if cfg, err = process.LoadConfig(configFile); err != nil {
					return trace.Wrap(err)
				}
			}
			// Flags win over the file.
			if cmd.Flags().Changed("data-dir") {
				cfg.DataDir = flags.DataDir
			}
			if cmd.Flags().Changed("listen") {
				cfg.Listen = flags.Listen
			}
			if cmd.Flags().Changed("mysql-listen") {
				cfg.MySQLListen = flags.MySQLListen
			}
			if cmd.Flags().Changed("public-addr") {
				cfg.PublicAddr = flags.PublicAddr
			}
			if debug {
				cfg.Log.Level = "debug"
			}
			if err := cfg.CheckAndSetDefaults(); err != nil {
				return trace.Wrap(err)
			}
			log := newLogger(stderr, cfg.Log)
			d, err := process.Start(cmd.Context(), cfg, log, stdout, version.Version)
			if err != nil {
				return trace.Wrap(err)
			}
			<-cmd.Context().Done()
			fmt.Fprintln(stdout, "Shutting down.")
			return trace.Wrap(d.Close())
		},
	}
	start.Flags().StringVarP(&configFile, "config", "c", "", "config file (see \"sigild config sample\")")
	start.Flags().StringVar(&flags.DataDir, "data-dir", "", "data directory (default ./sigil-data or $SIGIL_DATA_DIR)")
	start.Flags().StringVar(&flags.Listen, "listen", process.DefaultListen, "gateway address (web, API, PostgreSQL, SSH)")
	start.Flags().StringVar(&flags.MySQLListen, "mysql-listen", process.DefaultMySQLListen, "MySQL listener address")
	start.Flags().StringVar(&flags.PublicAddr, "public-addr", "", "address clients use to reach the gateway (default: the listen address)")
	start.Flags().BoolVar(&debug, "debug", false, "debug logging")

	versionCmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(stdout, "sigild %s\n", version.Version)
		},
	}
	config := &cobra.Command{Use: "config", Short: "Configuration helpers"}
	config.AddCommand(&cobra.Command{
		Use:   "sample",
		Short: "Print a commented sample sigil.yaml",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprint(stdout, process.SampleConfig)
		},
	})
	root.AddCommand(start, versionCmd, config)
	return root
}

func newLogger(w io.Writer, cfg process.LogConfig) *slog.Logger {
	var level slog.Level
	switch cfg.Level {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
