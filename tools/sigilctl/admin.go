package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/tools/internal/cli"
)

// parseTraitFlags turns --traits logins=alice,root,db_users=reader into a
// map. A comma starts a new trait only when followed by KEY=.
func parseTraitFlags(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	key := ""
	for _, part := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(part, "="); ok {
			k = strings.TrimSpace(k)
			if k == "" {
				return nil, trace.BadParameter("--traits: %q has an empty trait name (want k=v,...)", s)
			}
			key = k
			out[key] = strings.TrimSpace(v)
			continue
		}
		if key == "" {
			return nil, trace.BadParameter("--traits: %q is not k=v,... (e.g. logins=alice,root)", s)
		}
		out[key] += "," + strings.TrimSpace(part)
	}
	return out, nil
}

func (e *env) usersCommand() *cobra.Command {
	users := &cobra.Command{Use: "users", Short: "Manage local users"}
	var roles, traits string
	add := &cobra.Command{
		Use:   "add NAME --roles R1,R2 [--traits k=v,...]",
		Short: "Add a user and print a one-time signup link (valid 1h)",
		Long: `Add a local user. The user completes the signup link in a browser, or with
"sigil signup TOKEN --proxy HOST:PORT", by choosing a password.

Traits feed role templates such as {{internal.logins}} and {{internal.db_users}}.
A value with commas continues the previous trait: logins=alice,root,db_users=reader.`,
		Example: `  sigilctl users add alice --roles dev --traits logins=alice,db_users=reader
  sigilctl users add bob --roles dev,ops --format json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tr, err := parseTraitFlags(traits)
			if err != nil {
				return trace.Wrap(err)
			}
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Users.AddUser(cmd.Context(), connect.NewRequest(&sigilv1.AddUserRequest{
				Name: args[0], Roles: cli.SplitList(roles), Traits: tr,
			}))
			if err != nil {
				return trace.Wrap(err)
			}
			return e.printSignup(args[0], "has been created", resp.Msg.SignupUrl, resp.Msg.Token)
		},
	}
	add.Flags().StringVar(&roles, "roles", "", "comma-separated roles (required)")
	add.Flags().StringVar(&traits, "traits", "", "traits as k=v,... (e.g. logins=alice,root)")
	_ = add.MarkFlagRequired("roles")

	ls, rm := e.listRemoveCommands(types.KindUser, "List users", "rm NAME", "Remove a user (their certificates stay valid until they expire; lock them to cut access now)")
	var setRoles, setTraits string
	update := &cobra.Command{
		Use:     "update NAME [--set-roles R1,R2] [--set-traits k=v,...]",
		Short:   "Change a user's roles or traits (effective at their next login)",
		Example: "  sigilctl users update alice --set-roles dev,ops\n  sigilctl users update alice --set-traits logins=alice,ubuntu",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tr, err := parseTraitFlags(setTraits)
			if err != nil {
				return trace.Wrap(err)
			}
			if setRoles == "" && len(tr) == 0 {
				return trace.BadParameter("nothing to update: pass --set-roles and/or --set-traits")
			}
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			if _, err := clt.Users.UpdateUser(cmd.Context(), connect.NewRequest(&sigilv1.UpdateUserRequest{
				Name: args[0], SetRoles: cli.SplitList(setRoles), SetTraits: tr,
			})); err != nil {
				return trace.Wrap(err)
			}
			fmt.Fprintf(e.stdout, "User %q has been updated.\n", args[0])
			return nil
		},
	}
	update.Flags().StringVar(&setRoles, "set-roles", "", "replace the roles")
	update.Flags().StringVar(&setTraits, "set-traits", "", "replace the named traits (k=v,...; k= removes k)")
	reset := &cobra.Command{
		Use:   "reset NAME",
		Short: "Remove a user's password and print a new signup link",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Users.ResetUser(cmd.Context(), connect.NewRequest(&sigilv1.ResetUserRequest{Name: args[0]}))
			if err != nil {
				return trace.Wrap(err)
			}
			return e.printSignup(args[0], "has been reset", resp.Msg.SignupUrl, resp.Msg.Token)
		},
	}
	users.AddCommand(add, ls, rm, update, reset)
	return users
}

func (e *env) printSignup(user, what, url, token string) error {
	if e.format != cli.FormatText {
		return cli.Write(e.stdout, e.format, map[string]string{"signup_url": url, "token": token})
	}
	fmt.Fprintf(e.stdout, "User %q %s. Share this signup link with them (works once):\n\n  %s\n\nor from a terminal:\n\n  sigil signup %s --proxy %s\n",
		user, what, url, token, proxyOf(url))
	return nil
}

// proxyOf extracts host:port from a signup URL.
func proxyOf(url string) string {
	s := strings.TrimPrefix(url, "https://")
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	return s
}

func (e *env) list(cmd *cobra.Command, kind string) error {
	clt, err := e.client()
	if err != nil {
		return trace.Wrap(err)
	}
	defer clt.Close()
	resp, err := clt.Resources.ListResources(cmd.Context(), connect.NewRequest(&sigilv1.ListResourcesRequest{Kind: kind}))
	if err != nil {
		return trace.Wrap(err)
	}
	rs, err := decodeResources(resp.Msg.Resources)
	if err != nil {
		return trace.Wrap(err)
	}
	if e.format != cli.FormatText {
		return cli.Write(e.stdout, e.format, rs)
	}
	return printTable(e.stdout, kind, rs)
}

func (e *env) tokensCommand() *cobra.Command {
	tokens := &cobra.Command{Use: "tokens", Short: "Manage join tokens for bots and AI agents"}
	var (
		kind, name, roles, onBehalfOf string
		ttl                           time.Duration
	)
	add := &cobra.Command{
		Use:   "add --kind bot|agent --name NAME --roles R [--ttl 1h] [--on-behalf-of USER]",
		Short: "Create a join token",
		Example: `  sigilctl tokens add --kind bot --name ci --roles deployer --ttl 30m
  sigilctl tokens add --kind agent --name copilot --roles reader --on-behalf-of alice`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Tokens.AddToken(cmd.Context(), connect.NewRequest(&sigilv1.AddTokenRequest{
				Kind: kind, Name: name, Roles: cli.SplitList(roles), TtlSeconds: int64(ttl / time.Second), OnBehalfOf: onBehalfOf,
			}))
			if err != nil {
				return trace.Wrap(err)
			}
			// The CA fingerprint lets the bot verify the gateway on first
			// contact without a CA file.
			fp := ""
			if ca, err := clt.Auth.ExportCA(cmd.Context(), connect.NewRequest(&sigilv1.ExportCARequest{Type: "tls-ca"})); err == nil {
				fp = ca.Msg.Fingerprint
			}
			start := fmt.Sprintf("sigil bot start --token %s --proxy %s --ca-fingerprint %s --dest ./%s", resp.Msg.Token, e.proxyAddr(), fp, name)
			if e.format != cli.FormatText {
				return cli.Write(e.stdout, e.format, map[string]string{"token": resp.Msg.Token, "kind": kind, "name": name, "ca_fingerprint": fp, "start": start})
			}
			fmt.Fprintf(e.stdout, "Join token for %s %q (usable once within %s):\n\n  %s\n\nOn the %s's host:\n\n  %s\n", kind, name, ttl, resp.Msg.Token, kind, start)
			return nil
		},
	}
	add.Flags().StringVar(&kind, "kind", "", "bot or agent (required)")
	add.Flags().StringVar(&name, "name", "", "name of the bot or agent (required)")
	add.Flags().StringVar(&roles, "roles", "", "comma-separated roles (required)")
	add.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token can be used to join")
	add.Flags().StringVar(&onBehalfOf, "on-behalf-of", "", "agents only: the human whose access bounds the agent's")
	for _, f := range []string{"kind", "name", "roles"} {
		_ = add.MarkFlagRequired(f)
	}
	ls, rm := e.listRemoveCommands(types.KindToken, "List join tokens", "rm TOKEN", "Revoke a join token")
	tokens.AddCommand(add, ls, rm)
	return tokens
}

func (e *env) botsCommand() *cobra.Command {
	bots := &cobra.Command{Use: "bots", Short: "List and remove joined bots and AI agents"}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List joined bots and agents with their certificate generation",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Join.ListBots(cmd.Context(), connect.NewRequest(&sigilv1.ListBotsRequest{}))
			if err != nil {
				return trace.Wrap(err)
			}
			if e.format != cli.FormatText {
				return cli.Write(e.stdout, e.format, resp.Msg.Bots)
			}
			rows := make([][]string, 0, len(resp.Msg.Bots))
			for _, b := range resp.Msg.Bots {
				renewed := "-"
				if b.Renewed != nil {
					renewed = b.Renewed.AsTime().UTC().Format(time.RFC3339)
				}
				rows = append(rows, []string{b.Name, b.Kind, strings.Join(b.Roles, ","), b.OnBehalfOf, strconv.FormatUint(b.Generation, 10), b.Joined.AsTime().UTC().Format(time.RFC3339), renewed})
			}
			return cli.Table(e.stdout, []string{"NAME", "KIND", "ROLES", "ON BEHALF OF", "GENERATION", "JOINED", "RENEWED"}, rows)
		},
	}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Forget a bot or agent: it can no longer renew (lock it to cut it off at once)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			if _, err := clt.Join.RemoveBot(cmd.Context(), connect.NewRequest(&sigilv1.RemoveBotRequest{Name: args[0]})); err != nil {
				return trace.Wrap(err)
			}
			fmt.Fprintf(e.stdout, "Bot %q removed; its current certificate works until it expires (\"sigilctl lock --bot %s\" cuts it off now).\n", args[0], args[0])
			return nil
		},
	}
	bots.AddCommand(ls, rm)
	return bots
}

func (e *env) lockCommands() []*cobra.Command {
	var (
		user, role, bot, message string
		ttl                      time.Duration
	)
	lock := &cobra.Command{
		Use:   "lock --user U | --role R | --bot B [--ttl D] [--message M]",
		Short: "Lock a user, role or bot out: logins and API calls fail at once",
		Example: `  sigilctl lock --user alice --message "laptop stolen"
  sigilctl lock --role contractors --ttl 12h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ttl < 0 {
				return trace.BadParameter("--ttl must be positive")
			}
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Locks.AddLock(cmd.Context(), connect.NewRequest(&sigilv1.AddLockRequest{
				User: user, Role: role, Bot: bot, TtlSeconds: int64(ttl / time.Second), Message: message,
			}))
			if err != nil {
				return trace.Wrap(err)
			}
			if e.format != cli.FormatText {
				return cli.Write(e.stdout, e.format, map[string]string{"id": resp.Msg.Lock.Name})
			}
			fmt.Fprintf(e.stdout, "Lock %s created. Remove it with: sigilctl unlock %s\n", resp.Msg.Lock.Name, resp.Msg.Lock.Name)
			return nil
		},
	}
	lock.Flags().StringVar(&user, "user", "", "user to lock")
	lock.Flags().StringVar(&role, "role", "", "role to lock (every identity holding it)")
	lock.Flags().StringVar(&bot, "bot", "", "bot or agent to lock")
	lock.Flags().DurationVar(&ttl, "ttl", 0, "lock duration (default: until unlocked)")
	lock.Flags().StringVar(&message, "message", "", "reason shown to the locked identity")
	lock.MarkFlagsMutuallyExclusive("user", "role", "bot")
	lock.MarkFlagsOneRequired("user", "role", "bot")

	locks := &cobra.Command{Use: "locks", Short: "Inspect locks"}
	locks.AddCommand(&cobra.Command{
		Use:   "ls",
		Short: "List live locks",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return e.list(cmd, types.KindLock)
		},
	})
	unlock := &cobra.Command{
		Use:   "unlock ID",
		Short: "Remove a lock",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			if _, err := clt.Locks.RemoveLock(cmd.Context(), connect.NewRequest(&sigilv1.RemoveLockRequest{Id: args[0]})); err != nil {
				return trace.Wrap(err)
			}
			fmt.Fprintf(e.stdout, "Lock %s removed.\n", args[0])
			return nil
		},
	}
	return []*cobra.Command{lock, locks, unlock}
}

