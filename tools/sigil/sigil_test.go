package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigilhq/sigil/api/client"
)

func TestRenderStatus(t *testing.T) {
	until := time.Date(2026, 11, 23, 16, 40, 0, 0, time.UTC)
	v := statusView{
		Profile: "127.0.0.1:3443", User: "alice", Kind: "human", Roles: []string{"dev"},
		Traits:     map[string][]string{"logins": {"alice", "root"}},
		ValidUntil: until,
	}
	got := renderStatus(v, until.Add(-(7*time.Hour + 59*time.Minute + 30*time.Second)))
	want := `> Profile: 127.0.0.1:3443
  User: alice
  Kind: human
  Roles: dev
  Traits: logins=alice,root
  Valid until: 2026-11-23 16:40:00 +0000 UTC [valid for 7h59m]
`
	if got != want {
		t.Fatalf("got:\n%s\nwant:\n%s", got, want)
	}
	v.Expired = true
	v.Roles, v.Traits = nil, map[string][]string{"b": {"2"}, "a": {"1"}}
	got = renderStatus(v, until.Add(time.Hour))
	for _, s := range []string{"Roles: (none)", "Traits: a=1 b=2", "[EXPIRED]"} {
		if !strings.Contains(got, s) {
			t.Errorf("missing %q in:\n%s", s, got)
		}
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		30 * time.Second:              "<1m",
		12*time.Minute + time.Second:  "12m",
		8 * time.Hour:                 "8h0m",
		25*time.Hour + 61*time.Second: "25h1m",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestReadPasswordStdin(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "pw\n", want: "pw"},
		{in: "pw", want: "pw"},
		{in: "pw\r\n", want: "pw"},
		{in: "pw\n\n", want: "pw\n"},
		{in: " pw \n", want: " pw "},
		{in: "\n", err: "stdin is empty"},
		{in: strings.Repeat("x", maxSecretSize+1), err: "longer than"},
	} {
		got, err := readPasswordStdin(strings.NewReader(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: want error %q, got %v", tc.in, tc.err, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: got %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestParseSignupArg(t *testing.T) {
	for _, tc := range []struct{ in, token, proxy, err string }{
		{in: "abc123", token: "abc123"},
		{in: "https://127.0.0.1:3443/web/signup/abc123", token: "abc123", proxy: "127.0.0.1:3443"},
		{in: "https://sigil.example.com/web/signup/abc", token: "abc", proxy: "sigil.example.com:443"},
		{in: "http://127.0.0.1:3443/web/signup/abc", err: "invalid signup link"},
		{in: "https://127.0.0.1:3443/web/other/abc", err: "invalid signup link"},
		{in: "https://127.0.0.1:3443/web/signup/", err: "invalid signup link"},
		{in: "a/b", err: "invalid signup token"},
	} {
		token, proxy, err := parseSignupArg(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: want error %q, got %v", tc.in, tc.err, err)
			}
			continue
		}
		if err != nil || token != tc.token || proxy != tc.proxy {
			t.Errorf("%q: got %q %q %v", tc.in, token, proxy, err)
		}
	}
}

func TestFlagErrors(t *testing.T) {
	t.Setenv("SIGIL_HOME", t.TempDir())
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"login", "--user", "alice"}, "ERROR: missing --proxy HOST:PORT"},
		{[]string{"login", "--proxy", "nohost", "--user", "alice"}, `ERROR: --proxy "nohost" is not HOST:PORT`},
		{[]string{"login", "--proxy", "h:1", "--auth", "github", "--browser", "firefox"}, `ERROR: --browser "firefox": the only value is none`},
		{[]string{"login", "--proxy", "h:1", "--auth", ""}, `ERROR: --auth: use local (password) or the name of an SSO connector`},
		{[]string{"login", "--proxy", "h:1", "--user", "alice", "--ttl", "5s"}, "ERROR: --ttl 5s is too short"},
		{[]string{"login", "--nope"}, `ERROR: unknown flag: --nope (see "sigil login --help")`},
		{[]string{"signup"}, "ERROR: accepts 1 arg(s), received 0"},
		{[]string{"signup", "tok"}, "ERROR: missing --proxy HOST:PORT"},
		{[]string{"status"}, `ERROR: not logged in; run "sigil login --proxy HOST:PORT"`},
		{[]string{"login", "--proxy", "127.0.0.1:3443", "--user", "alice", "--ca-file", "/does/not/exist"}, "ERROR: cannot read --ca-file"},
	} {
		r := runWith(t, nil, "", tc.args...)
		if r.code != 1 || !strings.HasPrefix(r.stderr, tc.want) {
			t.Errorf("%v: code %d stderr %q; want prefix %q", tc.args, r.code, r.stderr, tc.want)
		}
		if strings.Contains(r.stderr, "goroutine") || strings.Contains(r.stderr, ".go:") {
			t.Errorf("%v: stack trace leaked: %q", tc.args, r.stderr)
		}
	}
}

