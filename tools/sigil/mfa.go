package main

import (
	"bufio"
	"context"
	"fmt"
	"image/color"
	"io"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/boombuler/barcode/qr"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/tools/internal/cli"
)

const (
	mfaTypeTOTP     = "totp"
	mfaTypeWebAuthn = "webauthn"
	// mfaPollInterval is how often a waiting CLI asks whether the browser
	// approved.
	mfaPollInterval = time.Second
)

func (a *app) mfaCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mfa",
		Short: "Manage your MFA devices (authenticator apps and security keys)",
		Long: `Manage the second-factor devices of your account: TOTP authenticator apps
(one-time codes) and WebAuthn security keys.

They are asked for when a role requires per-session MFA (require_session_mfa):
"sigil db connect" and "sigil proxy db --tunnel" then ask for a one-time code,
or print a console link where you touch your security key. The gateway may
also ask for one at login (auth.second_factor).

Adding a device when you already have one needs a check with an existing one,
so that a stolen login alone cannot add a device.`,
		Example: `  sigil mfa add --type totp --name phone
  sigil mfa add --type webauthn --name yubikey
  sigil mfa ls
  sigil mfa rm phone`,
	}
	cmd.AddCommand(a.mfaAddCommand(), a.mfaLsCommand(), a.mfaRmCommand())
	return cmd
}

func (a *app) mfaAddCommand() *cobra.Command {
	var typ, name, otp string
	cmd := &cobra.Command{
		Use:   "add --type totp|webauthn --name NAME",
		Short: "Register a new MFA device",
		Long: `Register a new MFA device.

--type totp prints an otpauth:// link and a QR code for an authenticator app
(and the secret, to type in by hand), then asks for the code the app shows.

--type webauthn prints (and opens, when it can) a web console page where you
touch the key; sigil waits until the key is registered. Security keys need
the console at the gateway's DNS name (https://localhost:PORT for a local
gateway): sign in there first if asked.

When you have a device already, sigil first asks for a one-time code from it,
or for a security key approval in the browser.`,
		Example: `  sigil mfa add --type totp --name phone
  sigil mfa add --type webauthn --name yubikey`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.mfaAdd(cmd.Context(), typ, name, otp)
		},
	}
	f := cmd.Flags()
	f.StringVar(&typ, "type", "", "device type: totp or webauthn")
	f.StringVar(&name, "name", "", "a name for the device, e.g. phone or yubikey")
	f.StringVar(&otp, "otp", "", "one-time code from an existing TOTP device, when you have one (else sigil asks)")
	return cmd
}

