package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/tools/internal/cli"
)

// parseLabels turns env=dev,team=db into a map.
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range cli.SplitList(s) {
		k, v, ok := strings.Cut(part, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, trace.BadParameter("--labels: %q is not k=v", part)
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out, nil
}

func (e *env) dbCommand() *cobra.Command {
	db := &cobra.Command{Use: "db", Short: "Register databases"}
	var protocol, uri, labels, caFile, description string
	var force bool
	add := &cobra.Command{
		Use:   "add NAME --protocol postgres|mysql --uri HOST:PORT [--labels k=v,...] [--ca-file F]",
		Short: "Register a database the gateway can reach",
		Long: `Register a database. The gateway connects to it over TLS and authenticates with a
certificate from Sigil's DB CA whose common name is the database user: set the
database up with the files from "sigilctl auth sign --format postgres|mysql".

--ca-file is the CA that signed the database's own server certificate, when it
is not Sigil's DB CA.`,
		Example: `  sigilctl db add pg1 --protocol postgres --uri 127.0.0.1:5432 --labels env=dev
  sigilctl db add orders --protocol mysql --uri db.internal:3306 --labels env=prod,team=orders`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := parseLabels(labels)
			if err != nil {
				return trace.Wrap(err)
			}
			spec := types.DatabaseSpec{Protocol: protocol, URI: uri}
			if caFile != "" {
				data, err := e.readInput(caFile)
				if err != nil {
					return trace.Wrap(err)
				}
				spec.CACert = string(data)
			}
			d, err := types.NewDatabase(args[0], l, spec)
			if err != nil {
				return trace.Wrap(err)
			}
			d.Metadata.Description = description
			data, err := types.MarshalResource(d)
			if err != nil {
				return trace.Wrap(err)
			}
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Resources.CreateResource(cmd.Context(), connect.NewRequest(&sigilv1.CreateResourceRequest{
				Resource: &sigilv1.Resource{Kind: types.KindDatabase, Name: d.Metadata.Name, Json: data},
				Force:    force,
			}))
			if err != nil {
				return trace.Wrap(err)
			}
			verb := "updated"
			if resp.Msg.Created {
				verb = "added"
			}
			fmt.Fprintf(e.stdout, "Database %q %s (%s at %s).\n", d.Metadata.Name, verb, protocol, uri)
			return nil
		},
	}
	add.Flags().StringVar(&protocol, "protocol", "", "postgres or mysql (required)")
	add.Flags().StringVar(&uri, "uri", "", "HOST:PORT the gateway connects to (required)")
	add.Flags().StringVar(&labels, "labels", "", "labels roles select databases by, k=v,...")
	add.Flags().StringVar(&caFile, "ca-file", "", "CA of the database's server certificate, when not Sigil's DB CA")
	add.Flags().StringVar(&description, "description", "", "free text shown in listings")
	add.Flags().BoolVar(&force, "force", false, "replace an existing database of that name")
	_ = add.MarkFlagRequired("protocol")
	_ = add.MarkFlagRequired("uri")
	ls, rm := e.listRemoveCommands(types.KindDatabase, "List registered databases", "rm NAME", "Remove a database")
	db.AddCommand(add, ls, rm)
	return db
}

func (e *env) authSignCommand() *cobra.Command {
	var format, hosts, out string
	var ttl time.Duration
	sign := &cobra.Command{
		Use:   "sign --format postgres|mysql|openssh --host H[,H2] --out DIR",
		Short: "Write a server certificate and CA so a database or an OpenSSH node trusts Sigil",
		Long: `Write server.crt, server.key and ca.crt (the DB CA) into DIR.

PostgreSQL (postgresql.conf and pg_hba.conf):
  ssl = on
  ssl_cert_file = 'DIR/server.crt'
  ssl_key_file = 'DIR/server.key'        # owned by postgres, mode 0600
  ssl_ca_file = 'DIR/ca.crt'
  hostssl all all 0.0.0.0/0 cert         # pg_hba.conf: the cert's CN is the db user

MySQL/MariaDB (my.cnf), then CREATE USER reader REQUIRE SUBJECT '/CN=reader':
  ssl_cert = DIR/server.crt
  ssl_key  = DIR/server.key
  ssl_ca   = DIR/ca.crt

OpenSSH (--format openssh; --host is the node name first, then the names and
IPs the node is reached by): writes ssh_host_ed25519_key, its .pub and
-cert.pub (a host certificate from Sigil's SSH host CA) and sigil_user_ca.pub.
In sshd_config:
  HostKey DIR/ssh_host_ed25519_key
  HostCertificate DIR/ssh_host_ed25519_key-cert.pub
  TrustedUserCAKeys DIR/sigil_user_ca.pub`,
		Example: `  sigilctl auth sign --format postgres --host localhost,127.0.0.1 --out /etc/postgresql/sigil
  sigilctl auth sign --format openssh --host node1,10.0.0.5 --out /etc/ssh/sigil`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return trace.BadParameter("--out DIR is required")
			}
			if format == "openssh" {
				return e.signOpenSSH(cmd.Context(), cli.SplitList(hosts), out, ttl)
			}
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Databases.SignDatabaseServer(cmd.Context(), connect.NewRequest(&sigilv1.SignDatabaseServerRequest{
				Format: format, Hosts: cli.SplitList(hosts), TtlSeconds: int64(ttl / time.Second),
			}))
			if err != nil {
				return trace.Wrap(err)
			}
			if err := os.MkdirAll(out, 0o700); err != nil {
				return trace.ConvertSystemError(err)
			}
			for _, f := range []struct {
				name string
				data []byte
				mode os.FileMode
			}{
				{"server.key", resp.Msg.KeyPem, 0o600},
				{"server.crt", resp.Msg.CertPem, 0o644},
				{"ca.crt", resp.Msg.CaPem, 0o644},
			} {
				if err := client.WriteFileAtomic(filepath.Join(out, f.name), f.data, f.mode); err != nil {
					return trace.Wrap(err)
				}
			}
			fmt.Fprintf(e.stdout, "Wrote %s/server.crt, server.key and ca.crt. See \"sigilctl auth sign --help\" for the database settings.\n", out)
			return nil
		},
	}
	sign.Flags().StringVar(&format, "format", "", "postgres, mysql or openssh (required)")
	sign.Flags().StringVar(&hosts, "host", "", "comma-separated host names/IPs the gateway uses to reach the server; for openssh the node name first (required)")
	sign.Flags().StringVar(&out, "out", "", "directory to write the files to (required)")
	sign.Flags().DurationVar(&ttl, "ttl", 365*24*time.Hour, "validity of the server certificate")
	_ = sign.MarkFlagRequired("format")
	_ = sign.MarkFlagRequired("host")
	return sign
}