func TestLogoutWhenNotLoggedIn(t *testing.T) {
	t.Setenv("SIGIL_HOME", t.TempDir())
	r := runWith(t, nil, "", "logout")
	if r.code != 0 || r.stdout != "Not logged in.\n" {
		t.Fatalf("got %+v", r)
	}
}

func TestLoginTrustFlow(t *testing.T) {
	home := t.TempDir()
	t.Setenv("SIGIL_HOME", home)
	fake := &fakeAuth{tlsCA: newFakeCA(t, "tls-ca"), userCA: newFakeCA(t, "user-ca")}
	addr := startFakeGateway(t, fake)
	fp := client.Fingerprint(fake.tlsCA.cert.Raw)
	login := []string{"login", "--proxy", addr, "--user", "alice", "--password-stdin"}
	knownPath := filepath.Join(home, "known_cas")

	// Unknown CA and no terminal: refuse and explain how to pass the CA.
	r := runWith(t, nil, "s3cret\n", login...)
	t.Logf("stderr: %s", r.stderr)
	if r.code != 1 || !strings.Contains(r.stderr, "The gateway "+addr+" presents CA fingerprint "+fp) ||
		!strings.Contains(r.stderr, "--ca-file") || !strings.Contains(r.stderr, "sigilctl auth export --type tls-ca") {
		t.Fatalf("no-tty: %+v", r)
	}
	// The user says no: refused, nothing pinned.
	tty := &fakeTerminal{lines: []string{"n"}}
	r = runWith(t, tty, "s3cret\n", login...)
	if r.code != 1 || !strings.Contains(r.stderr, "was not trusted") {
		t.Fatalf("answer no: %+v", r)
	}
	if _, err := os.Stat(knownPath); !os.IsNotExist(err) {
		t.Fatalf("known_cas written after a refusal: %v", err)
	}
	if len(tty.prompts) != 1 || tty.prompts[0] != "Trust it? [y/N] " {
		t.Fatalf("prompts = %q", tty.prompts)
	}
	fake.mu.Lock()
	nLogins := len(fake.logins)
	fake.mu.Unlock()
	if nLogins != 0 {
		t.Fatal("the password was sent before the CA was trusted")
	}

	// The user says yes: logged in, CA pinned, status shown.
	r = runWith(t, &fakeTerminal{lines: []string{"y"}}, "s3cret\n", append(login, "--otp", "123456", "--ttl", "2h")...)
	if r.code != 0 {
		t.Fatalf("login: %+v", r)
	}
	for _, s := range []string{"> Profile: " + addr, "User: alice", "Kind: human", "Roles: dev", "Traits: logins=alice,root", "[valid for 1h59m]"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("login output lacks %q:\n%s", s, r.stdout)
		}
	}
	known, _ := os.ReadFile(knownPath)
	if string(known) != addr+" "+fp+"\n" {
		t.Fatalf("known_cas = %q", known)
	}
	fake.mu.Lock()
	last := fake.logins[len(fake.logins)-1]
	fake.mu.Unlock()
	if last.GetOtp() != "123456" || last.GetTtlSeconds() != 7200 || last.GetPassword() != "s3cret" {
		t.Fatalf("login request = %v", last)
	}
	dir := client.ProfileDir(home, addr)
	st, err := os.Stat(filepath.Join(dir, client.KeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st, err)
	}
	// The saved identity really works against the gateway CA.
	p, err := client.CurrentProfile(home)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Identity.TLSConfig(); err != nil {
		t.Fatal(err)
	}

	// Known CA: no question asked, even without a terminal.
	r = runWith(t, nil, "s3cret", login...)
	if r.code != 0 || strings.Contains(r.stderr, "presents CA fingerprint") {
		t.Fatalf("second login: %+v", r)
	}

	// Wrong password: the server's message, no trace.
	r = runWith(t, nil, "wrong\n", login...)
	if r.code != 1 || r.stderr != "ERROR: invalid user or password\n" {
		t.Fatalf("wrong password: %+v", r)
	}

	// status in JSON.
	r = runWith(t, nil, "", "status", "--format", "json")
	var v statusView
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &v) != nil || v.User != "alice" || v.Expired || v.Profile != addr {
		t.Fatalf("status json: %+v", r)
	}
	r = runWith(t, nil, "", "status", "--format", "yaml")
	if r.code != 0 || !strings.Contains(r.stdout, "user: alice") {
		t.Fatalf("status yaml: %+v", r)
	}
	r = runWith(t, nil, "", "status", "--format", "xml")
	if r.code != 1 || !strings.Contains(r.stderr, `unknown --format "xml"`) {
		t.Fatalf("status xml: %+v", r)
	}

	// A changed CA is refused loudly.
	other := client.Fingerprint([]byte("another CA"))
	if err := client.NewKnownCAs(home).Add(addr, other); err != nil {
		t.Fatal(err)
	}
	r = runWith(t, &fakeTerminal{lines: []string{"y"}}, "s3cret\n", login...)
	t.Logf("stderr: %s", r.stderr)
	if r.code != 1 || !strings.Contains(r.stderr, "WARNING: the CA of "+addr+" has CHANGED") ||
		!strings.Contains(r.stderr, "remove the line from "+knownPath) {
		t.Fatalf("changed CA: %+v", r)
	}

	// logout removes the keys.
	r = runWith(t, nil, "", "logout")
	if r.code != 0 || r.stdout != "Logged out of "+addr+".\n" {
		t.Fatalf("logout: %+v", r)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("profile dir survives logout: %v", err)
	}
	r = runWith(t, nil, "", "status")
	if r.code != 1 || !strings.Contains(r.stderr, "not logged in") {
		t.Fatalf("status after logout: %+v", r)
	}
}

