package apiserver_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/crypto/ssh"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/identity/authn"
	"github.com/sigilhq/sigil/identity/ca"
	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/apiserver"
	"github.com/sigilhq/sigil/services/users"
)

func parseCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	must(t, err)
	return cert
}

func TestSignupAndLogin(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.admin()
	createRole(t, admin, "short", types.RoleSpec{Options: types.RoleOptions{MaxSessionTTL: types.Duration(time.Hour)}})
	e.addUser(admin, "alice", []string{types.RoleAccess}, map[string]string{"logins": "alice, root", "db_users": "ro"})
	e.addUser(admin, "bob", []string{types.RoleAccess, "short"}, nil)

	resp, _, err := e.login("alice", testPassword, 0)
	must(t, err)
	cert := parseCert(t, resp.TlsCertPem)
	id, err := certid.Verify(cert, nil, e.authority.CertPool(ca.UserCA), e.clock.Now())
	must(t, err)
	if id.Name != "alice" || id.Kind != certid.KindHuman {
		t.Fatalf("identity = %q/%q, want alice/human", id.Name, id.Kind)
	}
	if !slices.Equal(id.Roles, []string{types.RoleAccess}) {
		t.Fatalf("roles = %v", id.Roles)
	}
	if !slices.Equal(id.Traits["logins"], []string{"alice", "root"}) || !slices.Equal(id.Traits["db_users"], []string{"ro"}) {
		t.Fatalf("traits = %v", id.Traits)
	}
	if got := resp.Identity.GetName(); got != "alice" {
		t.Fatalf("response identity name = %q", got)
	}
	if !bytes.Equal(resp.UserCaPem, e.authority.CertPEM(ca.UserCA)) || !bytes.Equal(resp.TlsCaPem, e.authority.CertPEM(ca.TLSCA)) {
		t.Fatal("login response does not carry the cluster CAs")
	}
	if !resp.Expires.AsTime().Equal(cert.NotAfter) {
		t.Fatalf("expires = %v, cert says %v", resp.Expires.AsTime(), cert.NotAfter)
	}
	if ttl := cert.NotAfter.Sub(e.clock.Now()); ttl < apiserver.DefaultCertTTL-time.Minute || ttl > apiserver.DefaultCertTTL {
		t.Fatalf("default TTL = %v, want ~8h", ttl)
	}

	// The new certificate works for authenticated calls.
	c := e.loginClient("alice")
	who, err := c.Auth.WhoAmI(ctx, connect.NewRequest(&sigilv1.WhoAmIRequest{}))
	must(t, err)
	if who.Msg.Identity.GetName() != "alice" || who.Msg.CertSerial == "" {
		t.Fatalf("whoami = %v", who.Msg)
	}

	for _, tc := range []struct {
		name       string
		user       string
		ttlSeconds int64
		want       time.Duration
	}{
		{name: "role max_session_ttl clamps", user: "bob", want: time.Hour},
		{name: "longer request is clamped", user: "bob", ttlSeconds: 3 * 3600, want: time.Hour},
		{name: "shorter request is honoured", user: "bob", ttlSeconds: 600, want: 10 * time.Minute},
		{name: "shorter request without role limit", user: "alice", ttlSeconds: 1800, want: 30 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, _, err := e.login(tc.user, testPassword, tc.ttlSeconds)
			must(t, err)
			cert := parseCert(t, resp.TlsCertPem)
			got := cert.NotAfter.Sub(e.clock.Now())
			if got < tc.want-time.Second || got > tc.want {
				t.Fatalf("cert TTL = %v, want %v", got, tc.want)
			}
		})
	}

	_, _, err = e.login("alice", testPassword, -5)
	requireCode(t, err, connect.CodeInvalidArgument, "ttl must be positive")
}

