package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/integration/testenv"
)

// consoleRoles let erin read everyone's audit events, lock users (end
// sessions) and request write access.
const consoleRoles = `kind: role
version: v1
metadata: {name: console-ops}
spec:
  allow:
    rules:
      - {resources: [audit], verbs: [list]}
      - {resources: [lock], verbs: [create]}
    request: {roles: [pg-write], max_duration: 4h}
    review_requests: {roles: [pg-write]}
---
kind: role
version: v1
metadata: {name: pg-requester}
spec:
  allow:
    request: {roles: [pg-write], max_duration: 4h}
`

// screenshotDir is docs/img when SIGIL_UPDATE_SCREENSHOTS=1 (to refresh
// the documentation's pictures), a temporary directory otherwise.
func screenshotDir(t *testing.T) string {
	if os.Getenv("SIGIL_UPDATE_SCREENSHOTS") == "1" {
		dir, err := filepath.Abs(filepath.Join("..", "docs", "img"))
		if err != nil {
			t.Fatal(err)
		}
		return dir
	}
	return t.TempDir()
}

// TestWebConsoleChromium drives the console in headless Chromium: sign in,
// see databases, register a security key with the DevTools virtual
// authenticator, approve the MFA check a waiting "sigil db connect" asked
// for, end a session, filter the audit log, request access; and it takes
// the screenshots of docs/console.md.
func TestWebConsoleChromium(t *testing.T) {
	e := startPgEnv(t)
	e.createYAML(mfaRole + "---\n" + consoleRoles)
	erinHome := e.addUser("erin", "pg-mfa,pg-read,console-ops")
	bobHome := e.addUser("bob", "pg-read,pg-requester")
	// A request for erin to review; her role asks for MFA per review.
	if r := testenv.Run(t, []string{"SIGIL_HOME=" + bobHome}, "", "sigil", "request", "create", "--roles", "pg-write", "--reason", "migration 42"); r.ExitCode != 0 {
		t.Fatalf("sigil request create: %s", r.Stderr)
	}
	origin := consoleOrigin(e.d)
	shots := screenshotDir(t)
	shot := func(tab *testenv.Tab, name string) { tab.Screenshot(filepath.Join(shots, name)) }
	chrome := testenv.StartChromium(t, e.readCA(), e.d.Addr)
	tab := chrome.NewTab()
	tab.SetViewport(1280, 800, false)
	// Steps, not subtests: the browser belongs to the whole test.
	step := func(name string, fn func()) {
		t.Log("step: " + name)
		fn()
	}

	step("sign in and see databases", func() {
		tab.Navigate(origin + "/web/")
		tab.WaitFor(`document.getElementById('password')`, 30*time.Second)
		shot(tab, "console-login.png")
		tab.Run(`document.getElementById('user').value = 'erin';
			document.getElementById('password').value = '` + alicePassword + `';
			document.querySelector('form[action="/web/login"]').submit();`)
		tab.WaitFor(`location.pathname === '/web/resources' && document.body.innerText.includes('pg1')`, 30*time.Second)
		if text := tab.Text(); !strings.Contains(text, "sigil db connect pg1 --db-user") || !strings.Contains(text, "erin") {
			t.Fatalf("resources page:\n%s", text)
		}
		shot(tab, "console-resources.png")
	})

	step("register a security key", func() {
		auth := tab.AddVirtualAuthenticator()
		tab.Navigate(origin + "/web/devices")
		tab.WaitFor(`document.getElementById('key-name')`, 30*time.Second)
		tab.Run(`document.getElementById('key-name').value = 'laptop-key';
			document.querySelector('[data-webauthn=register] [data-action=webauthn]').click();`)
		tab.WaitFor(`document.querySelector('table.list') && document.querySelector('table.list').innerText.includes('laptop-key')`, 30*time.Second)
		if n := tab.Credentials(auth); n != 1 {
			t.Fatalf("the virtual authenticator holds %d credentials, want 1", n)
		}

		// A second device needs a check with the first: the page asks
		// the key, then shows the app's QR code.
		tab.Run(`document.getElementById('totp-name').value = 'phone';
			document.querySelector('form[action="/web/devices/totp"] button').click();`)
		tab.WaitFor(`document.querySelector('.qr svg') && document.querySelector('code.secret')`, 30*time.Second)
		shot(tab, "console-mfa-totp.png")
		secret, err := tab.Eval(`document.querySelector('code.secret').innerText`)
		if err != nil {
			t.Fatal(err)
		}
		code, err := totp.GenerateCode(strings.TrimSpace(secret), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		tab.Run(`document.getElementById('code').value = '` + code + `';
			document.querySelector('form[action="/web/devices/totp/finish"]').submit();`)
		tab.WaitFor(`document.body.innerText.includes('Added MFA device “phone”')`, 30*time.Second)
		shot(tab, "console-mfa-devices.png")
	})

	step("approve the MFA check the CLI waits on", func() {
		p := testenv.StartCLI(t, []string{"SIGIL_HOME=" + erinHome}, "sigil", "db", "connect", "pg1", "--db-user", "writer", "--db-name", "app",
			"--", "-X", "-q", "-A", "-t", "-c", "insert into items values (200, 'from-browser') returning name")
		url := waitFor(t, p, mfaURLRe, true)[0]
		tab.Navigate(origin + "/web/approvals")
		tab.WaitFor(`document.querySelector('a[href^="/web/approvals/"]')`, 30*time.Second)
		shot(tab, "console-mfa-approvals.png")
		tab.Navigate(url)
		tab.WaitFor(`document.querySelector('[data-action=webauthn]')`, 30*time.Second)
		if text := tab.Text(); !strings.Contains(text, "erin asks to open a session to database pg1 as db user writer") {
			t.Fatalf("approval page:\n%s", text)
		}
		shot(tab, "console-mfa-approve.png")
		tab.Run(`document.querySelector('[data-action=webauthn]').click()`)
		tab.WaitFor(`!document.getElementById('done-msg').classList.contains('hidden')`, 30*time.Second)
		r := p.Wait(60 * time.Second)
		if r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "from-browser" {
			t.Fatalf("db connect: exit %d\nstdout: %s\nstderr: %s", r.ExitCode, r.Stdout, r.Stderr)
		}
		if !strings.Contains(r.Stderr, `MFA check passed with "laptop-key"`) {
			t.Errorf("db connect stderr: %s", r.Stderr)
		}
	})

	step("end a session from the sessions page", func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn := e.pgx(ctx, e.dbCert(bobHome, "reader", 0), "reader")
		tab.Navigate(origin + "/web/sessions")
		tab.WaitFor(`document.querySelector('input[name=user][value=bob]')`, 30*time.Second)
		shot(tab, "console-sessions.png")
		tab.Run(`window.confirm = () => true;
			document.querySelector('input[name=user][value=bob]').form.querySelector('button').click();`)
		tab.WaitFor(`document.body.innerText.includes('Locked bob')`, 30*time.Second)
		testenv.Eventually(t, 10*time.Second, func() error {
			if err := conn.Ping(ctx); err == nil {
				return errors.New("bob's session is still open")
			}
			return nil
		})
	})

	step("filter the audit log", func() {
		tab.Navigate(origin + "/web/audit")
		tab.WaitFor(`document.querySelector('select[name=type]')`, 30*time.Second)
		tab.Run(`document.querySelector('select[name=type]').value = 'mfa.verified';
			document.querySelector('input[name=user]').value = 'erin';
			document.querySelector('form.filters').submit();`)
		tab.WaitFor(`location.search.includes('type=mfa.verified') && document.querySelector('table.events')`, 30*time.Second)
		others, err := tab.Eval(`Array.from(document.querySelectorAll('table.events td[data-label=Type]')).filter(td => td.innerText.trim() !== 'mfa.verified').length`)
		if err != nil || others != "0" {
			t.Fatalf("rows of another type after filtering: %s (%v)\n%s", others, err, tab.Text())
		}
		if text := tab.Text(); !strings.Contains(text, "laptop-key") || !strings.Contains(text, "database pg1 as writer/app") {
			t.Fatalf("filtered audit log:\n%s", text)
		}
		shot(tab, "console-audit.png")
		tab.Run(`document.querySelector('table.events a').click()`)
		tab.WaitFor(`document.getElementById('event')`, 30*time.Second)
		if text := tab.Text(); !strings.Contains(text, "MFA device") || !strings.Contains(text, "device_type") {
			t.Fatalf("event detail:\n%s", text)
		}
		shot(tab, "console-audit-event.png")
	})

	step("review an access request with the security key", func() {
		tab.Navigate(origin + "/web/requests")
		tab.WaitFor(`document.querySelector('form[action$="/review"]')`, 30*time.Second)
		if text := tab.Text(); !strings.Contains(text, "migration 42") || !strings.Contains(text, "Your role requires an MFA check for each review") {
			t.Fatalf("requests page:\n%s", text)
		}
		tab.Run(`const f = document.querySelector('form[action$="/review"]');
			f.querySelector('input[name=reason]').value = 'ok for the migration';
			f.querySelector('input[name=otp]').value = '';
			f.querySelector('button[value=approve]').click();`)
		tab.WaitFor(`document.body.innerText.includes('Approved request')`, 30*time.Second)
		reviewed := findEvent(e.events(audit.EventRequestReviewed, "erin"), func(ev *audit.Event) bool { return ev.Success })
		if reviewed == nil || reviewed.Identity.GetMfaDevice() == "" {
			t.Fatalf("request.reviewed event = %v", reviewed)
		}
	})

	step("request access", func() {
		tab.Navigate(origin + "/web/requests")
		tab.WaitFor(`document.querySelector('input[name=roles]')`, 30*time.Second)
		tab.Run(`document.querySelector('input[name=roles]').value = 'pg-write';
			document.querySelector('input[name=reason]').value = 'fix the items table';
			document.querySelector('form[action="/web/requests"]').submit();`)
		tab.WaitFor(`document.body.innerText.includes('Requested pg-write')`, 30*time.Second)
		if text := tab.Text(); !strings.Contains(text, "fix the items table") || !strings.Contains(text, "pending") {
			t.Fatalf("requests page:\n%s", text)
		}
		shot(tab, "console-requests.png")
	})

	step("phone width", func() {
		tab.SetViewport(390, 844, true)
		tab.Navigate(origin + "/web/resources")
		tab.WaitFor(`document.body.innerText.includes('pg1')`, 30*time.Second)
		wide, err := tab.Eval(`document.documentElement.scrollWidth > window.innerWidth + 1`)
		if err != nil || wide != "false" {
			t.Errorf("the resources page scrolls sideways on a phone (%v)", err)
		}
		shot(tab, "console-resources-phone.png")
		tab.Navigate(origin + "/web/audit?type=mfa.verified")
		tab.WaitFor(`document.querySelector('table.events')`, 30*time.Second)
		shot(tab, "console-audit-phone.png")
	})
}