func TestLoginWithCAFileAndFingerprint(t *testing.T) {
	home := t.TempDir()
	t.Setenv("SIGIL_HOME", home)
	fake := &fakeAuth{tlsCA: newFakeCA(t, "tls-ca"), userCA: newFakeCA(t, "user-ca")}
	addr := startFakeGateway(t, fake)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, fake.tlsCA.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	r := runWith(t, nil, "s3cret\n", "login", "--proxy", addr, "--user", "alice", "--password-stdin", "--ca-file", caFile)
	if r.code != 0 {
		t.Fatalf("ca-file login: %+v", r)
	}
	if fp, ok, _ := client.NewKnownCAs(home).Lookup(addr); !ok || fp != client.Fingerprint(fake.tlsCA.cert.Raw) {
		t.Fatalf("ca-file not pinned: %q %v", fp, ok)
	}

	// A CA file that did not sign the gateway cert: the TLS handshake fails.
	wrong := filepath.Join(t.TempDir(), "wrong.pem")
	if err := os.WriteFile(wrong, newFakeCA(t, "other").pem, 0o644); err != nil {
		t.Fatal(err)
	}
	r = runWith(t, nil, "s3cret\n", "login", "--proxy", addr, "--user", "alice", "--password-stdin", "--ca-file", wrong)
	t.Logf("stderr: %s", r.stderr)
	if r.code != 1 || !strings.Contains(r.stderr, "presented a certificate the trusted CA did not sign") {
		t.Fatalf("wrong ca-file: %+v", r)
	}

	// --ca-fingerprint on a fresh home: wrong one refused, right one (any case) accepted.
	t.Setenv("SIGIL_HOME", t.TempDir())
	r = runWith(t, nil, "s3cret\n", "login", "--proxy", addr, "--user", "alice", "--password-stdin", "--ca-fingerprint", client.Fingerprint([]byte("x")))
	if r.code != 1 || !strings.Contains(r.stderr, "not the expected") {
		t.Fatalf("wrong fingerprint: %+v", r)
	}
	right := strings.ToLower(client.Fingerprint(fake.tlsCA.cert.Raw))
	r = runWith(t, nil, "s3cret\n", "login", "--proxy", addr, "--user", "alice", "--password-stdin", "--ca-fingerprint", right)
	if r.code != 0 {
		t.Fatalf("right fingerprint: %+v", r)
	}
}

