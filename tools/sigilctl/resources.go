package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/tools/internal/cli"
)

const maxResourceFile = 1 << 20

// kindAliases lets admins type the plural or short forms they know.
var kindAliases = map[string]string{
	"roles": types.KindRole, "users": types.KindUser, "databases": types.KindDatabase, "db": types.KindDatabase,
	"dbs": types.KindDatabase, "nodes": types.KindNode, "kube_clusters": types.KindKubeCluster, "apps": types.KindApp,
	"tokens": types.KindToken, "locks": types.KindLock, "oidc": types.KindOIDCConnector, "saml": types.KindSAMLConnector,
}

func parseKind(s string) (string, error) {
	s = strings.ToLower(s)
	if k, ok := kindAliases[s]; ok {
		s = k
	}
	if !types.IsKnownKind(s) {
		return "", trace.BadParameter("unknown kind %q; one of %s", s, strings.Join(types.Kinds(), ", "))
	}
	return s, nil
}

func decodeResources(in []*sigilv1.Resource) ([]types.Resource, error) {
	out := make([]types.Resource, 0, len(in))
	for _, p := range in {
		r, err := types.UnmarshalResource(p.Kind, p.Json)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		out = append(out, r)
	}
	return out, nil
}

func (e *env) resourceCommands() []*cobra.Command {
	var (
		file  string
		force bool
	)
	create := &cobra.Command{
		Use:   "create -f FILE",
		Short: "Create resources from a YAML file (several documents separated by ---)",
		Long: `Create resources (role, user, database, node, token, lock, ...) from YAML.

Every document is validated before anything is written; an error names the
field, e.g. spec.allow.databases.statements: "wrte" is not one of read, write, admin.
Use "-f -" to read standard input.`,
		Example: `  sigilctl create -f dev-role.yaml
  sigilctl create -f dev-role.yaml --force   # overwrite an existing one`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return trace.BadParameter("-f FILE is required (use \"-f -\" for standard input)")
			}
			data, err := e.readInput(file)
			if err != nil {
				return trace.Wrap(err)
			}
			rs, err := types.ParseYAML(data)
			if err != nil {
				return trace.Wrap(err, "%s", file)
			}
			if len(rs) == 0 {
				return trace.BadParameter("%s holds no resources", file)
			}
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			for _, r := range rs {
				data, err := types.MarshalResource(r)
				if err != nil {
					return trace.Wrap(err)
				}
				resp, err := clt.Resources.CreateResource(cmd.Context(), connect.NewRequest(&sigilv1.CreateResourceRequest{
					Resource: &sigilv1.Resource{Kind: r.GetKind(), Name: r.GetMetadata().Name, Json: data},
					Force:    force,
				}))
				if err != nil {
					return trace.Wrap(err)
				}
				verb := "updated"
				if resp.Msg.Created {
					verb = "created"
				}
				fmt.Fprintf(e.stdout, "%s %q has been %s\n", r.GetKind(), r.GetMetadata().Name, verb)
			}
			return nil
		},
	}
	create.Flags().StringVarP(&file, "file", "f", "", "YAML file with one or more resources (- for stdin)")
	create.Flags().BoolVar(&force, "force", false, "overwrite resources that already exist")

	get := &cobra.Command{
		Use:   "get KIND [NAME]",
		Short: "Show resources of a kind, or one resource",
		Long:  "Show resources. KIND is one of " + strings.Join(types.Kinds(), ", ") + " (plurals work too).",
		Example: `  sigilctl get roles
  sigilctl get role dev --format yaml
  sigilctl get users --format json`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, err := parseKind(args[0])
			if err != nil {
				return trace.Wrap(err)
			}
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			var raw []*sigilv1.Resource
			if len(args) == 2 {
				resp, err := clt.Resources.GetResource(cmd.Context(), connect.NewRequest(&sigilv1.GetResourceRequest{Kind: kind, Name: args[1]}))
				if err != nil {
					return trace.Wrap(err)
				}
				raw = append(raw, resp.Msg.Resource)
			} else {
				resp, err := clt.Resources.ListResources(cmd.Context(), connect.NewRequest(&sigilv1.ListResourcesRequest{Kind: kind}))
				if err != nil {
					return trace.Wrap(err)
				}
				raw = resp.Msg.Resources
			}
			rs, err := decodeResources(raw)
			if err != nil {
				return trace.Wrap(err)
			}
			switch {
			case e.format != cli.FormatText:
				if len(args) == 2 {
					return cli.Write(e.stdout, e.format, rs[0])
				}
				return cli.Write(e.stdout, e.format, rs)
			case len(args) == 2:
				// One resource in text form: its YAML, ready to edit and re-create.
				data, err := types.MarshalYAML(rs...)
				if err != nil {
					return trace.Wrap(err)
				}
				_, err = e.stdout.Write(data)
				return trace.Wrap(err)
			}
			return printTable(e.stdout, kind, rs)
		},
	}

	rm := &cobra.Command{
		Use:     "rm KIND/NAME",
		Short:   "Remove a resource",
		Example: "  sigilctl rm role/dev\n  sigilctl rm user/alice",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kindStr, name, ok := strings.Cut(args[0], "/")
			if !ok || name == "" {
				return trace.BadParameter("%q is not KIND/NAME (e.g. role/dev)", args[0])
			}
			kind, err := parseKind(kindStr)
			if err != nil {
				return trace.Wrap(err)
			}
			return e.remove(cmd, kind, name)
		},
	}
	return []*cobra.Command{create, get, rm}
}