func TestLoginFailuresLookTheSame(t *testing.T) {
	e := newEnv(t)
	e.addUser(e.admin(), "alice", []string{types.RoleAccess}, nil)

	_, _, err := e.login("alice", "wrong password, long enough", 0)
	requireCode(t, err, connect.CodePermissionDenied)
	wrongMsg := err.(*connect.Error).Message()
	if wrongMsg != "invalid username or password" {
		t.Fatalf("wrong password message = %q", wrongMsg)
	}
	_, _, err = e.login("mallory", testPassword, 0)
	requireCode(t, err, connect.CodePermissionDenied)
	if got := err.(*connect.Error).Message(); got != wrongMsg {
		t.Fatalf("unknown user message %q differs from wrong password message %q", got, wrongMsg)
	}

	failed := map[string]bool{}
	for _, ev := range e.auditEvents() {
		if ev.Type == audit.EventUserLogin && !ev.Success {
			if ev.Error != "invalid username or password" {
				t.Errorf("failed login event error = %q", ev.Error)
			}
			failed[ev.Identity.User] = true
		}
	}
	if !failed["alice"] || !failed["mallory"] {
		t.Fatalf("failed user.login events for %v, want alice and mallory", failed)
	}
	if containsBytes(e.auditRaw(), "wrong password") || containsBytes(e.auditRaw(), testPassword) {
		t.Fatal("a password reached the audit log")
	}
}

func TestLoginRateLimit(t *testing.T) {
	var e *testEnv
	limiter := func() *authn.RateLimiter {
		l, err := authn.NewRateLimiter(authn.RateLimiterConfig{
			PerUser: authn.Limit{Attempts: 3, Per: time.Minute},
			PerAddr: authn.Limit{Attempts: 1000, Per: time.Minute},
			Clock:   func() time.Time { return e.clock.Now() },
		})
		must(t, err)
		return l
	}()
	e = newEnv(t, withLimiter(limiter))
	e.addUser(e.admin(), "alice", []string{types.RoleAccess}, nil)

	for i := 0; i < 3; i++ {
		_, _, err := e.login("alice", "wrong password, long enough", 0)
		requireCode(t, err, connect.CodePermissionDenied, "invalid username or password")
	}
	before := len(e.auditEvents())
	// Even the right password is refused before it is checked.
	_, _, err := e.login("alice", testPassword, 0)
	requireCode(t, err, connect.CodeResourceExhausted, "too many login attempts", `"alice"`)
	evs := e.auditEvents()
	if len(evs) != before+1 {
		t.Fatalf("throttled login wrote %d audit events, want 1", len(evs)-before)
	}
	last := evs[len(evs)-1]
	if last.Type != audit.EventUserLogin || last.Success || !strings.Contains(last.Error, "too many login attempts") {
		t.Fatalf("throttled login event = %+v", last)
	}
	// No certificate was issued.
	for _, ev := range evs {
		if ev.Type == audit.EventCertIssued {
			t.Fatalf("a certificate was issued: %+v", ev)
		}
	}
	// Other users are not affected.
	_, _, err = e.login("bob", testPassword, 0)
	requireCode(t, err, connect.CodePermissionDenied, "invalid username or password")

	// The bucket refills with time.
	e.clock.Advance(time.Minute)
	_, _, err = e.login("alice", testPassword, 0)
	must(t, err)
}

func TestSignupTokenExpires(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp, err := e.admin().Users.AddUser(ctx, connect.NewRequest(&sigilv1.AddUserRequest{Name: "alice", Roles: []string{types.RoleAccess}}))
	must(t, err)
	e.clock.Advance(users.DefaultSignupTTL + time.Second)
	_, err = e.anon().Auth.Signup(ctx, connect.NewRequest(&sigilv1.SignupRequest{Token: resp.Msg.Token, Password: testPassword}))
	requireCode(t, err, connect.CodeNotFound, "signup token expired")

	_, _, err = e.login("alice", testPassword, 0)
	requireCode(t, err, connect.CodePermissionDenied, "invalid username or password")
	pending, err := e.users.PendingSignup(ctx, "alice")
	must(t, err)
	if !pending {
		t.Fatal("alice has credentials after an expired signup")
	}

	_, err = e.anon().Auth.Signup(ctx, connect.NewRequest(&sigilv1.SignupRequest{Token: "not-a-token", Password: testPassword}))
	requireCode(t, err, connect.CodeNotFound, "invalid, already used or expired")
}