func (e *env) authCommand() *cobra.Command {
	auth := &cobra.Command{Use: "auth", Short: "Certificate authorities"}
	var caType string
	export := &cobra.Command{
		Use:   "export --type tls-ca|user-ca|db-ca|ssh-user-ca|ssh-host-ca",
		Short: "Print the public part of a CA",
		Long: `Print the public part of a CA:
  tls-ca       what clients trust for the gateway (sigil login --ca-file)
  user-ca      signs user, bot and agent client certificates
  db-ca        what databases trust for the gateway's upstream connections
  ssh-user-ca  for sshd TrustedUserCAKeys
  ssh-host-ca  for known_hosts (@cert-authority line)`,
		Example: "  sigilctl auth export --type tls-ca > ca.pem",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.Auth.ExportCA(cmd.Context(), connect.NewRequest(&sigilv1.ExportCARequest{Type: caType}))
			if err != nil {
				return trace.Wrap(err)
			}
			if e.format != cli.FormatText {
				return cli.Write(e.stdout, e.format, map[string]string{"type": caType, "data": string(resp.Msg.Data), "fingerprint": resp.Msg.Fingerprint})
			}
			_, err = e.stdout.Write(resp.Msg.Data)
			return trace.Wrap(err)
		},
	}
	export.Flags().StringVar(&caType, "type", "", "tls-ca, user-ca, db-ca, ssh-user-ca or ssh-host-ca (required)")
	_ = export.MarkFlagRequired("type")
	auth.AddCommand(export, e.authSignCommand())
	return auth
}

func (e *env) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the cluster and the identity sigilctl acts as",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			clt, err := e.client()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			info, err := clt.Auth.ClusterInfo(cmd.Context(), connect.NewRequest(&sigilv1.ClusterInfoRequest{}))
			if err != nil {
				return trace.Wrap(err)
			}
			who, err := clt.Auth.WhoAmI(cmd.Context(), connect.NewRequest(&sigilv1.WhoAmIRequest{}))
			if err != nil {
				return trace.Wrap(err)
			}
			st := map[string]any{
				"cluster":  info.Msg.ClusterName,
				"version":  info.Msg.Version,
				"identity": who.Msg.Identity.Name,
				"roles":    who.Msg.Identity.Roles,
				"expires":  who.Msg.Expires.AsTime().UTC().Format(time.RFC3339),
			}
			if e.format != cli.FormatText {
				return cli.Write(e.stdout, e.format, st)
			}
			fmt.Fprintf(e.stdout, "Cluster:  %s (%s)\nIdentity: %s\nRoles:    %s\nExpires:  %s\n",
				info.Msg.ClusterName, info.Msg.Version, who.Msg.Identity.Name, strings.Join(who.Msg.Identity.Roles, ","), st["expires"])
			return nil
		},
	}
}
