package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/crewjam/saml"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/integration/testenv"
)

const (
	oidcClientSecret = "oidc-client-secret-7f3a9c1e"
	ssoPassword      = "idp-password-123"
)

var authURLRe = regexp.MustCompile(`https://\S+/web/sso/start/[0-9a-f]{32}`)

// ssoLogin is a "sigil login --auth NAME" run waiting for the browser.
type ssoLogin struct {
	proc    *testenv.Process
	home    string
	authURL string
}

// startSSOLogin runs the real CLI and waits for it to print the login URL.
func (e *pgEnv) startSSOLogin(connector string, extra ...string) *ssoLogin {
	e.t.Helper()
	home := e.t.TempDir()
	args := append([]string{"login", "--proxy", e.d.Addr, "--auth", connector, "--ca-file", e.ca}, extra...)
	// No display: the CLI must print the URL and not try to open a browser.
	p := testenv.StartCLI(e.t, []string{"SIGIL_HOME=" + home, "DISPLAY=", "WAYLAND_DISPLAY="}, "sigil", args...)
	var u string
	testenv.Eventually(e.t, 30*time.Second, func() error {
		if u = authURLRe.FindString(p.Stderr()); u == "" {
			if strings.Contains(p.Stderr(), "ERROR") {
				return testenv.Fatal(fmt.Errorf("sigil login failed early: %s", p.Stderr()))
			}
			return errors.New("no login URL printed yet")
		}
		return nil
	})
	return &ssoLogin{proc: p, home: home, authURL: u}
}

// oidcBrowserLogin opens a login URL and logs in at the zitadel OP's form.
func oidcBrowserLogin(t *testing.T, b *testenv.Browser, authURL, user string) *testenv.Page {
	t.Helper()
	page := b.Get(authURL)
	if page.Status != http.StatusOK || len(page.Forms) == 0 {
		t.Fatalf("IdP login page %s: %d\n%s", page.URL, page.Status, page.Body)
	}
	return b.Submit(page, map[string]string{"username": user, "password": ssoPassword})
}

// samlBrowserLogin opens a login URL, logs in at the samlidp form and
// posts the IdP's response form to the gateway's ACS, as a browser's
// auto-submit would.
func samlBrowserLogin(t *testing.T, b *testenv.Browser, authURL, user string) (*testenv.Page, testenv.Form, *testenv.Page) {
	t.Helper()
	page := b.Get(authURL)
	if page.Status != http.StatusOK || len(page.Forms) == 0 {
		t.Fatalf("IdP login page %s: %d\n%s", page.URL, page.Status, page.Body)
	}
	posted := b.Submit(page, map[string]string{"user": user, "password": ssoPassword})
	var form testenv.Form
	for _, f := range posted.Forms {
		if f.Values.Get("SAMLResponse") != "" {
			form = f
		}
	}
	if form.Action == "" {
		t.Fatalf("the IdP sent no SAMLResponse form (status %d):\n%s", posted.Status, posted.Body)
	}
	return posted, form, b.Post(posted, form, form.Values)
}

func (e *pgEnv) readCA() []byte {
	e.t.Helper()
	data, err := os.ReadFile(e.ca)
	if err != nil {
		e.t.Fatal(err)
	}
	return data
}

func (e *pgEnv) createYAML(text string) {
	e.t.Helper()
	path := filepath.Join(e.t.TempDir(), "r.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		e.t.Fatal(err)
	}
	e.mustCtl("create", "-f", path)
}

func profileOf(t *testing.T, home string) *client.Profile {
	t.Helper()
	p, err := client.CurrentProfile(home)
	if err != nil {
		t.Fatalf("no profile after login: %v", err)
	}
	return p
}

// loginEvent finds the user.login event of a user (and outcome) whose
// details name the connector.
func (e *pgEnv) loginEvent(user string, success bool, connector string) *audit.Event {
	e.t.Helper()
	return findEvent(e.events(audit.EventUserLogin, user), func(ev *audit.Event) bool {
		return ev.Success == success && ev.Details["connector"] == connector
	})
}

const ssoRoles = `kind: role
version: v1
metadata: {name: pay-reader}
spec:
  allow:
    databases:
      labels: {env: [dev]}
      db_users: ["{{external.db_users}}"]
      db_names: ["*"]
      statements: read
---
kind: role
version: v1
metadata: {name: hr-reader}
spec:
  allow:
    databases:
      labels: {env: [dev]}
      db_users: ["{{external.db_users}}"]
      db_names: ["*"]
      statements: read
`