func (a *app) mfaAdd(ctx context.Context, typ, name, otp string) error {
	switch typ {
	case mfaTypeTOTP, mfaTypeWebAuthn:
	case "":
		return trace.BadParameter("missing --type totp|webauthn")
	default:
		return trace.BadParameter("--type %q is not one of totp, webauthn", typ)
	}
	if name == "" {
		return trace.BadParameter("missing --name (e.g. --name phone)")
	}
	p, clt, err := a.dbClient()
	if err != nil {
		return trace.Wrap(err)
	}
	defer clt.Close()
	devs, err := clt.MFA.ListMFADevices(ctx, connect.NewRequest(&sigilv1.ListMFADevicesRequest{}))
	if err != nil {
		return apiError(err, p.Proxy)
	}
	req := &sigilv1.BeginMFARegistrationRequest{Name: name, Type: typ}
	if len(devs.Msg.Devices) > 0 {
		if req.Proof, err = a.deviceProof(ctx, p, clt, devs.Msg.Devices, otp); err != nil {
			return trace.Wrap(err)
		}
	}
	resp, err := clt.MFA.BeginMFARegistration(ctx, connect.NewRequest(req))
	if err != nil {
		return apiError(err, p.Proxy)
	}
	reg := resp.Msg
	if typ == mfaTypeTOTP {
		fmt.Fprintf(a.stdout, "Add this account to your authenticator app: scan the QR code or open\n  %s\n", reg.TotpUrl)
		if err := writeQR(a.stdout, reg.TotpUrl); err != nil {
			a.logger().DebugContext(ctx, "Cannot draw the QR code.", "error", err)
		}
		fmt.Fprintf(a.stdout, "Secret (to type in by hand): %s\n", reg.TotpSecret)
		code, err := a.promptLine("Code shown by the app for the new device: ")
		if err != nil {
			return trace.Wrap(err)
		}
		fin, err := clt.MFA.FinishMFARegistration(ctx, connect.NewRequest(&sigilv1.FinishMFARegistrationRequest{RegistrationId: reg.RegistrationId, TotpCode: strings.TrimSpace(code)}))
		if err != nil {
			return apiError(err, p.Proxy)
		}
		fmt.Fprintf(a.stdout, "Added TOTP device %q.\n", fin.Msg.GetDevice().GetName())
		return nil
	}
	fmt.Fprintf(a.stdout, "Open this page and touch your security key to register it (sign in to the console first if asked):\n  %s\n", reg.WebUrl)
	a.offerBrowser(ctx, reg.WebUrl)
	fmt.Fprintln(a.stdout, "Waiting for the browser...")
	deadline := reg.GetExpires().AsTime()
	for {
		st, err := clt.MFA.GetMFARegistration(ctx, connect.NewRequest(&sigilv1.GetMFARegistrationRequest{RegistrationId: reg.RegistrationId}))
		if err != nil {
			return apiError(err, p.Proxy)
		}
		if st.Msg.Done {
			fmt.Fprintf(a.stdout, "Added security key %q.\n", name)
			return nil
		}
		if !a.now().Before(deadline) {
			return trace.LimitExceeded("the security key was not registered in time; run \"sigil mfa add\" again")
		}
		if err := waitPoll(ctx); err != nil {
			return trace.Wrap(err)
		}
	}
}

// deviceProof asks for a check with one of devs before another device is
// added: a one-time code, else a security key approval in the browser.
func (a *app) deviceProof(ctx context.Context, p *client.Profile, clt *client.Client, devs []*sigilv1.MFADevice, otp string) (*sigilv1.MFAProof, error) {
	hasTOTP := slices.ContainsFunc(devs, func(d *sigilv1.MFADevice) bool { return d.Type == mfaTypeTOTP })
	hasKey := slices.ContainsFunc(devs, func(d *sigilv1.MFADevice) bool { return d.Type == mfaTypeWebAuthn })
	if otp != "" {
		return &sigilv1.MFAProof{TotpCode: otp}, nil
	}
	if hasTOTP {
		prompt := "You have an MFA device already. One-time code from it: "
		if hasKey {
			prompt = "You have MFA devices already. One-time code from one (or press Enter to use a security key): "
		}
		code, err := a.promptLine(prompt)
		if err != nil && !hasKey {
			return nil, trace.Wrap(err, "you have an MFA device already: pass a code from it with --otp")
		}
		if code = strings.TrimSpace(code); code != "" {
			return &sigilv1.MFAProof{TotpCode: code}, nil
		}
	}
	c, err := clt.MFA.CreateMFAChallenge(ctx, connect.NewRequest(&sigilv1.CreateMFAChallengeRequest{Target: &sigilv1.MFATarget{Kind: "mfa_device"}}))
	if err != nil {
		return nil, apiError(err, p.Proxy)
	}
	fmt.Fprintf(a.stderr, "You have a security key already: approve adding a device with it at\n  %s\n", c.Msg.WebUrl)
	a.offerBrowser(ctx, c.Msg.WebUrl)
	if err := a.waitChallenge(ctx, p.Proxy, clt, c.Msg); err != nil {
		return nil, trace.Wrap(err)
	}
	return &sigilv1.MFAProof{ChallengeId: c.Msg.ChallengeId}, nil
}

