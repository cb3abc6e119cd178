package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

// sessionMFARole asks the gateway whether a database route needs
// per-session MFA, returning the role that requires it ("" when none). A
// gateway without MFA support needs none.
func (a *app) sessionMFARole(ctx context.Context, p *client.Profile, clt *client.Client, database, user, name string) (string, error) {
	resp, err := clt.MFA.IsSessionMFARequired(ctx, connect.NewRequest(&sigilv1.IsSessionMFARequiredRequest{Database: database, DbUser: user, DbName: name}))
	if err != nil {
		var ce *connect.Error
		if errors.As(err, &ce) && ce.Code() == connect.CodeUnimplemented {
			return "", nil
		}
		return "", apiError(err, p.Proxy)
	}
	return resp.Msg.Role, nil
}

// mfaDBCert runs the per-session MFA ceremony for a database route and
// returns the certificate it unlocks: valid one minute to connect, and
// carrying the MFA device. A TOTP code comes from otp, else the terminal;
// a security key is touched in the browser at the printed URL while sigil
// waits.
func (a *app) mfaDBCert(ctx context.Context, p *client.Profile, clt *client.Client, role, database, user, name, otp string) (*dbCert, error) {
	pub, keyPEM, err := newKey()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	ch, err := clt.MFA.CreateMFAChallenge(ctx, connect.NewRequest(&sigilv1.CreateMFAChallengeRequest{
		Target:       &sigilv1.MFATarget{Kind: "db", Database: database, DbUser: user, DbName: name},
		TlsPublicKey: pub,
	}))
	if err != nil {
		return nil, apiError(err, p.Proxy)
	}
	c := ch.Msg
	hasTOTP, hasKey := slices.Contains(c.Methods, mfaTypeTOTP), slices.Contains(c.Methods, mfaTypeWebAuthn)
	target := fmt.Sprintf("database %s as %s", database, user)
	fmt.Fprintf(a.stderr, "Role %q requires an MFA check for each session (require_session_mfa): %s.\n", role, target)
	if otp == "" && hasTOTP {
		prompt := "One-time code from your authenticator app: "
		if hasKey {
			prompt = "One-time code from your authenticator app (or press Enter to use your security key): "
		}
		if tty, err := a.openTerminal(); err == nil {
			otp, err = tty.ReadLine(prompt)
			tty.Close()
			if err != nil {
				return nil, trace.Wrap(err)
			}
		} else if !hasKey {
			return nil, trace.BadParameter("no terminal to ask for a one-time code: pass --otp CODE")
		}
	}
	req := &sigilv1.CompleteDatabaseMFARequest{ChallengeId: c.ChallengeId, Database: database, DbUser: user, DbName: name, TlsPublicKey: pub, TotpCode: strings.TrimSpace(otp)}
	if req.TotpCode == "" {
		if !hasKey {
			return nil, trace.BadParameter("enter the one-time code from your authenticator app")
		}
		fmt.Fprintf(a.stderr, "Touch your security key in the browser to approve it:\n  %s\nWaiting (the link expires in a minute)...\n", c.WebUrl)
		a.offerBrowser(ctx, c.WebUrl)
	}
	for {
		resp, err := clt.MFA.CompleteDatabaseMFA(ctx, connect.NewRequest(req))
		if err != nil {
			return nil, apiError(err, p.Proxy)
		}
		if !resp.Msg.Pending {
			out, err := dbCertFrom(p, resp.Msg.GetCert(), keyPEM)
			if err != nil {
				return nil, trace.Wrap(err)
			}
			fmt.Fprintf(a.stderr, "MFA check passed with %q; the certificate is valid for a minute to connect.\n", resp.Msg.MfaDevice)
			return out, nil
		}
		if !a.now().Before(c.GetExpires().AsTime()) {
			return nil, trace.LimitExceeded("the MFA check was not approved within a minute; run the command again")
		}
		if err := waitPoll(ctx); err != nil {
			return nil, trace.Wrap(err)
		}
	}
}

// mfaCerts is the tunnel's certificate source when per-session MFA is
// required: each certificate only opens sessions for a minute, so a new
// one takes a new MFA check. When one is needed, the next connection is
// refused with what to do, and the check is asked for on the tunnel's
// terminal (or its browser link printed); connections after it work.
type mfaCerts struct {
	issue func(ctx context.Context) (*tls.Certificate, error)
	log   *slog.Logger
	now   func() time.Time

	mu      sync.Mutex
	current *tls.Certificate
	asking  bool
	wake    chan struct{}
}

func newMFACerts(first *tls.Certificate, issue func(ctx context.Context) (*tls.Certificate, error), log *slog.Logger, now func() time.Time) *mfaCerts {
	return &mfaCerts{issue: issue, log: log, now: now, current: first, wake: make(chan struct{}, 1)}
}

// Current returns the certificate while it can still open a session.
func (m *mfaCerts) Current() (*tls.Certificate, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.current != nil && m.current.Leaf != nil && m.now().Before(m.current.Leaf.NotAfter) {
		return m.current, nil
	}
	if !m.asking {
		m.asking = true
		select {
		case m.wake <- struct{}{}:
		default:
		}
	}
	return nil, trace.AccessDenied("per-session MFA: the certificate from the last MFA check can no longer open sessions (each lasts a minute); approve the new check in the terminal running \"sigil proxy db\", then connect again")
}

// Renew runs an MFA check each time Current asked for one.
func (m *mfaCerts) Renew(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		}
		cert, err := m.issue(ctx)
		m.mu.Lock()
		if err == nil {
			m.current = cert
		}
		m.asking = false
		m.mu.Unlock()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			m.log.ErrorContext(ctx, "The MFA check failed; the next connection asks again.", "error", trace.UserMessage(err))
			continue
		}
		m.log.InfoContext(ctx, "MFA check passed: new connections work for a minute.")
	}
}