func oidcConnectorYAML(name, issuer, clientID string) string {
	return fmt.Sprintf(`kind: oidc_connector
version: v1
metadata: {name: %s}
spec:
  display_name: Corp SSO (%s)
  issuer_url: %s
  client_id: %s
  client_secret: %s
  scopes: [openid, email, profile, groups]
  claims_to_roles:
    - {claim: groups, value: "^db-(.*)$", roles: ["$1-reader"]}
    - {claim: groups, value: admins, roles: [admin]}
  traits:
    db_users: preferred_username
`, name, name, issuer, clientID, oidcClientSecret)
}

// TestSSOOIDC logs in through a real OpenID provider (zitadel's example
// OP) with the real sigil CLI and a scripted browser, and uses the
// resulting certificate on a real PostgreSQL server.
func TestSSOOIDC(t *testing.T) {
	d := testenv.StartDaemon(t, "")
	e := &pgEnv{t: t, d: d}
	e.host, e.port, _ = strings.Cut(d.Addr, ":")
	e.ca = filepath.Join(t.TempDir(), "tls-ca.pem")
	if err := os.WriteFile(e.ca, []byte(e.mustCtl("auth", "export", "--type", "tls-ca").Stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	certDir := t.TempDir()
	e.mustCtl("auth", "sign", "--format", "postgres", "--host", "localhost,127.0.0.1", "--out", certDir)
	e.pg = testenv.StartPostgres(t, testenv.PostgresConfig{CertDir: certDir, Users: []testenv.PostgresUser{{Name: "alice", Privileges: []string{"SELECT"}}}})
	e.mustCtl("db", "add", "pg1", "--protocol", "postgres", "--uri", e.pg.Addr, "--labels", "env=dev")
	e.createYAML(ssoRoles)
	caPEM := e.readCA()

	op := testenv.StartOIDCProvider(t,
		testenv.OIDCUser{Username: "alice", Password: ssoPassword, Email: "alice@example.com", Groups: []string{"db-pay", "eng"}},
		testenv.OIDCUser{Username: "bob", Password: ssoPassword, Email: "bob@example.com", Groups: []string{"eng"}},
	)
	callback := "https://" + d.Addr + "/web/sso/oidc/callback"
	op.AddClient(testenv.OIDCClient{ID: "sigil", Secret: oidcClientSecret, RedirectURIs: []string{callback}})
	op.AddClient(testenv.OIDCClient{ID: "sigil-expired", Secret: oidcClientSecret, RedirectURIs: []string{callback}, IDTokenLifetime: -10 * time.Minute})
	op.AddClient(testenv.OIDCClient{ID: "sigil-aud", Secret: oidcClientSecret, RedirectURIs: []string{callback}, TokenAudience: "someone-else"})
	e.createYAML(oidcConnectorYAML("corp", op.Issuer, "sigil") + "---\n" +
		oidcConnectorYAML("corp-expired", op.Issuer, "sigil-expired") + "---\n" +
		oidcConnectorYAML("corp-aud", op.Issuer, "sigil-aud"))

	t.Run("client secret is sealed and never shown", func(t *testing.T) {
		for _, args := range [][]string{
			{"get", "oidc_connector", "corp"},
			{"get", "oidc", "corp", "--format", "json"},
			{"get", "oidc_connector", "--format", "yaml"},
		} {
			r := e.mustCtl(args...)
			if strings.Contains(r.Stdout, oidcClientSecret) || strings.Contains(r.Stdout, "client_secret") {
				t.Fatalf("sigilctl %v shows the client secret:\n%s", args, r.Stdout)
			}
			if !strings.Contains(r.Stdout, op.Issuer) {
				t.Fatalf("sigilctl %v does not show the connector:\n%s", args, r.Stdout)
			}
		}
		// Nothing in the storage holds the secret in the clear, though the
		// connector itself (its issuer) is found there.
		sawIssuer := false
		err := filepath.Walk(filepath.Join(d.DataDir, "backend"), func(path string, info os.FileInfo, err error) error {
			if err != nil || info.IsDir() {
				return err
			}
			if found, _ := fileContains(path, []byte(op.Issuer)); found {
				sawIssuer = true
			}
			if found, _ := fileContains(path, []byte(oidcClientSecret)); found {
				return fmt.Errorf("%s holds the client secret in the clear", path)
			}
			return nil
		})
		if err != nil || !sawIssuer {
			t.Fatalf("scanning the storage: %v (issuer found: %v)", err, sawIssuer)
		}
	})

	var aliceFirst *client.Profile
	t.Run("CLI login maps groups by regex and traits into a PostgreSQL session", func(t *testing.T) {
		l := e.startSSOLogin("corp", "--browser", "none")
		page := oidcBrowserLogin(t, testenv.NewBrowser(t, caPEM), l.authURL, "alice")
		if page.Status != http.StatusOK || !strings.Contains(page.Body, "Login finished") || page.URL.Hostname() != "127.0.0.1" {
			t.Fatalf("browser ended at %s (%d):\n%s", page.URL, page.Status, page.Body)
		}
		r := l.proc.Wait(30 * time.Second)
		if r.ExitCode != 0 {
			t.Fatalf("sigil login: exit %d\n%s\n%s\nsigild:\n%s", r.ExitCode, r.Stdout, r.Stderr, d.Stderr())
		}
		if !strings.Contains(r.Stdout, "alice@example.com") || !strings.Contains(r.Stdout, "pay-reader") {
			t.Errorf("status after login:\n%s", r.Stdout)
		}
		p := profileOf(t, l.home)
		if p.User != "alice@example.com" || !slices.Equal(p.Roles, []string{"pay-reader"}) || !slices.Equal(p.Traits["db_users"], []string{"alice"}) {
			t.Fatalf("profile: user %q roles %v traits %v", p.User, p.Roles, p.Traits)
		}
		aliceFirst = p
		// The trait feeds {{external.db_users}}: a real session as alice.
		cert := e.dbCert(l.home, "alice", 0)
		out, stderr, ok := e.psql(cert, "alice", "", "-c", "select name from items order by id")
		if !ok || out != "alpha\nbeta\ngamma" {
			t.Fatalf("psql as the SSO user: ok=%v out=%q stderr=%s", ok, out, stderr)
		}
		if _, stderr, ok := e.psql(cert, "alice", "", "-c", "insert into items values (9, 'x')"); ok || !strings.Contains(stderr, "42501") || !strings.Contains(stderr, "pay-reader") {
			t.Fatalf("insert as a read role: ok=%v stderr=%s", ok, stderr)
		}
		// No other db user: the trait is the only one the role grants.
		if err := e.tryDBCert(l.home, "reader"); err == nil || !strings.Contains(err.Error(), "reader") {
			t.Fatalf("a certificate for db user reader: %v", err)
		}
		if ev := e.loginEvent("alice@example.com", true, "corp"); ev == nil || ev.Details["method"] != "oidc" || !slices.Equal(ev.Identity.GetRoles(), []string{"pay-reader"}) {
			t.Fatalf("user.login success event = %v", ev)
		}
		q := findEvent(e.events(audit.EventDBQuery, "alice@example.com"), func(ev *audit.Event) bool { return ev.Statement == "select name from items order by id" })
		if q == nil || q.Resource.GetDbUser() != "alice" {
			t.Fatalf("db.query event = %v", q)
		}
		// SSO users are not stored as local users.
		if users := e.mustCtl("get", "users", "--format", "json").Stdout; strings.Contains(users, "alice@example.com") {
			t.Fatalf("the SSO user was stored as a local user:\n%s", users)
		}
	})

	t.Run("nothing maps: refused, naming claims and rules, audited", func(t *testing.T) {
		l := e.startSSOLogin("corp")
		page := oidcBrowserLogin(t, testenv.NewBrowser(t, caPEM), l.authURL, "bob")
		if !strings.Contains(page.Body, "Login failed") || !strings.Contains(page.Body, "no role mapping") {
			t.Errorf("browser page:\n%s", page.Body)
		}
		r := l.proc.Wait(30 * time.Second)
		t.Logf("sigil login: %s", r.Stderr)
		for _, want := range []string{
			`no role mapping of connector "corp" matched`,
			`groups=["eng"]`,
			`claim groups matches "^db-(.*)$" -> [$1-reader]`,
			`claim groups = "admins" -> [admin]`,
		} {
			if r.ExitCode == 0 || !strings.Contains(r.Stderr, want) {
				t.Errorf("sigil login as bob: exit %d, stderr does not contain %q:\n%s", r.ExitCode, want, r.Stderr)
			}
		}
		if _, err := client.CurrentProfile(l.home); err == nil {
			t.Error("a refused login left a profile")
		}
		ev := e.loginEvent("bob@example.com", false, "corp")
		if ev == nil || !strings.Contains(ev.Error, "no role mapping") || ev.Details["method"] != "oidc" {
			t.Fatalf("user.login failure event = %v", ev)
		}
	})

	t.Run("groups changed at the IdP: new roles at the next login", func(t *testing.T) {
		op.SetGroups("alice", []string{"db-hr"})
		l := e.startSSOLogin("corp")
		oidcBrowserLogin(t, testenv.NewBrowser(t, caPEM), l.authURL, "alice")
		if r := l.proc.Wait(30 * time.Second); r.ExitCode != 0 {
			t.Fatalf("sigil login: %s", r.Stderr)
		}
		p := profileOf(t, l.home)
		if !slices.Equal(p.Roles, []string{"hr-reader"}) {
			t.Fatalf("roles after the group change = %v, want [hr-reader]", p.Roles)
		}
		op.SetGroups("alice", []string{"db-pay", "eng"})
	})

	t.Run("expired ID token refused", func(t *testing.T) {
		l := e.startSSOLogin("corp-expired")
		oidcBrowserLogin(t, testenv.NewBrowser(t, caPEM), l.authURL, "alice")
		r := l.proc.Wait(30 * time.Second)
		t.Logf("sigil login: %s", r.Stderr)
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "the ID token from "+op.Issuer+" failed verification") || !strings.Contains(r.Stderr, "token is expired") {
			t.Fatalf("sigil login: exit %d\n%s", r.ExitCode, r.Stderr)
		}
	})

	t.Run("wrong audience refused", func(t *testing.T) {
		l := e.startSSOLogin("corp-aud")
		oidcBrowserLogin(t, testenv.NewBrowser(t, caPEM), l.authURL, "alice")
		r := l.proc.Wait(30 * time.Second)
		t.Logf("sigil login: %s", r.Stderr)
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, `expected audience "sigil-aud"`) || !strings.Contains(r.Stderr, "someone-else") {
			t.Fatalf("sigil login: exit %d\n%s", r.ExitCode, r.Stderr)
		}
		if ev := e.loginEvent("", false, "corp-aud"); ev == nil || !strings.Contains(ev.Error, "audience") {
			t.Fatalf("user.login failure event = %v", ev)
		}
	})

	t.Run("tampered ID token (bad signature) refused", func(t *testing.T) {
		// On the way from the provider, bob's groups become [admins]; the
		// signature no longer matches.
		op.TamperIDTokens(func(tok string) string {
			parts := strings.Split(tok, ".")
			payload, err := base64.RawURLEncoding.DecodeString(parts[1])
			if err != nil {
				return tok
			}
			var claims map[string]any
			if json.Unmarshal(payload, &claims) != nil {
				return tok
			}
			claims["groups"] = []string{"admins"}
			payload, _ = json.Marshal(claims)
			parts[1] = base64.RawURLEncoding.EncodeToString(payload)
			return strings.Join(parts, ".")
		})
		defer op.TamperIDTokens(nil)
		l := e.startSSOLogin("corp")
		oidcBrowserLogin(t, testenv.NewBrowser(t, caPEM), l.authURL, "bob")
		r := l.proc.Wait(30 * time.Second)
		t.Logf("sigil login: %s", r.Stderr)
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "failed verification") || !strings.Contains(r.Stderr, "failed to verify signature") {
			t.Fatalf("sigil login: exit %d\n%s", r.ExitCode, r.Stderr)
		}
		if _, err := client.CurrentProfile(l.home); err == nil {
			t.Fatal("a tampered token produced a profile")
		}
	})

	t.Run("unreachable provider ends the login at once", func(t *testing.T) {
		e.createYAML(oidcConnectorYAML("corp-down", "http://127.0.0.1:1/", "sigil"))
		l := e.startSSOLogin("corp-down")
		page := testenv.NewBrowser(t, caPEM).Get(l.authURL)
		if !strings.Contains(page.Body, "Login failed") {
			t.Errorf("browser page:\n%s", page.Body)
		}
		r := l.proc.Wait(30 * time.Second)
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "discovering the OpenID provider at http://127.0.0.1:1/ failed") {
			t.Fatalf("sigil login: exit %d\n%s", r.ExitCode, r.Stderr)
		}
	})

	t.Run("state mismatch refused", func(t *testing.T) {
		// Drive the API as the CLI does, stopping the browser before it
		// reaches the gateway's callback so the test can alter it.
		fl := e.newAPIFlow("corp")
		b := testenv.NewBrowser(t, caPEM)
		b.Stop = func(u *url.URL) bool { return u.Path == "/web/sso/oidc/callback" }
		page := oidcBrowserLogin(t, b, fl.authURL, "alice")
		if page.URL.Path != "/web/sso/oidc/callback" || page.URL.Query().Get("code") == "" {
			t.Fatalf("browser stopped at %s", page.URL)
		}
		b.Stop = nil
		good := *page.URL

		forged := good
		q := forged.Query()
		q.Set("state", strings.Repeat("0", 32))
		forged.RawQuery = q.Encode()
		res := b.Get(forged.String())
		if res.Status != http.StatusForbidden || !strings.Contains(res.Body, "state mismatch") {
			t.Fatalf("forged state: %d\n%s", res.Status, res.Body)
		}
		// The right state from a browser that did not start the login.
		other := testenv.NewBrowser(t, caPEM)
		res = other.Get(good.String())
		if res.Status != http.StatusForbidden || !strings.Contains(res.Body, "state mismatch: this browser did not start the login") {
			t.Fatalf("other browser: %d\n%s", res.Status, res.Body)
		}
		// Neither spoiled the real login.
		res = b.Get(good.String())
		if res.URL.Host != fl.callbackHost || res.URL.Query().Get("request_id") != fl.id {
			t.Fatalf("real callback ended at %s (%d)\n%s", res.URL, res.Status, res.Body)
		}
		login := fl.result(t)
		if login.GetIdentity().GetName() != "alice@example.com" {
			t.Fatalf("identity = %v", login.GetIdentity())
		}
		// The result is single use.
		if _, err := fl.fetch(); err == nil || !strings.Contains(err.Error(), "not found") {
			t.Fatalf("second GetSSOLoginResult: %v", err)
		}
	})

	t.Run("web login page lists connectors and signs in", func(t *testing.T) {
		b := testenv.NewBrowser(t, caPEM)
		page := b.Get("https://" + d.Addr + "/web/login")
		if page.Status != http.StatusOK || !strings.Contains(page.Body, `href="/web/sso/login/corp"`) || !strings.Contains(page.Body, "Corp SSO (corp)") {
			t.Fatalf("login page:\n%s", page.Body)
		}
		res := oidcBrowserLogin(t, b, "https://"+d.Addr+"/web/sso/login/corp", "alice")
		if res.Status != http.StatusOK || !strings.Contains(res.Body, "Signed in as <strong>alice@example.com</strong>") || !strings.Contains(res.Body, "pay-reader") {
			t.Fatalf("web login result (%d):\n%s", res.Status, res.Body)
		}
	})

	t.Run("headless Chromium: CLI login and the web login page", func(t *testing.T) {
		chrome := testenv.StartChromium(t, caPEM, d.Addr)
		fill := `document.getElementById('username').value = 'alice';
			document.getElementById('password').value = '` + ssoPassword + `';
			document.forms[0].submit();`

		l := e.startSSOLogin("corp")
		tab := chrome.NewTab()
		tab.Navigate(l.authURL)
		tab.WaitFor("document.getElementById('username')", 30*time.Second)
		tab.Run(fill)
		tab.WaitFor("document.body.innerText.includes('Login finished')", 30*time.Second)
		if r := l.proc.Wait(30 * time.Second); r.ExitCode != 0 {
			t.Fatalf("sigil login: exit %d\n%s", r.ExitCode, r.Stderr)
		}
		if p := profileOf(t, l.home); p.User != "alice@example.com" || !slices.Equal(p.Roles, []string{"pay-reader"}) {
			t.Fatalf("profile: %q %v", p.User, p.Roles)
		}

		web := chrome.NewTab()
		web.Navigate("https://" + d.Addr + "/web/login")
		web.WaitFor(`document.querySelector('a[href="/web/sso/login/corp"]')`, 30*time.Second)
		web.Run(`document.querySelector('a[href="/web/sso/login/corp"]').click()`)
		web.WaitFor("document.getElementById('username')", 30*time.Second)
		web.Run(fill)
		web.WaitFor("document.body.innerText.includes('Signed in as')", 30*time.Second)
		if text := web.Text(); !strings.Contains(text, "alice@example.com") || !strings.Contains(text, "pay-reader") {
			t.Fatalf("web login page:\n%s", text)
		}
	})

	t.Run("lock cuts the SSO user's certificate at once", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		home := t.TempDir()
		if err := client.SaveProfile(home, aliceFirst); err != nil {
			t.Fatal(err)
		}
		conn := e.pgx(ctx, e.dbCert(home, "alice", 0), "alice")
		if _, err := conn.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
		e.mustCtl("lock", "--user", "alice@example.com", "--message", "left the company")
		testenv.Eventually(t, 10*time.Second, func() error {
			if _, err := conn.Exec(ctx, "select 1"); err == nil {
				return errors.New("the session still runs")
			}
			return nil
		})
		clt, err := client.NewFromIdentity(aliceFirst.Identity, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer clt.Close()
		if _, err := clt.Auth.WhoAmI(ctx, connect.NewRequest(&sigilv1.WhoAmIRequest{})); err == nil || !strings.Contains(err.Error(), "locked") {
			t.Fatalf("API call with the locked SSO user's certificate: %v", err)
		}
		l := e.startSSOLogin("corp")
		oidcBrowserLogin(t, testenv.NewBrowser(t, caPEM), l.authURL, "alice")
		if r := l.proc.Wait(30 * time.Second); r.ExitCode == 0 || !strings.Contains(r.Stderr, "access is locked") || !strings.Contains(r.Stderr, "left the company") {
			t.Fatalf("SSO login while locked: exit %d\n%s", r.ExitCode, r.Stderr)
		}
	})
}