func TestSignupPasswordPolicy(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp, err := e.admin().Users.AddUser(ctx, connect.NewRequest(&sigilv1.AddUserRequest{Name: "alice", Roles: []string{types.RoleAccess}}))
	must(t, err)
	anon := e.anon()
	_, err = anon.Auth.Signup(ctx, connect.NewRequest(&sigilv1.SignupRequest{Token: resp.Msg.Token, Password: "short"}))
	requireCode(t, err, connect.CodeInvalidArgument, "password is too short", "at least 12")
	_, err = anon.Auth.Signup(ctx, connect.NewRequest(&sigilv1.SignupRequest{Token: resp.Msg.Token, Password: strings.Repeat("x", 1025)}))
	requireCode(t, err, connect.CodeInvalidArgument, "password is too long")

	// The token survived the refusals.
	got, err := anon.Auth.Signup(ctx, connect.NewRequest(&sigilv1.SignupRequest{Token: resp.Msg.Token, Password: testPassword}))
	must(t, err)
	if got.Msg.User != "alice" {
		t.Fatalf("signup user = %q", got.Msg.User)
	}
	_, _, err = e.login("alice", testPassword, 0)
	must(t, err)
	// And is consumed now.
	_, err = anon.Auth.Signup(ctx, connect.NewRequest(&sigilv1.SignupRequest{Token: resp.Msg.Token, Password: testPassword}))
	requireCode(t, err, connect.CodeNotFound, "invalid, already used or expired")
}

func TestOversizedRequestRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.addUser(e.admin(), "alice", []string{types.RoleAccess}, nil)
	huge := strings.Repeat("p", 10<<20)

	t.Run("connect client", func(t *testing.T) {
		_, err := e.anon().Auth.Login(ctx, connect.NewRequest(&sigilv1.LoginRequest{User: "alice", Password: huge}))
		requireCode(t, err, connect.CodeResourceExhausted, "1048576 byte")
	})
	t.Run("raw POST", func(t *testing.T) {
		body, err := proto.Marshal(&sigilv1.LoginRequest{User: "alice", Password: huge})
		must(t, err)
		c := e.anon()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+"/sigil.v1.AuthService/Login", bytes.NewReader(body))
		must(t, err)
		req.Header.Set("Content-Type", "application/proto")
		resp, err := c.HTTPClient.Do(req)
		must(t, err)
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode == http.StatusOK {
			t.Fatalf("10 MB request accepted: %s", msg)
		}
		if !strings.Contains(string(msg), "resource_exhausted") || !strings.Contains(string(msg), "1048576 byte") {
			t.Fatalf("status %d, body %q: want a resource_exhausted error naming the limit", resp.StatusCode, msg)
		}
	})
	// The server still works.
	_, _, err := e.login("alice", testPassword, 0)
	must(t, err)
}

func TestNoClientCertificate(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	anon := e.anon()
	calls := map[string]func() error{
		"ListResources": func() error {
			_, err := anon.Resources.ListResources(ctx, connect.NewRequest(&sigilv1.ListResourcesRequest{Kind: types.KindRole}))
			return err
		},
		"CreateResource": func() error {
			role, err := types.NewRole("r", types.RoleSpec{})
			must(t, err)
			_, err = anon.Resources.CreateResource(ctx, connect.NewRequest(&sigilv1.CreateResourceRequest{
				Resource: &sigilv1.Resource{Kind: types.KindRole, Json: resourceJSON(t, role)},
			}))
			return err
		},
		"WhoAmI": func() error {
			_, err := anon.Auth.WhoAmI(ctx, connect.NewRequest(&sigilv1.WhoAmIRequest{}))
			return err
		},
		"AddLock": func() error {
			_, err := anon.Locks.AddLock(ctx, connect.NewRequest(&sigilv1.AddLockRequest{User: "alice"}))
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			requireCode(t, call(), connect.CodeUnauthenticated, "client certificate", "sigil login")
		})
	}
	// Public calls work without one.
	info, err := anon.Auth.ClusterInfo(ctx, connect.NewRequest(&sigilv1.ClusterInfoRequest{}))
	must(t, err)
	if info.Msg.ClusterName != "test.sigil" || !bytes.Equal(info.Msg.TlsCaPem, e.authority.CertPEM(ca.TLSCA)) {
		t.Fatalf("cluster info = %v", info.Msg)
	}
}

