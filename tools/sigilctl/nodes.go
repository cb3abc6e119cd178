package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
)

// Files "auth sign --format openssh" writes, named as sshd expects them.
const (
	sshHostKeyFile  = "ssh_host_ed25519_key"
	sshHostPubFile  = "ssh_host_ed25519_key.pub"
	sshHostCertFile = "ssh_host_ed25519_key-cert.pub"
	sshUserCAFile   = "sigil_user_ca.pub"
)

func (e *env) nodesCommand() *cobra.Command {
	nodes := &cobra.Command{Use: "nodes", Short: "Register SSH nodes (OpenSSH servers that trust Sigil)"}
	var addr, labels, description string
	var force bool
	add := &cobra.Command{
		Use:   "add NAME --addr HOST:PORT [--labels k=v,...]",
		Short: "Register an OpenSSH server the gateway can reach",
		Long: `Register a node: an unmodified OpenSSH server. The gateway connects to it as the
login a user asked for, with a one-minute certificate from Sigil's SSH user CA,
and checks the node's host certificate against Sigil's SSH host CA. Set the node
up with the files of "sigilctl auth sign --format openssh --host NAME" (see its
--help for the sshd_config lines).

Roles select nodes by label (spec.allow.nodes.labels) and logins by
spec.allow.logins.`,
		Example: `  sigilctl nodes add node1 --addr 10.0.0.5:22 --labels env=dev
  sigilctl nodes add web1 --addr web1.internal:22 --labels env=prod,team=web`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := parseLabels(labels)
			if err != nil {
				return trace.Wrap(err)
			}
			n := &types.Node{Metadata: types.Metadata{Name: args[0], Labels: l, Description: description}, Spec: types.NodeSpec{Addr: addr}}
			if err := n.CheckAndSetDefaults(); err != nil {
				return trace.Wrap(err)
			}
			data, err := types.MarshalResource(n)
			if err != nil {
				return trace.Wrap(err)
			}
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Resources.CreateResource(cmd.Context(), connect.NewRequest(&sigilv1.CreateResourceRequest{
				Resource: &sigilv1.Resource{Kind: types.KindNode, Name: n.Metadata.Name, Json: data},
				Force:    force,
			}))
			if err != nil {
				return trace.Wrap(err)
			}
			verb := "updated"
			if resp.Msg.Created {
				verb = "added"
			}
			fmt.Fprintf(e.stdout, "Node %q %s (%s).\n", n.Metadata.Name, verb, addr)
			return nil
		},
	}
	add.Flags().StringVar(&addr, "addr", "", "HOST:PORT of the node's sshd, as the gateway reaches it (required)")
	add.Flags().StringVar(&labels, "labels", "", "labels roles select nodes by, k=v,...")
	add.Flags().StringVar(&description, "description", "", "free text shown in listings")
	add.Flags().BoolVar(&force, "force", false, "replace an existing node of that name")
	_ = add.MarkFlagRequired("addr")
	ls, rm := e.listRemoveCommands(types.KindNode, "List registered nodes", "rm NAME", "Remove a node")
	nodes.AddCommand(add, ls, rm)
	return nodes
}

// signOpenSSH writes a host key and certificate for an OpenSSH node, and
// the SSH user CA for TrustedUserCAKeys, into out.
func (e *env) signOpenSSH(ctx context.Context, hosts []string, out string, ttl time.Duration) error {
	clt, err := e.client()
	if err != nil {
		return trace.Wrap(err)
	}
	defer clt.Close()
	resp, err := clt.SSH.SignSSHHost(ctx, connect.NewRequest(&sigilv1.SignSSHHostRequest{Hosts: hosts, TtlSeconds: int64(ttl / time.Second)}))
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
		{sshHostKeyFile, resp.Msg.HostKey, 0o600},
		{sshHostPubFile, resp.Msg.HostPublicKey, 0o644},
		{sshHostCertFile, resp.Msg.HostCert, 0o644},
		{sshUserCAFile, resp.Msg.UserCa, 0o644},
	} {
		if err := client.WriteFileAtomic(filepath.Join(out, f.name), f.data, f.mode); err != nil {
			return trace.Wrap(err)
		}
	}
	fmt.Fprintf(e.stdout, `Wrote %[1]s/%[2]s, %[3]s, %[4]s and %[5]s.
Add to the node's sshd_config, then reload sshd:
  HostKey %[1]s/%[2]s
  HostCertificate %[1]s/%[4]s
  TrustedUserCAKeys %[1]s/%[5]s
`, out, sshHostKeyFile, sshHostPubFile, sshHostCertFile, sshUserCAFile)
	return nil
}