func (e *env) remove(cmd *cobra.Command, kind, name string) error {
	clt, err := e.client()
	if err != nil {
		return trace.Wrap(err)
	}
	defer clt.Close()
	if _, err := clt.Resources.DeleteResource(cmd.Context(), connect.NewRequest(&sigilv1.DeleteResourceRequest{Kind: kind, Name: name})); err != nil {
		return trace.Wrap(err)
	}
	if kind == types.KindToken {
		name = "(token)"
	}
	fmt.Fprintf(e.stdout, "%s %q has been removed\n", kind, name)
	return nil
}

func (e *env) readInput(file string) ([]byte, error) {
	var r io.Reader
	if file == "-" {
		r = e.stdin
	} else {
		f, err := os.Open(file)
		if err != nil {
			return nil, trace.ConvertSystemError(err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxResourceFile+1))
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if len(data) > maxResourceFile {
		return nil, trace.BadParameter("%s is larger than 1 MiB", file)
	}
	return data, nil
}

func expiresText(md *types.Metadata) string {
	if md.Expires == nil || md.Expires.IsZero() {
		return "never"
	}
	return md.Expires.UTC().Format(time.RFC3339)
}

// maskToken shows enough of a token to tell tokens apart, not to use one.
func maskToken(s string) string {
	if len(s) <= 8 {
		return "********"
	}
	return s[:8] + "…"
}

func printTable(w io.Writer, kind string, rs []types.Resource) error {
	var header []string
	var rows [][]string
	for _, r := range rs {
		md := r.GetMetadata()
		switch v := r.(type) {
		case *types.Role:
			header = []string{"NAME", "DESCRIPTION"}
			rows = append(rows, []string{md.Name, md.Description})
		case *types.User:
			header = []string{"NAME", "ROLES", "TRAITS"}
			rows = append(rows, []string{md.Name, strings.Join(v.Spec.Roles, ","), cli.Traits(v.Spec.Traits)})
		case *types.Database:
			header = []string{"NAME", "PROTOCOL", "URI", "LABELS"}
			rows = append(rows, []string{md.Name, v.Spec.Protocol, v.Spec.URI, cli.Labels(md.Labels)})
		case *types.Node:
			header = []string{"NAME", "ADDR", "LABELS", "DESCRIPTION"}
			rows = append(rows, []string{md.Name, v.Spec.Addr, cli.Labels(md.Labels), md.Description})
		case *types.Token:
			header = []string{"TOKEN", "KIND", "NAME", "ROLES", "EXPIRES"}
			rows = append(rows, []string{maskToken(md.Name), v.Spec.Kind, v.Spec.BotName, strings.Join(v.Spec.Roles, ","), expiresText(md)})
		case *types.Lock:
			header = []string{"ID", "TARGET", "MESSAGE", "CREATED BY", "EXPIRES"}
			rows = append(rows, []string{md.Name, v.Spec.Target.String(), v.Spec.Message, v.Spec.CreatedBy, expiresText(md)})
		case *types.OIDCConnector:
			header = []string{"NAME", "ISSUER", "CLIENT ID", "DISPLAY NAME"}
			rows = append(rows, []string{md.Name, v.Spec.IssuerURL, v.Spec.ClientID, v.Spec.DisplayName})
		case *types.SAMLConnector:
			header = []string{"NAME", "IDP METADATA", "ENTITY ID", "DISPLAY NAME"}
			idp := v.Spec.IDPMetadataURL
			if idp == "" {
				idp = "(inline)"
			}
			entity := v.Spec.EntityID
			if entity == "" {
				entity = "(default)"
			}
			rows = append(rows, []string{md.Name, idp, entity, v.Spec.DisplayName})
		default:
			header = []string{"NAME", "LABELS", "DESCRIPTION"}
			rows = append(rows, []string{md.Name, cli.Labels(md.Labels), md.Description})
		}
	}
	if len(rs) == 0 {
		fmt.Fprintf(w, "No %s resources.\n", kind)
		return nil
	}
	return cli.Table(w, header, rows)
}

// listRemoveCommands are the "ls" and "rm NAME" subcommands of the
// commands for one resource kind (users, tokens, db, nodes).
func (e *env) listRemoveCommands(kind, lsShort, rmUse, rmShort string) (ls, rm *cobra.Command) {
	ls = &cobra.Command{
		Use:   "ls",
		Short: lsShort,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.list(cmd, kind)
		},
	}
	rm = &cobra.Command{
		Use:   rmUse,
		Short: rmShort,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return e.remove(cmd, kind, args[0])
		},
	}
	return ls, rm
}