func TestExportCA(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	anon := e.anon()
	for _, typ := range []string{"tls-ca", "user-ca", "db-ca"} {
		t.Run(typ, func(t *testing.T) {
			resp, err := anon.Auth.ExportCA(ctx, connect.NewRequest(&sigilv1.ExportCARequest{Type: typ}))
			must(t, err)
			cert := parseCert(t, resp.Msg.Data)
			if !cert.IsCA {
				t.Fatal("exported certificate is not a CA")
			}
			if resp.Msg.Fingerprint == "" {
				t.Fatal("missing fingerprint")
			}
		})
	}
	for _, typ := range []string{"ssh-user-ca", "ssh-host-ca"} {
		t.Run(typ, func(t *testing.T) {
			resp, err := anon.Auth.ExportCA(ctx, connect.NewRequest(&sigilv1.ExportCARequest{Type: typ}))
			must(t, err)
			data := resp.Msg.Data
			if typ == "ssh-host-ca" {
				if !bytes.HasPrefix(data, []byte("@cert-authority * ")) {
					t.Fatalf("host CA line %q is not in known_hosts form", data)
				}
				data = bytes.TrimPrefix(data, []byte("@cert-authority * "))
			}
			pub, _, _, _, err := ssh.ParseAuthorizedKey(data)
			must(t, err)
			if got := ssh.FingerprintSHA256(pub); got != resp.Msg.Fingerprint {
				t.Fatalf("fingerprint = %q, key says %q", resp.Msg.Fingerprint, got)
			}
		})
	}
	_, err := anon.Auth.ExportCA(ctx, connect.NewRequest(&sigilv1.ExportCARequest{Type: "root-ca"}))
	requireCode(t, err, connect.CodeInvalidArgument, `"root-ca" is not one of`)
}

// Login user names are attacker controlled: a name that cannot be a user
// must not become a rate limiter key or an unbounded audit field.
func TestLoginBogusUserNameBounded(t *testing.T) {
	var e *testEnv
	limiter, err := authn.NewRateLimiter(authn.RateLimiterConfig{
		PerAddr: authn.Limit{Attempts: 1000, Per: time.Minute},
		Clock:   func() time.Time { return e.clock.Now() },
	})
	must(t, err)
	e = newEnv(t, withLimiter(limiter))
	for i := 0; i < 3; i++ {
		name := strings.Repeat(string(rune('a'+i)), 100<<10)
		_, _, err := e.login(name, testPassword, 0)
		requireCode(t, err, connect.CodePermissionDenied, "invalid username or password")
	}
	if n := limiter.Len(); n != 1 {
		t.Fatalf("rate limiter tracks %d keys, want 1 (the address)", n)
	}
	var n int
	for _, ev := range e.auditEvents() {
		if ev.Type == audit.EventUserLogin && !ev.Success {
			n++
			if len(ev.Identity.User) > 300 {
				t.Fatalf("audit event carries a %d byte user name", len(ev.Identity.User))
			}
		}
	}
	if n != 3 {
		t.Fatalf("%d failed login events, want 3", n)
	}
}

// Signups are throttled per address only: one bucket shared by every
// signup in the cluster would let a team of six not sign up in a minute,
// and would throttle logins of a user named "signup".
func TestSignupNotGloballyThrottled(t *testing.T) {
	var e *testEnv
	limiter, err := authn.NewRateLimiter(authn.RateLimiterConfig{Clock: func() time.Time { return e.clock.Now() }})
	must(t, err)
	e = newEnv(t, withLimiter(limiter))
	admin := e.admin()
	for i := 0; i < 7; i++ {
		e.addUser(admin, "user"+string(rune('a'+i)), []string{types.RoleAccess}, nil)
	}
	e.addUser(admin, "signup", []string{types.RoleAccess}, nil)
	_, _, err = e.login("signup", testPassword, 0)
	must(t, err)
}
