package integration

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"html"
	"io"
	"math/big"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"github.com/pquerna/otp/totp"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/integration/testenv"
)

// mfaRole requires an MFA check for every session of its db user.
const mfaRole = `kind: role
version: v1
metadata: {name: pg-mfa}
spec:
  options: {require_session_mfa: true}
  allow:
    databases:
      labels: {env: [dev]}
      db_users: [writer]
      db_names: [app]
      statements: write
`

var (
	csrfRe        = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	mfaURLRe      = regexp.MustCompile(`https://localhost:\d+/web/mfa/[0-9a-f]{64}`)
	secretRe      = regexp.MustCompile(`Secret \(to type in by hand\): ([A-Z2-7]+)`)
	dataAttrRe    = regexp.MustCompile(`data-(options|verify|csrf)="([^"]*)"`)
	tunnelAddrRe  = regexp.MustCompile(`listening on (127\.0\.0\.1:\d+)`)
	consoleOrigin = func(d *testenv.Daemon) string {
		return "https://localhost:" + d.Addr[strings.LastIndex(d.Addr, ":")+1:]
	}
)

// consoleSignIn signs user in to the console over HTTP and returns the
// browser with its session cookie.
func consoleSignIn(t *testing.T, e *pgEnv, user string) *testenv.Browser {
	t.Helper()
	caPEM, err := os.ReadFile(e.ca)
	if err != nil {
		t.Fatal(err)
	}
	b := testenv.NewBrowser(t, caPEM)
	page := b.Get(consoleOrigin(e.d) + "/web/login")
	page = b.Submit(page, map[string]string{"user": user, "password": alicePassword})
	if page.Status != http.StatusOK || page.URL.Path != "/web/resources" {
		t.Fatalf("signing in to the console ended at %s (%d):\n%s", page.URL, page.Status, page.Body)
	}
	return b
}

func pageCSRF(t *testing.T, body string) string {
	t.Helper()
	m := csrfRe.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token on the page:\n%s", body)
	}
	return html.UnescapeString(m[1])
}

