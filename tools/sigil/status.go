package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/gravitational/trace"
	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/sigilhq/sigil/api/client"

	"github.com/sigilhq/sigil/tools/internal/cli"
)

func (a *app) statusCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the current profile: who you are and until when",
		Long: `Show the current profile: the gateway, your user, kind, roles and traits, and
when the certificate expires. Exits 1 when you are not logged in.`,
		Example: `  sigil status
  sigil status --format json | jq -r .valid_until`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			p, err := a.currentProfile()
			if err != nil {
				return trace.Wrap(err)
			}
			return a.printStatus(p, format)
		},
	}
	cmd.Flags().StringVar(&format, "format", "text", "output format: text, json or yaml")
	return cmd
}

func (a *app) logoutCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "logout",
		Short: "Delete the current profile's keys and certificates",
		Long: `Delete the current profile: its private key, certificates and profile.yaml.
The gateway's pinned CA in known_cas is kept.`,
		Example: `  sigil logout`,
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			home := client.Home()
			proxy, err := client.CurrentProxy(home)
			if trace.IsNotFound(err) {
				fmt.Fprintln(a.stdout, "Not logged in.")
				return nil
			}
			if err != nil {
				return trace.Wrap(err)
			}
			if err := client.DeleteProfile(home, proxy); err != nil {
				return trace.Wrap(err)
			}
			fmt.Fprintf(a.stdout, "Logged out of %s.\n", proxy)
			return nil
		},
	}
}

// statusView is the machine-readable status.
type statusView struct {
	Profile    string              `json:"profile" yaml:"profile"`
	User       string              `json:"user" yaml:"user"`
	Kind       string              `json:"kind" yaml:"kind"`
	Roles      []string            `json:"roles" yaml:"roles"`
	Traits     map[string][]string `json:"traits" yaml:"traits"`
	ValidUntil time.Time           `json:"valid_until" yaml:"valid_until"`
	Expired    bool                `json:"expired" yaml:"expired"`
	// OnBehalfOf and Generation are set for agents and bots (from the
	// certificate itself).
	OnBehalfOf string `json:"on_behalf_of,omitempty" yaml:"on_behalf_of,omitempty"`
	Generation uint64 `json:"generation,omitempty" yaml:"generation,omitempty"`
}

func (a *app) statusOf(p *client.Profile) statusView {
	// The certificate is the truth about expiry; profile.yaml is a fallback.
	until := p.Expires
	if p.Identity != nil {
		if exp := p.Identity.Expires(); !exp.IsZero() {
			until = exp
		}
	}
	roles := p.Roles
	if roles == nil {
		roles = []string{}
	}
	traits := p.Traits
	if traits == nil {
		traits = map[string][]string{}
	}
	v := statusView{
		Profile: p.Proxy, User: p.User, Kind: p.Kind, Roles: roles, Traits: traits,
		ValidUntil: until.UTC(), Expired: !a.now().Before(until),
	}
	if p.Identity != nil {
		if id, err := identityOfPEM(p.Identity.CertPEM); err == nil {
			v.OnBehalfOf, v.Generation = id.OnBehalfOf, id.Generation
		}
	}
	return v
}

func (a *app) printStatus(p *client.Profile, format string) error {
	v := a.statusOf(p)
	switch format {
	case "text", "":
		fmt.Fprint(a.stdout, renderStatus(v, a.now()))
	case "json":
		out, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return trace.Wrap(err)
		}
		fmt.Fprintln(a.stdout, string(out))
	case "yaml":
		out, err := yaml.Marshal(v)
		if err != nil {
			return trace.Wrap(err)
		}
		fmt.Fprint(a.stdout, string(out))
	default:
		return trace.BadParameter("unknown --format %q; use text, json or yaml", format)
	}
	return nil
}

func renderStatus(v statusView, now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "> Profile: %s\n", v.Profile)
	fmt.Fprintf(&b, "  User: %s\n", v.User)
	fmt.Fprintf(&b, "  Kind: %s\n", v.Kind)
	if v.OnBehalfOf != "" {
		fmt.Fprintf(&b, "  On behalf of: %s\n", v.OnBehalfOf)
	}
	if v.Generation != 0 {
		fmt.Fprintf(&b, "  Generation: %d\n", v.Generation)
	}
	fmt.Fprintf(&b, "  Roles: %s\n", orNone(strings.Join(v.Roles, ", ")))
	fmt.Fprintf(&b, "  Traits: %s\n", orNone(cli.Traits(v.Traits)))
	validity := "EXPIRED"
	if !v.Expired {
		validity = "valid for " + humanDuration(v.ValidUntil.Sub(now))
	}
	fmt.Fprintf(&b, "  Valid until: %s [%s]\n", v.ValidUntil.UTC().Format("2006-01-02 15:04:05 -0700 MST"), validity)
	return b.String()
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// humanDuration prints d to the minute ("7h59m", "12m", "<1m").
func humanDuration(d time.Duration) string {
	d = d.Truncate(time.Minute)
	if d < time.Minute {
		return "<1m"
	}
	h := d / time.Hour
	m := (d % time.Hour) / time.Minute
	if h == 0 {
		return fmt.Sprintf("%dm", m)
	}
	return fmt.Sprintf("%dh%dm", h, m)
}