func TestSignup(t *testing.T) {
	t.Setenv("SIGIL_HOME", t.TempDir())
	fake := &fakeAuth{tlsCA: newFakeCA(t, "tls-ca"), userCA: newFakeCA(t, "user-ca")}
	addr := startFakeGateway(t, fake)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, fake.tlsCA.pem, 0o644); err != nil {
		t.Fatal(err)
	}

	r := runWith(t, nil, "pw1\n", "signup", "https://"+addr+"/web/signup/tok123", "--ca-file", caFile, "--password-stdin")
	want := `Signed up as "alice". Next: sigil login --proxy ` + addr + " --user alice\n"
	if r.code != 0 || r.stdout != want {
		t.Fatalf("signup: %+v", r)
	}
	if got := fake.signup[0]; got.GetToken() != "tok123" || got.GetPassword() != "pw1" {
		t.Fatalf("signup request = %v", got)
	}

	// Typed twice on the terminal; a mismatch sends nothing.
	tty := &fakeTerminal{passwords: []string{"a", "b"}}
	r = runWith(t, tty, "", "signup", "tok123", "--proxy", addr, "--ca-file", caFile)
	if r.code != 1 || !strings.Contains(r.stderr, "passwords do not match") || len(fake.signup) != 1 {
		t.Fatalf("mismatch: %+v (requests %d)", r, len(fake.signup))
	}
	tty = &fakeTerminal{passwords: []string{"pw2", "pw2"}}
	r = runWith(t, tty, "", "signup", "tok123", "--proxy", addr, "--ca-file", caFile)
	if r.code != 0 || fake.signup[1].GetPassword() != "pw2" {
		t.Fatalf("typed: %+v", r)
	}

	r = runWith(t, nil, "pw\n", "signup", "bad", "--proxy", addr, "--ca-file", caFile, "--password-stdin")
	if r.code != 1 || r.stderr != "ERROR: signup link is invalid or expired; ask an admin for a new one\n" {
		t.Fatalf("bad token: %+v", r)
	}
}

func TestUnreachableGateway(t *testing.T) {
	t.Setenv("SIGIL_HOME", t.TempDir())
	r := runWith(t, nil, "pw\n", "login", "--proxy", "127.0.0.1:1", "--user", "alice", "--password-stdin", "--timeout", "2s")
	t.Logf("stderr: %s", r.stderr)
	if r.code != 1 || !strings.HasPrefix(r.stderr, "ERROR: cannot reach the gateway at 127.0.0.1:1") {
		t.Fatalf("got %+v", r)
	}
}

func TestRunEntryPoint(t *testing.T) {
	t.Setenv("SIGIL_HOME", t.TempDir())
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, strings.NewReader(""), &out, &errb); code != 0 {
		t.Fatalf("--help exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "sigil login --proxy") {
		t.Fatalf("help lacks an example:\n%s", out.String())
	}
}