// fileContains scans a (possibly large, sparse) file for needle without
// reading it whole.
func fileContains(path string, needle []byte) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20+len(needle))
	carry := 0
	for {
		n, err := f.Read(buf[carry:])
		if bytes.Contains(buf[:carry+n], needle) {
			return true, nil
		}
		if err != nil {
			return false, nil
		}
		// Keep the tail: the needle may straddle two reads.
		carry = copy(buf, buf[max(0, carry+n-len(needle)+1):carry+n])
	}
}

// tryDBCert asks for a database certificate for dbUser with the profile
// in home and returns the refusal.
func (e *pgEnv) tryDBCert(home, dbUser string) error {
	e.t.Helper()
	_, err := testenv.IssueDBCert(context.Background(), home, "pg1", dbUser, "app", 0)
	return err
}

// apiFlow is an SSO login driven through the API, as the CLI does, with
// the test's own loopback callback.
type apiFlow struct {
	e            *pgEnv
	clt          *client.Client
	secret       []byte
	id           string
	authURL      string
	callbackHost string
}

func (e *pgEnv) newAPIFlow(connector string) *apiFlow {
	e.t.Helper()
	cb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("back at the CLI")) }))
	e.t.Cleanup(cb.Close)
	pool, err := client.CertPoolFromPEM(e.readCA())
	if err != nil {
		e.t.Fatal(err)
	}
	clt, err := client.New(client.Config{Addr: e.d.Addr, TLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(clt.Close)
	key, err := client.GenerateKey()
	if err != nil {
		e.t.Fatal(err)
	}
	pub, err := client.MarshalPublicKeyDER(key)
	if err != nil {
		e.t.Fatal(err)
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	sum := sha256.Sum256(secret)
	resp, err := clt.SSO.CreateSSOLogin(context.Background(), connect.NewRequest(&sigilv1.CreateSSOLoginRequest{
		Connector: connector, TlsPublicKey: pub, ClientCallbackUrl: cb.URL + "/callback", ClientSecretHash: sum[:],
	}))
	if err != nil {
		e.t.Fatalf("CreateSSOLogin: %v", err)
	}
	u, _ := url.Parse(cb.URL)
	return &apiFlow{e: e, clt: clt, secret: secret, id: resp.Msg.RequestId, authURL: resp.Msg.AuthUrl, callbackHost: u.Host}
}

func (f *apiFlow) fetch() (*sigilv1.GetSSOLoginResultResponse, error) {
	resp, err := f.clt.SSO.GetSSOLoginResult(context.Background(), connect.NewRequest(&sigilv1.GetSSOLoginResultRequest{RequestId: f.id, ClientSecret: f.secret}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

func (f *apiFlow) result(t *testing.T) *sigilv1.LoginResponse {
	t.Helper()
	// A wrong secret gets nothing, and does not use the result up.
	if _, err := f.clt.SSO.GetSSOLoginResult(context.Background(), connect.NewRequest(&sigilv1.GetSSOLoginResultRequest{RequestId: f.id, ClientSecret: []byte("wrong")})); err == nil || !strings.Contains(err.Error(), "client secret does not match") {
		t.Fatalf("GetSSOLoginResult with a wrong secret: %v", err)
	}
	res, err := f.fetch()
	if err != nil {
		t.Fatalf("GetSSOLoginResult: %v", err)
	}
	if res.Pending || len(res.GetLogin().GetTlsCertPem()) == 0 {
		t.Fatalf("GetSSOLoginResult = %v", res)
	}
	return res.GetLogin()
}

func samlConnectorYAML(name, metadataURL string) string {
	return fmt.Sprintf(`kind: saml_connector
version: v1
metadata: {name: %s}
spec:
  display_name: Corp SAML
  idp_metadata_url: %s
  username_attribute: mail
  attributes_to_roles:
    - {name: eduPersonAffiliation, value: "db-*", roles: ["$1-reader"]}
  traits:
    db_users: uid
`, name, metadataURL)
}

// TestSSOSAML logs in through a real SAML IdP (crewjam/saml's samlidp)
// with the real sigil CLI and a scripted browser.
func TestSSOSAML(t *testing.T) {
	d := testenv.StartDaemon(t, "")
	e := &pgEnv{t: t, d: d}
	e.host, e.port, _ = strings.Cut(d.Addr, ":")
	e.ca = filepath.Join(t.TempDir(), "tls-ca.pem")
	if err := os.WriteFile(e.ca, []byte(e.mustCtl("auth", "export", "--type", "tls-ca").Stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	e.createYAML(ssoRoles)
	caPEM := e.readCA()

	idp := testenv.StartSAMLIdP(t,
		testenv.SAMLUser{Name: "alice", Password: ssoPassword, Email: "alice@example.com", Groups: []string{"db-pay", "staff"}},
		testenv.SAMLUser{Name: "bob", Password: ssoPassword, Email: "bob@example.com", Groups: []string{"staff"}},
	)
	e.createYAML(samlConnectorYAML("corp-saml", idp.MetadataURL))
	// Register Sigil at the IdP with the metadata the gateway publishes.
	md := testenv.NewBrowser(t, caPEM).Get("https://" + d.Addr + "/web/sso/saml/metadata/corp-saml")
	if md.Status != http.StatusOK || !strings.Contains(md.Body, "/web/sso/saml/acs") {
		t.Fatalf("SP metadata: %d\n%s", md.Status, md.Body)
	}
	idp.AddServiceProvider("sigil", []byte(md.Body))

	t.Run("CLI login maps attributes to roles and traits", func(t *testing.T) {
		l := e.startSSOLogin("corp-saml")
		_, _, page := samlBrowserLogin(t, testenv.NewBrowser(t, caPEM), l.authURL, "alice")
		if page.Status != http.StatusOK || !strings.Contains(page.Body, "Login finished") {
			t.Fatalf("browser ended at %s (%d):\n%s\nsigild:\n%s", page.URL, page.Status, page.Body, d.Stderr())
		}
		r := l.proc.Wait(30 * time.Second)
		if r.ExitCode != 0 {
			t.Fatalf("sigil login: exit %d\n%s\n%s", r.ExitCode, r.Stdout, r.Stderr)
		}
		p := profileOf(t, l.home)
		if p.User != "alice@example.com" || !slices.Equal(p.Roles, []string{"pay-reader"}) || !slices.Equal(p.Traits["db_users"], []string{"alice"}) {
			t.Fatalf("profile: user %q roles %v traits %v", p.User, p.Roles, p.Traits)
		}
		if ev := e.loginEvent("alice@example.com", true, "corp-saml"); ev == nil || ev.Details["method"] != "saml" {
			t.Fatalf("user.login success event = %v", ev)
		}
	})

	t.Run("headless Chromium: CLI login", func(t *testing.T) {
		chrome := testenv.StartChromium(t, caPEM, d.Addr)
		l := e.startSSOLogin("corp-saml")
		tab := chrome.NewTab()
		tab.Navigate(l.authURL)
		tab.WaitFor("document.querySelector('input[name=user]')", 30*time.Second)
		// The IdP answers with a page whose script posts the response to
		// the gateway, cross-site: the login cookie must come along.
		tab.Run(`document.querySelector('input[name=user]').value = 'alice';
			document.querySelector('input[name=password]').value = '` + ssoPassword + `';
			document.forms[0].submit();`)
		tab.WaitFor("document.body.innerText.includes('Login finished')", 30*time.Second)
		if r := l.proc.Wait(30 * time.Second); r.ExitCode != 0 {
			t.Fatalf("sigil login: exit %d\n%s", r.ExitCode, r.Stderr)
		}
		if p := profileOf(t, l.home); p.User != "alice@example.com" || !slices.Equal(p.Roles, []string{"pay-reader"}) {
			t.Fatalf("profile: %q %v", p.User, p.Roles)
		}
	})

	t.Run("replayed assertion refused", func(t *testing.T) {
		fl := e.newAPIFlow("corp-saml")
		b := testenv.NewBrowser(t, caPEM)
		b.Stop = func(u *url.URL) bool { return u.Host == fl.callbackHost }
		posted, form, res := samlBrowserLogin(t, b, fl.authURL, "alice")
		if res.URL.Host != fl.callbackHost || res.URL.Query().Get("request_id") != fl.id {
			t.Fatalf("first post ended at %s (%d):\n%s", res.URL, res.Status, res.Body)
		}
		// The same response again, to the same login and from the same
		// browser: refused by the assertion id, whatever else holds.
		again := b.Post(posted, form, form.Values)
		if again.Status != http.StatusForbidden || !strings.Contains(again.Body, "was already used (replay refused)") {
			t.Fatalf("replayed response: %d\n%s", again.Status, again.Body)
		}
		login := fl.result(t)
		if login.GetIdentity().GetName() != "alice@example.com" {
			t.Fatalf("identity = %v", login.GetIdentity())
		}
		// After the login is over its state is gone too: still refused.
		again = b.Post(posted, form, form.Values)
		if again.Status != http.StatusForbidden || !strings.Contains(again.Body, "belongs to no pending login") {
			t.Fatalf("replay after the login: %d\n%s", again.Status, again.Body)
		}
		ev := findEvent(e.events(audit.EventUserLogin, "alice@example.com"), func(ev *audit.Event) bool {
			return !ev.Success && strings.Contains(ev.Error, "replay refused")
		})
		if ev == nil || ev.Details["connector"] != "corp-saml" {
			t.Fatalf("no user.login failure event for the replay: %v", ev)
		}
	})

	t.Run("response answering another login refused", func(t *testing.T) {
		// A fresh response for login A posted with login B's relay state:
		// InResponseTo does not match B's AuthnRequest.
		flA := e.newAPIFlow("corp-saml")
		bA := testenv.NewBrowser(t, caPEM)
		bA.Stop = func(u *url.URL) bool { return u.Path == "/web/sso/saml/acs" }
		pageA := bA.Get(flA.authURL)
		postedA := bA.Submit(pageA, map[string]string{"user": "alice", "password": ssoPassword})
		formA := postedA.Forms[0]

		flB := e.newAPIFlow("corp-saml")
		bB := testenv.NewBrowser(t, caPEM)
		pageB := bB.Get(flB.authURL)
		postedB := bB.Submit(pageB, map[string]string{"user": "alice", "password": ssoPassword})
		valsB := postedB.Forms[0].Values
		mixed := url.Values{"SAMLResponse": formA.Values["SAMLResponse"], "RelayState": valsB["RelayState"]}
		res := bB.Post(postedB, postedB.Forms[0], mixed)
		if !strings.Contains(res.URL.RawQuery, "error=") {
			t.Fatalf("mixed response ended at %s (%d):\n%s", res.URL, res.Status, res.Body)
		}
		if _, err := flB.fetch(); err == nil || !strings.Contains(err.Error(), "InResponseTo") {
			t.Fatalf("login B result: %v", err)
		}
	})

	t.Run("wrong audience or recipient refused", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			hook func(*saml.Assertion)
			want string
		}{
			{"audience", func(a *saml.Assertion) {
				a.Conditions.AudienceRestrictions[0].Audience.Value = "https://someone-else.example.com"
			}, "the assertion's audience is not \"https://" + d.Addr + "/web/sso/saml/metadata/corp-saml\""},
			{"no audience", func(a *saml.Assertion) { a.Conditions.AudienceRestrictions = nil }, "the assertion's audience is not"},
			{"recipient", func(a *saml.Assertion) {
				a.Subject.SubjectConfirmations[0].SubjectConfirmationData.Recipient = "https://someone-else.example.com/acs"
			}, "Recipient is not https://" + d.Addr + "/web/sso/saml/acs"},
		} {
			idp.SetAssertionHook(tc.hook)
			l := e.startSSOLogin("corp-saml")
			samlBrowserLogin(t, testenv.NewBrowser(t, caPEM), l.authURL, "alice")
			r := l.proc.Wait(30 * time.Second)
			t.Logf("%s: %s", tc.name, r.Stderr)
			if r.ExitCode == 0 || !strings.Contains(r.Stderr, "the SAML response from "+idp.MetadataURL+" was refused") || !strings.Contains(r.Stderr, tc.want) {
				t.Errorf("%s: exit %d, want %q in:\n%s", tc.name, r.ExitCode, tc.want, r.Stderr)
			}
		}
		idp.SetAssertionHook(nil)
	})

	t.Run("nothing maps: refused, naming attributes and rules", func(t *testing.T) {
		l := e.startSSOLogin("corp-saml")
		samlBrowserLogin(t, testenv.NewBrowser(t, caPEM), l.authURL, "bob")
		r := l.proc.Wait(30 * time.Second)
		t.Logf("sigil login: %s", r.Stderr)
		for _, want := range []string{
			`no role mapping of connector "corp-saml" matched`,
			`eduPersonAffiliation=["staff"]`,
			`attribute eduPersonAffiliation matches "db-*" -> [$1-reader]`,
		} {
			if r.ExitCode == 0 || !strings.Contains(r.Stderr, want) {
				t.Errorf("sigil login as bob: exit %d, stderr does not contain %q", r.ExitCode, want)
			}
		}
		if ev := e.loginEvent("bob@example.com", false, "corp-saml"); ev == nil || ev.Details["method"] != "saml" {
			t.Fatalf("user.login failure event = %v", ev)
		}
	})
}
