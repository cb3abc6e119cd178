package integration

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sigilhq/sigil/integration/testenv"
)

const alicePassword = "correct horse battery staple"

// TestFoundationFlow runs the README's flow with the real binaries: start
// sigild, add a user, sign up, log in, status, lock, see login fail,
// restart and keep the same CAs.
func TestFoundationFlow(t *testing.T) {
	d := testenv.StartDaemon(t, "")
	home := t.TempDir()
	env := []string{"SIGIL_HOME=" + home}
	ctl := func(args ...string) testenv.Result {
		return testenv.Run(t, env, "", "sigilctl", append([]string{"--data-dir", d.DataDir}, args...)...)
	}
	sigil := func(input string, args ...string) testenv.Result {
		return testenv.Run(t, env, input, "sigil", args...)
	}
	mustOK := func(r testenv.Result, what string) testenv.Result {
		t.Helper()
		if r.ExitCode != 0 {
			t.Fatalf("%s failed (exit %d):\nstdout: %s\nstderr: %s\nsigild log:\n%s", what, r.ExitCode, r.Stdout, r.Stderr, d.Stderr())
		}
		return r
	}

	// First start: CAs created, first-admin link printed.
	out := d.Stdout()
	for _, ca := range []string{"tls", "user", "db", "ssh_user", "ssh_host"} {
		if !strings.Contains(out, "Created the "+ca+" CA") {
			t.Errorf("first start did not report creating the %s CA:\n%s", ca, out)
		}
	}
	if !regexp.MustCompile(`https://127\.0\.0\.1:\d+/web/signup/[0-9a-f]{64}`).MatchString(out) {
		t.Errorf("first start printed no first-admin signup link:\n%s", out)
	}
	fingerprint := regexp.MustCompile(`Gateway CA fingerprint: (\S+)`).FindStringSubmatch(out)
	if fingerprint == nil {
		t.Fatalf("no CA fingerprint printed:\n%s", out)
	}

	// The CA sealing key is outside storage, 0600.
	st, err := os.Stat(filepath.Join(d.DataDir, "keys", "ca-seal.key"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("seal key mode = %v, want 0600", st.Mode().Perm())
	}

	caFile := filepath.Join(t.TempDir(), "ca.pem")
	ca := mustOK(ctl("auth", "export", "--type", "tls-ca"), "auth export")
	if !strings.HasPrefix(ca.Stdout, "-----BEGIN CERTIFICATE-----") {
		t.Fatalf("auth export printed no PEM: %q", ca.Stdout)
	}
	if err := os.WriteFile(caFile, []byte(ca.Stdout), 0o600); err != nil {
		t.Fatal(err)
	}

	// Bad YAML names the field.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("kind: role\nversion: v1\nmetadata: {name: dev}\nspec:\n  allow:\n    databases:\n      statements: wrte\n"), 0o600)
	r := ctl("create", "-f", bad)
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, `spec.allow.databases.statements: "wrte" is not one of read, write, admin`) {
		t.Fatalf("bad role: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}
	good := filepath.Join(t.TempDir(), "dev.yaml")
	os.WriteFile(good, []byte(`kind: role
version: v1
metadata: {name: dev}
spec:
  options: {max_session_ttl: 2h}
  allow:
    databases:
      labels: {env: [staging]}
      db_users: ["{{internal.db_users}}"]
      db_names: ["*"]
      statements: read
    logins: ["{{internal.logins}}"]
`), 0o600)
	mustOK(ctl("create", "-f", good), "create role")
	r = ctl("create", "-f", good)
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "already exists") {
		t.Fatalf("re-creating a role: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}
	mustOK(ctl("create", "-f", good, "--force"), "create --force")
	roles := mustOK(ctl("get", "roles", "--format", "json"), "get roles")
	var list []map[string]any
	if err := json.Unmarshal([]byte(roles.Stdout), &list); err != nil {
		t.Fatalf("get roles --format json: %v\n%s", err, roles.Stdout)
	}
	names := map[string]bool{}
	for _, r := range list {
		names[r["metadata"].(map[string]any)["name"].(string)] = true
	}
	if !names["dev"] || !names["admin"] {
		t.Fatalf("roles = %v, want dev and admin", names)
	}

	// Add alice; the signup link comes back as JSON.
	add := mustOK(ctl("users", "add", "alice", "--roles", "dev", "--traits", "logins=alice,root,db_users=reader", "--format", "json"), "users add")
	var signup struct {
		SignupURL string `json:"signup_url"`
		Token     string `json:"token"`
	}
	if err := json.Unmarshal([]byte(add.Stdout), &signup); err != nil {
		t.Fatalf("users add --format json: %v\n%s", err, add.Stdout)
	}
	if !strings.HasSuffix(signup.SignupURL, "/web/signup/"+signup.Token) {
		t.Fatalf("signup url %q does not end with the token", signup.SignupURL)
	}

	// Unknown user and a too-short password are refused clearly.
	r = sigil("short\n", "signup", signup.Token, "--proxy", d.Addr, "--ca-file", caFile, "--password-stdin")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "at least 12") {
		t.Fatalf("short password: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}
	mustOK(sigil(alicePassword+"\n", "signup", signup.Token, "--proxy", d.Addr, "--ca-file", caFile, "--password-stdin"), "signup")
	r = sigil(alicePassword+"\n", "signup", signup.Token, "--proxy", d.Addr, "--ca-file", caFile, "--password-stdin")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "signup token") {
		t.Fatalf("reusing a signup token: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}

	r = sigil("wrong password!!\n", "login", "--proxy", d.Addr, "--user", "alice", "--ca-file", caFile, "--password-stdin")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "invalid username or password") {
		t.Fatalf("wrong password: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}
	r = sigil(alicePassword+"\n", "login", "--proxy", d.Addr, "--user", "mallory", "--ca-file", caFile, "--password-stdin")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "invalid username or password") {
		t.Fatalf("unknown user: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}
	mustOK(sigil(alicePassword+"\n", "login", "--proxy", d.Addr, "--user", "alice", "--ca-file", caFile, "--password-stdin"), "login")

	status := mustOK(sigil("", "status", "--format", "json"), "status")
	var prof struct {
		User   string              `json:"user"`
		Kind   string              `json:"kind"`
		Roles  []string            `json:"roles"`
		Traits map[string][]string `json:"traits"`
	}
	if err := json.Unmarshal([]byte(status.Stdout), &prof); err != nil {
		t.Fatalf("status --format json: %v\n%s", err, status.Stdout)
	}
	if prof.User != "alice" || prof.Kind != "human" || strings.Join(prof.Roles, ",") != "dev" || strings.Join(prof.Traits["logins"], ",") != "alice,root" {
		t.Fatalf("status = %+v", prof)
	}
	text := mustOK(sigil("", "status"), "status text")
	for _, want := range []string{"alice", "human", "dev", "logins=alice,root"} {
		if !strings.Contains(text.Stdout, want) {
			t.Errorf("status text lacks %q:\n%s", want, text.Stdout)
		}
	}

	// Alice's certificate works for API calls (sigilctl with her profile)...
	asAlice := mustOK(testenv.Run(t, env, "", "sigilctl", "status"), "sigilctl status as alice")
	if !strings.Contains(asAlice.Stdout, "Identity: alice") {
		t.Fatalf("sigilctl status as alice:\n%s", asAlice.Stdout)
	}
	// ...but not for admin verbs her roles lack.
	r = testenv.Run(t, env, "", "sigilctl", "get", "users")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, `"list" on "user" is not allowed by roles dev`) {
		t.Fatalf("alice listing users: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}

	// A connection that is not TLS, and a truncated handshake, are dropped
	// without harming the gateway.
	for _, junk := range [][]byte{[]byte("GET / HTTP/1.0\r\n\r\n"), {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00}} {
		conn, err := net.Dial("tcp", d.Addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(junk)
		conn.Close()
	}

	// Lock alice: her live certificate and the next login fail and say why.
	mustOK(ctl("lock", "--user", "alice", "--message", "laptop stolen"), "lock")
	r = testenv.Run(t, env, "", "sigilctl", "status")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "locked") {
		t.Fatalf("API call while locked: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}
	r = sigil(alicePassword+"\n", "login", "--proxy", d.Addr, "--user", "alice", "--ca-file", caFile, "--password-stdin")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "locked") || !strings.Contains(r.Stderr, "laptop stolen") {
		t.Fatalf("login while locked: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}
	locks := mustOK(ctl("locks", "ls", "--format", "json"), "locks ls")
	var lockList []struct {
		Metadata struct{ Name string }
		Spec     struct{ Target struct{ User string } }
	}
	if err := json.Unmarshal([]byte(locks.Stdout), &lockList); err != nil || len(lockList) != 1 || lockList[0].Spec.Target.User != "alice" {
		t.Fatalf("locks ls: %v\n%s", err, locks.Stdout)
	}
	// Unlock: alice is back.
	mustOK(ctl("unlock", lockList[0].Metadata.Name), "unlock")
	mustOK(sigil(alicePassword+"\n", "login", "--proxy", d.Addr, "--user", "alice", "--ca-file", caFile, "--password-stdin"), "login after unlock")

	// Reset: the old password stops working, a new signup link is issued.
	reset := mustOK(ctl("users", "reset", "alice", "--format", "json"), "users reset")
	if !strings.Contains(reset.Stdout, "/web/signup/") {
		t.Fatalf("users reset: %s", reset.Stdout)
	}
	r = sigil(alicePassword+"\n", "login", "--proxy", d.Addr, "--user", "alice", "--ca-file", caFile, "--password-stdin")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "invalid username or password") {
		t.Fatalf("login after reset: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}

	// The audit log names alice, not a shared account.
	search := mustOK(ctl("audit", "search", "--since", "1h", "--type", "user.login,lock.created", "--format", "json"), "audit search")
	var events []map[string]any
	if err := json.Unmarshal([]byte(search.Stdout), &events); err != nil {
		t.Fatalf("audit search --format json: %v\n%s", err, search.Stdout)
	}
	var okLogin, failedLogin, lockCreated bool
	for _, ev := range events {
		ident, _ := ev["identity"].(map[string]any)
		user, _ := ident["user"].(string)
		switch {
		case ev["type"] == "user.login" && user == "alice" && ev["success"] == true:
			okLogin = true
		case ev["type"] == "user.login" && user == "alice" && ev["success"] != true:
			failedLogin = true
		case ev["type"] == "lock.created":
			lockCreated = true
		}
	}
	if !okLogin || !failedLogin || !lockCreated {
		t.Fatalf("audit: ok login %v, failed login %v, lock %v", okLogin, failedLogin, lockCreated)
	}

	// Alice reads her own events only.
	own := mustOK(testenv.Run(t, env, "", "sigilctl", "audit", "search", "--format", "json"), "audit search as alice")
	var ownEvents []map[string]any
	if err := json.Unmarshal([]byte(own.Stdout), &ownEvents); err != nil || len(ownEvents) == 0 {
		t.Fatalf("alice's own events: %v\n%s", err, own.Stdout)
	}
	for _, ev := range ownEvents {
		if ev["identity"].(map[string]any)["user"] != "alice" {
			t.Fatalf("alice sees someone else's event: %v", ev)
		}
	}
	r = testenv.Run(t, env, "", "sigilctl", "audit", "search", "--user", "admin")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "only read your own") {
		t.Fatalf("alice reading admin's events: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}
	mustOK(ctl("audit", "verify"), "audit verify")

	// Restart on the same data dir: same CAs, no new CA created.
	d.Stop()
	d2 := testenv.StartDaemon(t, d.DataDir)
	if strings.Contains(d2.Stdout(), "Created the") {
		t.Fatalf("restart created CAs again:\n%s", d2.Stdout())
	}
	if !strings.Contains(d2.Stdout(), "Gateway CA fingerprint: "+fingerprint[1]) {
		t.Fatalf("restart changed the CA fingerprint (want %s):\n%s", fingerprint[1], d2.Stdout())
	}
	ca2 := mustOK(testenv.Run(t, env, "", "sigilctl", "--data-dir", d2.DataDir, "auth", "export", "--type", "tls-ca"), "auth export after restart")
	if ca2.Stdout != ca.Stdout {
		t.Fatal("the TLS CA changed across a restart")
	}
}