// waitChallenge polls until the browser approved c or it expired.
func (a *app) waitChallenge(ctx context.Context, proxy string, clt *client.Client, c *sigilv1.CreateMFAChallengeResponse) error {
	for {
		st, err := clt.MFA.GetMFAChallenge(ctx, connect.NewRequest(&sigilv1.GetMFAChallengeRequest{ChallengeId: c.ChallengeId}))
		if err != nil {
			return apiError(err, proxy)
		}
		if st.Msg.Approved {
			return nil
		}
		if !a.now().Before(c.GetExpires().AsTime()) {
			return trace.LimitExceeded("the MFA check was not approved within a minute; run the command again")
		}
		if err := waitPoll(ctx); err != nil {
			return trace.Wrap(err)
		}
	}
}

func waitPoll(ctx context.Context) error {
	t := time.NewTimer(mfaPollInterval)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return trace.Wrap(ctx.Err())
	case <-t.C:
		return nil
	}
}

func (a *app) mfaLsCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:     "ls",
		Short:   "List your MFA devices",
		Example: "  sigil mfa ls\n  sigil mfa ls --format json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cli.CheckFormat(format); err != nil {
				return trace.Wrap(err)
			}
			p, clt, err := a.dbClient()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			resp, err := clt.MFA.ListMFADevices(cmd.Context(), connect.NewRequest(&sigilv1.ListMFADevicesRequest{}))
			if err != nil {
				return apiError(err, p.Proxy)
			}
			type view struct {
				Name     string     `json:"name" yaml:"name"`
				Type     string     `json:"type" yaml:"type"`
				AddedAt  time.Time  `json:"added_at" yaml:"added_at"`
				LastUsed *time.Time `json:"last_used,omitempty" yaml:"last_used,omitempty"`
			}
			out := make([]view, 0, len(resp.Msg.Devices))
			rows := make([][]string, 0, len(resp.Msg.Devices))
			for _, d := range resp.Msg.Devices {
				v := view{Name: d.Name, Type: d.Type, AddedAt: d.GetAddedAt().AsTime().UTC()}
				last := "never"
				if d.LastUsed != nil {
					t := d.LastUsed.AsTime().UTC()
					v.LastUsed = &t
					last = t.Format("2006-01-02 15:04")
				}
				out = append(out, v)
				rows = append(rows, []string{d.Name, d.Type, v.AddedAt.Format("2006-01-02 15:04"), last})
			}
			if format != cli.FormatText {
				return trace.Wrap(cli.Write(a.stdout, format, out))
			}
			if len(rows) == 0 {
				fmt.Fprintln(a.stdout, "No MFA devices. Add one with \"sigil mfa add --type totp --name phone\".")
				return nil
			}
			return trace.Wrap(cli.Table(a.stdout, []string{"NAME", "TYPE", "ADDED (UTC)", "LAST USED (UTC)"}, rows))
		},
	}
	cmd.Flags().StringVar(&format, "format", cli.FormatText, "output format: text, json or yaml")
	return cmd
}

func (a *app) mfaRmCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME",
		Short:   "Remove one of your MFA devices",
		Example: "  sigil mfa rm phone",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, clt, err := a.dbClient()
			if err != nil {
				return trace.Wrap(err)
			}
			defer clt.Close()
			if _, err := clt.MFA.RemoveMFADevice(cmd.Context(), connect.NewRequest(&sigilv1.RemoveMFADeviceRequest{Name: args[0]})); err != nil {
				return apiError(err, p.Proxy)
			}
			fmt.Fprintf(a.stdout, "Removed MFA device %q.\n", args[0])
			return nil
		},
	}
}

// promptLine asks on the terminal, or reads a line from stdin when there
// is none (scripts).
func (a *app) promptLine(prompt string) (string, error) {
	tty, err := a.openTerminal()
	if err == nil {
		defer tty.Close()
		return tty.ReadLine(prompt)
	}
	fmt.Fprint(a.stderr, prompt)
	if a.stdinLines == nil {
		a.stdinLines = bufio.NewReaderSize(a.stdin, maxSecretSize)
	}
	line, err := readLine(a.stdinLines)
	return line, trace.Wrap(err)
}

