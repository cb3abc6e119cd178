package integration

import (
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/integration/testenv"
)

var (
	signupTokenRe = regexp.MustCompile(`"token":\s*"([0-9a-f]{64})"`)
	qrSecretRe    = regexp.MustCompile(`<code class="secret">([A-Z2-7]+)</code>`)
)

// TestLoginSecondFactor runs a gateway with auth.second_factor: on. The
// signup registers a device in the console; password logins then need a
// one-time code or a security key, in the CLI and in the console.
func TestLoginSecondFactor(t *testing.T) {
	d := testenv.StartDaemonWithConfig(t, "", "auth:\n  second_factor: on\n")
	e := &pgEnv{t: t, d: d}
	e.ca = filepath.Join(t.TempDir(), "tls-ca.pem")
	if err := os.WriteFile(e.ca, []byte(e.mustCtl("auth", "export", "--type", "tls-ca").Stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	origin := consoleOrigin(d)
	home := t.TempDir()
	env := []string{"SIGIL_HOME=" + home}
	add := e.mustCtl("users", "add", "gina", "--roles", "access", "--format", "json")
	token := signupTokenRe.FindStringSubmatch(add.Stdout)[1]
	login := func(extra ...string) testenv.Result {
		args := append([]string{"login", "--proxy", d.Addr, "--user", "gina", "--ca-file", e.ca, "--password-stdin"}, extra...)
		return testenv.Run(t, env, alicePassword+"\n", "sigil", args...)
	}

	t.Run("the CLI signup sends to the browser", func(t *testing.T) {
		r := testenv.Run(t, env, alicePassword+"\n", "sigil", "signup", token, "--proxy", d.Addr, "--ca-file", e.ca, "--password-stdin")
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "the signup also registers an MFA device: open "+origin+"/web/signup/"+token+" in a browser") {
			t.Fatalf("sigil signup: exit %d\n%s", r.ExitCode, r.Stderr)
		}
	})

	b := testenv.NewBrowser(t, e.readCA())
	var secret string
	var lastStep int64
	t.Run("the web signup registers an authenticator app", func(t *testing.T) {
		// The link carries the public address; the console moves to the
		// origin where security keys work.
		page := b.Get("https://" + d.Addr + "/web/signup/" + token)
		if page.URL.Host != strings.TrimPrefix(origin, "https://") {
			t.Fatalf("signup page at %s", page.URL)
		}
		page = b.Submit(page, map[string]string{"password": alicePassword, "confirm": alicePassword})
		if page.URL.Path != "/web/devices" || !strings.Contains(page.Body, "asks for a second factor when you sign in") {
			t.Fatalf("after signup: %s (%d)\n%s", page.URL, page.Status, page.Body)
		}
		page = b.Submit(page, map[string]string{"name": "phone"})
		m := qrSecretRe.FindStringSubmatch(page.Body)
		if m == nil || !strings.Contains(page.Body, "<svg") {
			t.Fatalf("no QR code and secret:\n%s", page.Body)
		}
		secret = m[1]
		code, err := totp.GenerateCode(secret, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		lastStep = stepOf(time.Now())
		page = b.Submit(page, map[string]string{"code": code})
		if !strings.Contains(page.Body, "Added MFA device “phone”") {
			t.Fatalf("finishing the app: %s\n%s", page.URL, page.Body)
		}
	})

	t.Run("a password alone is refused", func(t *testing.T) {
		r := login()
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "pass --otp CODE") {
			t.Fatalf("login without a code: exit %d\n%s", r.ExitCode, r.Stderr)
		}
		r = login("--otp", "000000")
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "invalid one-time code") {
			t.Fatalf("login with a wrong code: exit %d\n%s", r.ExitCode, r.Stderr)
		}
	})

	t.Run("login with a one-time code", func(t *testing.T) {
		var code string
		code, lastStep = codeAfter(t, secret, lastStep)
		if r := login("--otp", code); r.ExitCode != 0 {
			t.Fatalf("login with a code: exit %d\n%s", r.ExitCode, r.Stderr)
		}
		ev := findEvent(e.events(audit.EventUserLogin, "gina"), func(ev *audit.Event) bool { return ev.Success && ev.Details["mfa_device"] == "phone" })
		if ev == nil {
			t.Fatal("no user.login event naming the device")
		}
		if r := login("--otp", code); r.ExitCode == 0 || !strings.Contains(r.Stderr, "already used") {
			t.Fatalf("the same code again: exit %d\n%s", r.ExitCode, r.Stderr)
		}
	})

	key := testenv.NewVirtualKey(t, origin)
	t.Run("login with a security key", func(t *testing.T) {
		// Adding the key needs the app: a step not used yet.
		proof, _ := codeAfter(t, secret, lastStep)
		registerKey(t, e, b, key, "yubikey", proof)
		cli := testenv.StartInteractive(t, env, "sigil", "login", "--proxy", d.Addr, "--user", "gina", "--ca-file", e.ca, "--password-stdin")
		// The password is all of stdin: with no terminal to type a code
		// on, sigil turns to the key.
		fmt.Fprintln(cli.Stdin, alicePassword)
		cli.Stdin.Close()
		var url string
		testenv.Eventually(t, 30*time.Second, func() error {
			if url = mfaURLRe.FindString(cli.Stderr()); url == "" {
				return fmt.Errorf("no approval link yet:\n%s", cli.Stderr())
			}
			return nil
		})
		if status, out := approve(t, testenv.NewBrowser(t, e.readCA()), key, url, 0); status != http.StatusOK {
			t.Fatalf("approving the login: %d %v", status, out)
		}
		if err := cli.Wait(60 * time.Second); err != nil {
			t.Fatalf("sigil login: %v\n%s", err, cli.Stderr())
		}
		if !strings.Contains(cli.Stdout(), "gina") {
			t.Errorf("sigil login output:\n%s", cli.Stdout())
		}
	})

	t.Run("console sign-in with a security key", func(t *testing.T) {
		nb := testenv.NewBrowser(t, e.readCA())
		var page *testenv.Page
		// Five password attempts a minute per user: the logins above may
		// have used them up.
		testenv.Eventually(t, 60*time.Second, func() error {
			page = nb.Get(origin + "/web/login")
			page = nb.Submit(page, map[string]string{"user": "gina", "password": alicePassword, "otp": ""})
			if strings.Contains(page.Body, "too many login attempts") {
				return fmt.Errorf("rate limited")
			}
			return nil
		})
		if page.URL.Path != "/web/login" || !strings.Contains(page.Body, `data-webauthn="assert"`) {
			t.Fatalf("sign-in step 2: %s\n%s", page.URL, page.Body)
		}
		attrs := map[string]string{}
		for _, m := range dataAttrRe.FindAllStringSubmatch(page.Body, -1) {
			attrs[m[1]] = html.UnescapeString(m[2])
		}
		status, out := postJSON(t, nb, origin+attrs["verify"], attrs["csrf"], json.RawMessage(key.Assert(t, attrs["options"])))
		if status != http.StatusOK {
			t.Fatalf("approving the sign-in: %d %v", status, out)
		}
		var form testenv.Form
		for _, f := range page.Forms {
			if f.Values.Get("challenge") != "" {
				form = f
			}
		}
		page = nb.Post(page, form, form.Values)
		if page.URL.Path != "/web/resources" {
			t.Fatalf("after the key: %s (%d)\n%s", page.URL, page.Status, page.Body)
		}
		// The challenge was spent by the sign-in.
		again := nb.Get(origin + attrs["verify"][:len(attrs["verify"])-len("/verify")])
		if again.Status != http.StatusNotFound && !strings.Contains(again.Body, "approved already") {
			t.Errorf("the sign-in's challenge page afterwards: %d", again.Status)
		}
	})

	t.Run("console forms need their CSRF token", func(t *testing.T) {
		resp, err := b.Client.PostForm(origin+"/web/devices/remove", map[string][]string{"name": {"phone"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("a form without its token: %d", resp.StatusCode)
		}
		req, err := http.NewRequest(http.MethodPost, origin+"/web/logout", strings.NewReader("csrf=x"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", "cross-site")
		resp, err = b.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("a cross-site post: %d", resp.StatusCode)
		}
	})
}

// stepOf is the TOTP time step of t.
func stepOf(t time.Time) int64 { return t.Unix() / 30 }

// codeAfter returns a code of a step after last (codes of used steps are
// refused), waiting for the clock when the next one is not accepted yet
// (at most one step ahead of now is).
func codeAfter(t *testing.T, secret string, last int64) (string, int64) {
	t.Helper()
	if stepOf(time.Now()) < last {
		t.Logf("waiting up to 30s for the next one-time code step")
		testenv.Eventually(t, 35*time.Second, func() error {
			if stepOf(time.Now()) < last {
				return fmt.Errorf("step %d not reached", last)
			}
			return nil
		})
	}
	at := time.Now().Add(30 * time.Second)
	code, err := totp.GenerateCode(secret, at)
	if err != nil {
		t.Fatal(err)
	}
	return code, stepOf(at)
}