// postJSON posts body as console.js does and decodes the answer.
func postJSON(t *testing.T, b *testenv.Browser, url, csrf string, body any) (int, map[string]string) {
	t.Helper()
	data, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("X-CSRF-Token", csrf)
	resp, err := b.Client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	out := map[string]string{}
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("POST %s: %d, not JSON: %s", url, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

// registerKey registers a virtual security key named name over HTTP, as
// the devices page's script does.
func registerKey(t *testing.T, e *pgEnv, b *testenv.Browser, key *testenv.VirtualKey, name, proofCode string) {
	t.Helper()
	devices := b.Get(consoleOrigin(e.d) + "/web/devices")
	csrf := pageCSRF(t, devices.Body)
	status, begun := postJSON(t, b, consoleOrigin(e.d)+"/web/devices/webauthn/begin", csrf, map[string]string{"name": name, "proof_code": proofCode})
	if status != http.StatusOK {
		t.Fatalf("beginning the registration: %d %v", status, begun)
	}
	status, fin := postJSON(t, b, consoleOrigin(e.d)+"/web/devices/webauthn/finish", csrf, map[string]any{
		"registration_id": begun["registration_id"], "response": json.RawMessage(key.Register(t, begun["options"])),
	})
	if status != http.StatusOK || fin["name"] != name {
		t.Fatalf("finishing the registration: %d %v", status, fin)
	}
}

// approval is a security key's answer to an approval page, ready to post.
type approval struct {
	verifyURL, csrf, response string
}

// prepareApproval opens an approval page (as the CLI's link does) and
// answers its WebAuthn request with key (with counter, when not zero).
func prepareApproval(t *testing.T, b *testenv.Browser, key *testenv.VirtualKey, pageURL string, counter uint32) approval {
	t.Helper()
	page := b.Get(pageURL)
	attrs := map[string]string{}
	for _, m := range dataAttrRe.FindAllStringSubmatch(page.Body, -1) {
		attrs[m[1]] = html.UnescapeString(m[2])
	}
	if attrs["options"] == "" || attrs["verify"] == "" {
		t.Fatalf("the approval page %s has no WebAuthn request (%d):\n%s", pageURL, page.Status, page.Body)
	}
	resp := key.Assert(t, attrs["options"])
	if counter > 0 {
		resp = key.AssertWithCounter(t, attrs["options"], counter)
	}
	return approval{verifyURL: page.URL.Scheme + "://" + page.URL.Host + attrs["verify"], csrf: attrs["csrf"], response: resp}
}

func (a approval) post(t *testing.T, b *testenv.Browser) (int, map[string]string) {
	t.Helper()
	return postJSON(t, b, a.verifyURL, a.csrf, json.RawMessage(a.response))
}

// approve answers an approval page with key and returns the verify call's
// status and answer.
func approve(t *testing.T, b *testenv.Browser, key *testenv.VirtualKey, pageURL string, counter uint32) (int, map[string]string) {
	t.Helper()
	return prepareApproval(t, b, key, pageURL, counter).post(t, b)
}

// waitFor polls a background CLI's output for re and returns the match.
func waitFor(t *testing.T, p *testenv.Process, re *regexp.Regexp, stderr bool) []string {
	t.Helper()
	var m []string
	testenv.Eventually(t, 30*time.Second, func() error {
		out := p.Stdout()
		if stderr {
			out = p.Stderr()
		}
		if m = re.FindStringSubmatch(out); m == nil {
			return fmt.Errorf("waiting for %s in the output of the CLI:\nstdout:\n%s\nstderr:\n%s", re, p.Stdout(), p.Stderr())
		}
		return nil
	})
	return m
}

func TestSessionMFAPostgres(t *testing.T) {
	e := startPgEnv(t)
	e.createYAML(mfaRole)
	home := e.addUser("dave", "pg-mfa")
	env := []string{"SIGIL_HOME=" + home}
	origin := consoleOrigin(e.d)
	key := testenv.NewVirtualKey(t, origin)
	dbConnect := func(extra ...string) testenv.Result {
		args := append([]string{"db", "connect", "pg1", "--db-user", "writer", "--db-name", "app"}, extra...)
		return testenv.Run(t, env, "", "sigil", args...)
	}

	t.Run("refused without an MFA check", func(t *testing.T) {
		c := e.dbCert(home, "writer", 0)
		e.refusedWho(t, c, "writer", `role "pg-mfa" requires a per-session MFA check (require_session_mfa) and this certificate carries none; run "sigil db connect pg1"`)
		r := dbConnect("--", "-c", "select 1")
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, `user "dave" has no MFA device`) || !strings.Contains(r.Stderr, "sigil mfa add") {
			t.Fatalf("db connect without a device: exit %d\n%s", r.ExitCode, r.Stderr)
		}
	})

	var b *testenv.Browser
	t.Run("register a security key over HTTP", func(t *testing.T) {
		b = consoleSignIn(t, e, "dave")
		registerKey(t, e, b, key, "yubikey", "")
		page := b.Get(origin + "/web/devices")
		if !strings.Contains(page.Body, "<strong>yubikey</strong>") || !strings.Contains(page.Body, "Security key") {
			t.Fatalf("devices page:\n%s", page.Body)
		}
		ev := findEvent(e.events(audit.EventResourceChanged, "dave"), func(ev *audit.Event) bool {
			return ev.Resource.GetKind() == "mfa_device" && ev.Resource.GetName() == "yubikey" && ev.Details["action"] == "added"
		})
		if ev == nil {
			t.Fatal("no resource.changed event for the added key")
		}
	})

	var secret string
	t.Run("adding a TOTP app with the CLI needs the key", func(t *testing.T) {
		cli := testenv.StartInteractive(t, env, "sigil", "mfa", "add", "--type", "totp", "--name", "phone")
		var url string
		testenv.Eventually(t, 30*time.Second, func() error {
			if url = mfaURLRe.FindString(cli.Stderr()); url == "" {
				return fmt.Errorf("no approval link yet:\n%s\n%s", cli.Stdout(), cli.Stderr())
			}
			return nil
		})
		if status, out := approve(t, testenv.NewBrowser(t, e.readCA()), key, url, 0); status != http.StatusOK || out["device"] != "yubikey" {
			t.Fatalf("approving the new device: %d %v", status, out)
		}
		testenv.Eventually(t, 30*time.Second, func() error {
			m := secretRe.FindStringSubmatch(cli.Stdout())
			if m == nil {
				return fmt.Errorf("no TOTP secret yet:\n%s\n%s", cli.Stdout(), cli.Stderr())
			}
			secret = m[1]
			return nil
		})
		if !strings.Contains(cli.Stdout(), "otpauth://totp/") {
			t.Errorf("no otpauth link:\n%s", cli.Stdout())
		}
		code, err := totp.GenerateCode(secret, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintln(cli.Stdin, code)
		if err := cli.Wait(30 * time.Second); err != nil || !strings.Contains(cli.Stdout(), `Added TOTP device "phone".`) {
			t.Fatalf("sigil mfa add: %v\n%s\n%s", err, cli.Stdout(), cli.Stderr())
		}
		ls := testenv.Run(t, env, "", "sigil", "mfa", "ls", "--format", "json")
		var devs []struct{ Name, Type string }
		if err := json.Unmarshal([]byte(ls.Stdout), &devs); err != nil || len(devs) != 2 || devs[0].Name != "phone" || devs[0].Type != "totp" || devs[1].Name != "yubikey" || devs[1].Type != "webauthn" {
			t.Fatalf("sigil mfa ls: %v\n%s", err, ls.Stdout)
		}
	})

	// The code that proved the app is spent; the next step is accepted
	// already (one step of clock skew either way).
	code, err := totp.GenerateCode(secret, time.Now().Add(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("db connect with a one-time code", func(t *testing.T) {
		r := dbConnect("--otp", code, "--", "-X", "-q", "-A", "-t", "-c", "insert into items values (100, 'mfa') returning name")
		if r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "mfa" {
			t.Fatalf("db connect: exit %d\nstdout: %s\nstderr: %s\nsigild:\n%s", r.ExitCode, r.Stdout, r.Stderr, e.d.Stderr())
		}
		if !strings.Contains(r.Stderr, `MFA check passed with "phone"`) {
			t.Errorf("stderr: %s", r.Stderr)
		}
		v := findEvent(e.events(audit.EventMFAVerified, "dave"), func(ev *audit.Event) bool {
			return ev.Success && ev.Identity.GetMfaDevice() == "phone"
		})
		if v == nil || v.Resource.GetName() != "pg1" || v.Resource.GetDbUser() != "writer" || v.Details["device_type"] != "totp" || v.Identity.GetCertSerial() == "" {
			t.Fatalf("mfa.verified event = %v", v)
		}
		start := findEvent(e.events(audit.EventDBSessionStart, "dave"), func(ev *audit.Event) bool {
			return ev.Identity.GetMfaDevice() == "phone"
		})
		if start == nil || start.Identity.GetCertSerial() != v.Identity.GetCertSerial() {
			t.Fatalf("no db.session.start with MFA device phone from the MFA certificate (%v)", start)
		}
		q := findEvent(e.events(audit.EventDBQuery, "dave"), func(ev *audit.Event) bool { return ev.SessionId == start.SessionId })
		if q == nil || q.Identity.GetMfaDevice() != "phone" || q.Classification != "write" {
			t.Fatalf("db.query event = %v", q)
		}
	})

	t.Run("a one-time code works once", func(t *testing.T) {
		r := dbConnect("--otp", code, "--", "-c", "select 1")
		if r.ExitCode == 0 || !strings.Contains(r.Stderr, "already used") {
			t.Fatalf("replayed code: exit %d\n%s", r.ExitCode, r.Stderr)
		}
	})

	t.Run("security key approval of a waiting db connect", func(t *testing.T) {
		p := testenv.StartCLI(t, env, "sigil", "db", "connect", "pg1", "--db-user", "writer", "--db-name", "app", "--", "-X", "-A", "-t", "-c", "select 'key-ok'")
		url := waitFor(t, p, mfaURLRe, true)[0]
		// A cloned key (its counter behind) is refused; the challenge
		// still waits for the real one.
		anon := testenv.NewBrowser(t, e.readCA())
		if status, out := approve(t, anon, key, url, 1); status != http.StatusForbidden || !strings.Contains(out["error"], "counter went back") {
			t.Fatalf("cloned key: %d %v", status, out)
		}
		ok := prepareApproval(t, anon, key, url, 0)
		if status, out := ok.post(t, anon); status != http.StatusOK || out["device"] != "yubikey" {
			t.Fatalf("approving: %d %v", status, out)
		}
		// The same answer again is a replay.
		if status, out := ok.post(t, anon); status != http.StatusForbidden || !strings.Contains(out["error"], "already approved") {
			t.Fatalf("replayed approval: %d %v", status, out)
		}
		if page := anon.Get(url); !strings.Contains(page.Body, "approved already") {
			t.Errorf("approval page after approval:\n%s", page.Body)
		}
		r := p.Wait(60 * time.Second)
		if r.ExitCode != 0 || strings.TrimSpace(r.Stdout) != "key-ok" {
			t.Fatalf("db connect: exit %d\nstdout: %s\nstderr: %s", r.ExitCode, r.Stdout, r.Stderr)
		}
		if findEvent(e.events(audit.EventDBSessionStart, "dave"), func(ev *audit.Event) bool { return ev.Identity.GetMfaDevice() == "yubikey" }) == nil {
			t.Fatal("no db.session.start with MFA device yubikey")
		}
	})

	t.Run("challenges are bound to user, target and client", func(t *testing.T) {
		ctx := context.Background()
		prof, err := client.CurrentProfile(home)
		if err != nil {
			t.Fatal(err)
		}
		clt, err := client.NewFromIdentity(prof.Identity, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer clt.Close()
		pubA, pubB := newPub(t), newPub(t)
		ch, err := clt.MFA.CreateMFAChallenge(ctx, connect.NewRequest(&sigilv1.CreateMFAChallengeRequest{
			Target: &sigilv1.MFATarget{Kind: "db", Database: "pg1", DbUser: "writer", DbName: "app"}, TlsPublicKey: pubA,
		}))
		if err != nil {
			t.Fatal(err)
		}
		complete := func(pub []byte, dbUser string) error {
			_, err := clt.MFA.CompleteDatabaseMFA(ctx, connect.NewRequest(&sigilv1.CompleteDatabaseMFARequest{
				ChallengeId: ch.Msg.ChallengeId, Database: "pg1", DbUser: dbUser, DbName: "app", TlsPublicKey: pub,
			}))
			return err
		}
		if err := complete(pubB, "writer"); err == nil || !strings.Contains(err.Error(), "created by another client") {
			t.Fatalf("another client's key: %v", err)
		}
		if err := complete(pubA, "reader"); err == nil || !strings.Contains(err.Error(), "created for database pg1 as db user writer") {
			t.Fatalf("another target: %v", err)
		}
		// Another user cannot redeem it.
		other := e.addUser("frank", "pg-mfa")
		oprof, err := client.CurrentProfile(other)
		if err != nil {
			t.Fatal(err)
		}
		oclt, err := client.NewFromIdentity(oprof.Identity, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer oclt.Close()
		_, err = oclt.MFA.CompleteDatabaseMFA(ctx, connect.NewRequest(&sigilv1.CompleteDatabaseMFARequest{
			ChallengeId: ch.Msg.ChallengeId, Database: "pg1", DbUser: "writer", DbName: "app", TlsPublicKey: pubA,
		}))
		if err == nil || !strings.Contains(err.Error(), "belongs to another user") {
			t.Fatalf("another user: %v", err)
		}
		// Still pending for its own client: nothing was spent.
		resp, err := clt.MFA.CompleteDatabaseMFA(ctx, connect.NewRequest(&sigilv1.CompleteDatabaseMFARequest{
			ChallengeId: ch.Msg.ChallengeId, Database: "pg1", DbUser: "writer", DbName: "app", TlsPublicKey: pubA,
		}))
		if err != nil || !resp.Msg.Pending {
			t.Fatalf("own client: %v pending=%v", err, resp.Msg.GetPending())
		}
		if f := findEvent(e.events(audit.EventMFAVerified, "frank"), func(ev *audit.Event) bool { return !ev.Success }); f == nil || !strings.Contains(f.Error, "another user") {
			t.Fatalf("refused mfa.verified event = %v", f)
		}
	})

	t.Run("an MFA claim from a foreign CA is refused", func(t *testing.T) {
		cert := foreignMFACert(t, e.readCA())
		e.refusedWho(t, cert, "writer", `certificate "dave" was not issued by a trusted Sigil CA`)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// And the API refuses it at the TLS layer (not signed by the user CA).
		id := &client.Identity{Proxy: e.d.Addr, CertPEM: []byte(readFile(t, cert.cert)), KeyPEM: []byte(readFile(t, cert.key)), TLSCAPEM: e.readCA()}
		clt, err := client.NewFromIdentity(id, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer clt.Close()
		if _, err := clt.MFA.ListMFADevices(ctx, connect.NewRequest(&sigilv1.ListMFADevicesRequest{})); err == nil {
			t.Fatal("the API accepted a certificate from a foreign CA")
		}
	})

	t.Run("the tunnel keeps the MFA certificate for new connections", func(t *testing.T) {
		p := testenv.StartCLI(t, env, "sigil", "proxy", "db", "pg1", "--tunnel", "--db-user", "writer", "--db-name", "app")
		url := waitFor(t, p, mfaURLRe, true)[0]
		if status, out := approve(t, testenv.NewBrowser(t, e.readCA()), key, url, 0); status != http.StatusOK {
			t.Fatalf("approving the tunnel: %d %v", status, out)
		}
		addr := waitFor(t, p, tunnelAddrRe, false)[1]
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for i := range 2 {
			conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://writer@%s/app?sslmode=disable", addr))
			if err != nil {
				t.Fatalf("connection %d through the tunnel: %v\n%s", i, err, p.Stderr())
			}
			var n int
			if err := conn.QueryRow(ctx, "select count(*) from items").Scan(&n); err != nil {
				t.Fatalf("query %d through the tunnel: %v", i, err)
			}
			conn.Close(ctx)
		}
		if n := strings.Count(p.Stderr(), "Touch your security key"); n != 1 {
			t.Errorf("the tunnel asked %d times for a key within its minute:\n%s", n, p.Stderr())
		}
	})
}

func newPub(t *testing.T) []byte {
	t.Helper()
	key, err := client.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := client.MarshalPublicKeyDER(key)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// foreignMFACert is a certificate routed to pg1 as writer that claims an
// MFA check, signed by a CA Sigil never heard of (the class of
// CVE-2025-49825: trusting an MFA claim without checking who signed it).
func foreignMFACert(t *testing.T, gatewayCA []byte) dbCert {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sigil user CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := client.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	id := &certid.Identity{
		Name: "dave", Kind: certid.KindHuman, Roles: []string{"pg-mfa"}, MFADevice: "yubikey",
		Route: certid.Route{ResourceKind: "database", ResourceName: "pg1", DBUser: "writer", DBName: "app"},
	}
	if err := id.ApplyTo(tmpl); err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := client.MarshalPrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// The gateway's CA for verify-full, as a real client would have.
	return writeCertFiles(t, certPEM, keyPEM, gatewayCA)
}