// offerBrowser opens url when there is a desktop; the URL was printed
// already.
func (a *app) offerBrowser(ctx context.Context, url string) {
	if hasDisplay() {
		a.openBrowser(ctx, url)
	}
}

// writeQR draws text as a QR code with half blocks, two modules a line,
// dark on light whatever the terminal's colours.
func writeQR(w io.Writer, text string) error {
	code, err := qr.Encode(text, qr.M, qr.Auto)
	if err != nil {
		return trace.Wrap(err)
	}
	const quiet = 2
	n := code.Bounds().Dx()
	dark := func(x, y int) bool {
		if x < 0 || y < 0 || x >= n || y >= n {
			return false
		}
		return code.At(x, y) == color.Black
	}
	var b strings.Builder
	for y := -quiet; y < n+quiet; y += 2 {
		for x := -quiet; x < n+quiet; x++ {
			top, bottom := dark(x, y), dark(x, y+1)
			fg, bg := "97", "107"
			if top {
				fg = "30"
			}
			if bottom {
				bg = "40"
			}
			fmt.Fprintf(&b, "\x1b[%s;%sm▀", fg, bg)
		}
		b.WriteString("\x1b[0m\n")
	}
	_, err = io.WriteString(w, b.String())
	return trace.Wrap(err)
}

// loginSecondFactor fills req's second factor when the gateway asks for
// one at login (auth.second_factor) and --otp gave none: a code typed on
// the terminal, or a security key approval in the browser.
func (a *app) loginSecondFactor(ctx context.Context, c *client.Client, proxy string, req *sigilv1.LoginRequest) error {
	if req.Otp != "" {
		return nil
	}
	info, err := c.Auth.ClusterInfo(ctx, connect.NewRequest(&sigilv1.ClusterInfoRequest{}))
	if err != nil {
		return apiError(err, proxy)
	}
	switch info.Msg.SecondFactor {
	case "", "off":
		return nil
	case "otp":
		code, err := a.promptLine("One-time code from your authenticator app: ")
		if err != nil {
			return trace.Wrap(err, "this gateway asks for a one-time code at login: pass --otp CODE")
		}
		req.Otp = strings.TrimSpace(code)
		return nil
	}
	ch, err := c.MFA.CreateLoginChallenge(ctx, connect.NewRequest(&sigilv1.CreateLoginChallengeRequest{User: req.User, Password: req.Password, TlsPublicKey: req.TlsPublicKey}))
	if err != nil {
		return apiError(err, proxy)
	}
	if slices.Contains(ch.Msg.Methods, mfaTypeTOTP) {
		prompt := "One-time code from your authenticator app: "
		if slices.Contains(ch.Msg.Methods, mfaTypeWebAuthn) {
			prompt = "One-time code from your authenticator app (or press Enter to use your security key): "
		}
		if code, err := a.promptLine(prompt); err == nil && strings.TrimSpace(code) != "" {
			req.Otp = strings.TrimSpace(code)
			return nil
		}
	}
	if !slices.Contains(ch.Msg.Methods, mfaTypeWebAuthn) {
		return trace.BadParameter("this gateway asks for a one-time code at login: pass --otp CODE")
	}
	fmt.Fprintf(a.stderr, "Touch your security key in the browser to finish the login:\n  %s\nWaiting (the link expires in a minute)...\n", ch.Msg.WebUrl)
	a.offerBrowser(ctx, ch.Msg.WebUrl)
	if err := a.waitChallenge(ctx, proxy, c, ch.Msg); err != nil {
		return trace.Wrap(err)
	}
	req.MfaChallengeId = ch.Msg.ChallengeId
	return nil
}
