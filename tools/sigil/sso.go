package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

const (
	// ssoPollInterval is how often the CLI also asks the gateway whether
	// the login finished: the browser may run on another machine and never
	// reach the loopback listener.
	ssoPollInterval = 2 * time.Second
	// ssoGrace is waited past the login request's expiry before giving up.
	ssoGrace = 5 * time.Second
)

// ssoLogin logs in through an SSO connector: the gateway sends the
// browser to the identity provider and back to a listener on 127.0.0.1.
func (a *app) ssoLogin(ctx context.Context, opts loginOptions) error {
	proxy := opts.trust.proxy
	switch opts.browser {
	case "", "none":
	default:
		return trace.BadParameter("--browser %q: the only value is none (print the URL without opening a browser)", opts.browser)
	}
	home := client.Home()
	caPEM, err := a.resolveCA(ctx, home, opts.trust)
	if err != nil {
		return trace.Wrap(err)
	}
	pubDER, keyPEM, err := newKey()
	if err != nil {
		return trace.Wrap(err)
	}
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return trace.Wrap(err)
	}
	secretHash := sha256.Sum256(secret)

	cb, err := newSSOCallback()
	if err != nil {
		return trace.Wrap(err)
	}
	defer cb.close()

	c, err := a.anonClient(proxy, caPEM)
	if err != nil {
		return trace.Wrap(err)
	}
	defer c.Close()
	created, err := c.SSO.CreateSSOLogin(ctx, connect.NewRequest(&sigilv1.CreateSSOLoginRequest{
		Connector:         opts.auth,
		TlsPublicKey:      pubDER,
		TtlSeconds:        int64(opts.ttl / time.Second),
		ClientCallbackUrl: cb.url,
		ClientSecretHash:  secretHash[:],
	}))
	if err != nil {
		return apiError(err, proxy)
	}
	id := created.Msg.GetRequestId()
	cb.expect(id)
	authURL := created.Msg.GetAuthUrl()
	fmt.Fprintf(a.stderr, "To log in with %s, open this URL in a browser:\n\n  %s\n\n", opts.auth, authURL)
	if opts.browser != "none" && hasDisplay() {
		a.openBrowser(ctx, authURL)
	}
	fmt.Fprintf(a.stderr, "Waiting for the login to finish...\n")

	deadline := time.Now().Add(5 * time.Minute)
	if exp := created.Msg.GetExpires(); exp != nil {
		deadline = exp.AsTime().Add(ssoGrace)
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	poll := time.NewTicker(ssoPollInterval)
	defer poll.Stop()
	done := cb.done
	for {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return trace.LimitExceeded("timed out waiting for the login at the identity provider to finish (the login link has expired); run sigil login again")
			}
			return trace.Wrap(ctx.Err())
		case <-done:
			// Once is enough: later rounds wait for the poll.
			done = nil
		case <-poll.C:
		}
		res, err := c.SSO.GetSSOLoginResult(ctx, connect.NewRequest(&sigilv1.GetSSOLoginResultRequest{RequestId: id, ClientSecret: secret}))
		if err != nil {
			return apiError(err, proxy)
		}
		if res.Msg.GetPending() {
			continue
		}
		return a.saveLogin(ctx, home, proxy, "", caPEM, keyPEM, res.Msg.GetLogin())
	}
}

func hasDisplay() bool {
	return os.Getenv("DISPLAY") != "" || os.Getenv("WAYLAND_DISPLAY") != ""
}

// openBrowser starts xdg-open; the URL is printed anyway, so a failure is
// only logged.
func (a *app) openBrowser(ctx context.Context, u string) {
	cmd := exec.Command("xdg-open", u)
	if err := cmd.Start(); err != nil {
		a.logger().DebugContext(ctx, "Could not open a browser.", "error", err)
		return
	}
	go func() { _ = cmd.Wait() }()
}

// ssoCallback is the loopback listener the gateway sends the browser back
// to when the login ends.
type ssoCallback struct {
	url  string
	srv  *http.Server
	done chan struct{}

	mu sync.Mutex
	// requestID is set once the login was created; answers for another
	// request are ignored.
	requestID string
	signalled bool
}

func (cb *ssoCallback) expect(id string) {
	cb.mu.Lock()
	defer cb.mu.Unlock()
	cb.requestID = id
}

var callbackPage = template.Must(template.New("callback").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sigil login</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#1d2330}.error{color:#a40000}</style>
</head><body>
{{if .}}<h1>Login failed</h1><p class="error">{{.}}</p><p>Return to the terminal for details.</p>
{{else}}<h1>Login finished</h1><p>You can close this tab and return to the terminal.</p>{{end}}
</body></html>`))

func newSSOCallback() (*ssoCallback, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, trace.Wrap(err, "listening on 127.0.0.1 for the browser to come back")
	}
	cb := &ssoCallback{
		url:  fmt.Sprintf("http://%s/callback", ln.Addr()),
		done: make(chan struct{}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /callback", cb.handle)
	cb.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = cb.srv.Serve(ln) }()
	return cb, nil
}

func (cb *ssoCallback) handle(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	id, msg := q.Get("request_id"), q.Get("error")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	w.Header().Set("Cache-Control", "no-store")
	if id == "" && msg == "" {
		http.Error(w, "this page only receives Sigil logins", http.StatusBadRequest)
		return
	}
	cb.mu.Lock()
	defer cb.mu.Unlock()
	if cb.requestID == "" || (id != "" && subtle.ConstantTimeCompare([]byte(id), []byte(cb.requestID)) != 1) {
		http.Error(w, "this login does not belong to the waiting sigil login", http.StatusBadRequest)
		return
	}
	if len(msg) > 1000 {
		msg = msg[:1000] + "..."
	}
	_ = callbackPage.Execute(w, msg)
	// Whatever the page says, the CLI asks the gateway for the outcome:
	// anything on this machine can call this URL.
	if !cb.signalled {
		cb.signalled = true
		close(cb.done)
	}
}

func (cb *ssoCallback) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = cb.srv.Shutdown(ctx)
}
