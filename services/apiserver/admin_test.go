package apiserver_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
)

func whoami(c *client.Client) error {
	_, err := c.Auth.WhoAmI(context.Background(), connect.NewRequest(&sigilv1.WhoAmIRequest{}))
	return err
}

func TestRBAC(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.admin()
	createRole(t, admin, "role-reader", types.RoleSpec{Allow: types.RoleConditions{
		Rules: []types.Rule{{Resources: []string{types.KindRole}, Verbs: []string{types.VerbList, types.VerbRead}}},
	}})
	e.addUser(admin, "alice", []string{types.RoleAccess}, nil)
	e.addUser(admin, "carol", []string{types.RoleAccess, "role-reader"}, nil)
	alice, carol := e.loginClient("alice"), e.loginClient("carol")

	newRole := func(name string) *sigilv1.CreateResourceRequest {
		role, err := types.NewRole(name, types.RoleSpec{})
		must(t, err)
		return &sigilv1.CreateResourceRequest{Resource: &sigilv1.Resource{Kind: types.KindRole, Name: name, Json: resourceJSON(t, role)}}
	}

	_, err := alice.Resources.ListResources(ctx, connect.NewRequest(&sigilv1.ListResourcesRequest{Kind: types.KindRole}))
	requireCode(t, err, connect.CodePermissionDenied, `"list" on "role"`, "access")
	_, err = alice.Resources.CreateResource(ctx, connect.NewRequest(newRole("sneaky")))
	requireCode(t, err, connect.CodePermissionDenied, `"create" on "role"`)
	_, err = alice.Users.AddUser(ctx, connect.NewRequest(&sigilv1.AddUserRequest{Name: "eve", Roles: []string{types.RoleAdmin}}))
	requireCode(t, err, connect.CodePermissionDenied, `"create" on "user"`)
	_, err = alice.Locks.AddLock(ctx, connect.NewRequest(&sigilv1.AddLockRequest{User: "carol"}))
	requireCode(t, err, connect.CodePermissionDenied, `"create" on "lock"`)

	list, err := carol.Resources.ListResources(ctx, connect.NewRequest(&sigilv1.ListResourcesRequest{Kind: types.KindRole}))
	must(t, err)
	var names []string
	for _, r := range list.Msg.Resources {
		names = append(names, r.Name)
	}
	if got := strings.Join(names, ","); got != "access,admin,role-reader" {
		t.Fatalf("roles = %s", got)
	}
	get, err := carol.Resources.GetResource(ctx, connect.NewRequest(&sigilv1.GetResourceRequest{Kind: types.KindRole, Name: types.RoleAdmin}))
	must(t, err)
	if get.Msg.Resource.Name != types.RoleAdmin {
		t.Fatalf("got %q", get.Msg.Resource.Name)
	}
	_, err = carol.Resources.CreateResource(ctx, connect.NewRequest(newRole("sneaky")))
	requireCode(t, err, connect.CodePermissionDenied, `"create" on "role"`)
	_, err = carol.Resources.DeleteResource(ctx, connect.NewRequest(&sigilv1.DeleteResourceRequest{Kind: types.KindRole, Name: "role-reader"}))
	requireCode(t, err, connect.CodePermissionDenied, `"delete" on "role"`)
	_, err = carol.Resources.ListResources(ctx, connect.NewRequest(&sigilv1.ListResourcesRequest{Kind: types.KindUser}))
	requireCode(t, err, connect.CodePermissionDenied, `"list" on "user"`)
	_, err = e.store.Get(ctx, types.KindRole, "sneaky")
	if err == nil {
		t.Fatal("a refused create stored the role")
	}

	_, err = admin.Resources.ListResources(ctx, connect.NewRequest(&sigilv1.ListResourcesRequest{Kind: "widget"}))
	requireCode(t, err, connect.CodeInvalidArgument, `unknown kind "widget"`)
}

func TestLocks(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.admin()
	e.addUser(admin, "alice", []string{types.RoleAccess}, nil)
	e.addUser(admin, "bob", []string{types.RoleAccess}, nil)
	alice, bob := e.loginClient("alice"), e.loginClient("bob")

	t.Run("user lock", func(t *testing.T) {
		lock, err := admin.Locks.AddLock(ctx, connect.NewRequest(&sigilv1.AddLockRequest{User: "alice", Message: "laptop stolen"}))
		must(t, err)
		id := lock.Msg.Lock.Name
		requireCode(t, whoami(alice), connect.CodePermissionDenied, "locked", "user=alice", "laptop stolen", id)
		_, _, err = e.login("alice", testPassword, 0)
		requireCode(t, err, connect.CodePermissionDenied, "locked")
		must(t, whoami(bob))

		var created bool
		for _, ev := range e.auditEvents() {
			if ev.Type == audit.EventLockCreated && ev.Resource.Name == id && ev.Identity.User == "sigilctl" && ev.Details["target"] == "user=alice" {
				created = true
			}
		}
		if !created {
			t.Fatal("no lock.created audit event")
		}

		_, err = admin.Locks.RemoveLock(ctx, connect.NewRequest(&sigilv1.RemoveLockRequest{Id: id}))
		must(t, err)
		must(t, whoami(alice))
		_, _, err = e.login("alice", testPassword, 0)
		must(t, err)
		_, err = admin.Locks.RemoveLock(ctx, connect.NewRequest(&sigilv1.RemoveLockRequest{Id: id}))
		requireCode(t, err, connect.CodeNotFound, "not found")
	})

	t.Run("role lock", func(t *testing.T) {
		lock, err := admin.Locks.AddLock(ctx, connect.NewRequest(&sigilv1.AddLockRequest{Role: types.RoleAccess}))
		must(t, err)
		requireCode(t, whoami(alice), connect.CodePermissionDenied, "locked", "role=access", "no reason given")
		requireCode(t, whoami(bob), connect.CodePermissionDenied, "locked", "role=access")
		// The admin bot does not hold the role.
		must(t, whoami(admin))
		_, err = admin.Locks.RemoveLock(ctx, connect.NewRequest(&sigilv1.RemoveLockRequest{Id: lock.Msg.Lock.Name}))
		must(t, err)
		must(t, whoami(alice))
		must(t, whoami(bob))
	})

	t.Run("ttl", func(t *testing.T) {
		_, err := admin.Locks.AddLock(ctx, connect.NewRequest(&sigilv1.AddLockRequest{User: "bob", TtlSeconds: 60}))
		must(t, err)
		requireCode(t, whoami(bob), connect.CodePermissionDenied, "locked")
		e.clock.Advance(59 * time.Second)
		requireCode(t, whoami(bob), connect.CodePermissionDenied, "locked")
		e.clock.Advance(time.Second)
		must(t, whoami(bob))
	})

	t.Run("invalid", func(t *testing.T) {
		_, err := admin.Locks.AddLock(ctx, connect.NewRequest(&sigilv1.AddLockRequest{User: "bob", Role: "access"}))
		requireCode(t, err, connect.CodeInvalidArgument, "exactly one of user, role, bot")
		_, err = admin.Locks.AddLock(ctx, connect.NewRequest(&sigilv1.AddLockRequest{User: "bob", TtlSeconds: -1}))
		requireCode(t, err, connect.CodeInvalidArgument, "--ttl must be positive")
		must(t, whoami(bob))
	})
}

func TestBuiltinRolesAreProtected(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.admin()
	for _, name := range []string{types.RoleAdmin, types.RoleAccess} {
		role, err := types.NewRole(name, types.RoleSpec{})
		must(t, err)
		for _, force := range []bool{false, true} {
			_, err := admin.Resources.CreateResource(ctx, connect.NewRequest(&sigilv1.CreateResourceRequest{
				Resource: &sigilv1.Resource{Kind: types.KindRole, Name: name, Json: resourceJSON(t, role)},
				Force:    force,
			}))
			requireCode(t, err, connect.CodeInvalidArgument, `role "`+name+`" is built in`)
		}
		_, err = admin.Resources.DeleteResource(ctx, connect.NewRequest(&sigilv1.DeleteResourceRequest{Kind: types.KindRole, Name: name}))
		requireCode(t, err, connect.CodeInvalidArgument, `role "`+name+`" is built in and cannot be removed`)
	}
	// Still intact: the admin still administers.
	got, err := admin.Resources.GetResource(ctx, connect.NewRequest(&sigilv1.GetResourceRequest{Kind: types.KindRole, Name: types.RoleAdmin}))
	must(t, err)
	r, err := types.UnmarshalResource(types.KindRole, got.Msg.Resource.Json)
	must(t, err)
	if len(r.(*types.Role).Spec.Allow.Rules) == 0 {
		t.Fatal("built-in admin lost its rules")
	}

	role, err := types.NewRole("dev", types.RoleSpec{Options: types.RoleOptions{MaxSessionTTL: types.Duration(time.Hour)}})
	must(t, err)
	req := func(force bool) *connect.Request[sigilv1.CreateResourceRequest] {
		return connect.NewRequest(&sigilv1.CreateResourceRequest{
			Resource: &sigilv1.Resource{Kind: types.KindRole, Name: "dev", Json: resourceJSON(t, role)},
			Force:    force,
		})
	}
	resp, err := admin.Resources.CreateResource(ctx, req(true))
	must(t, err)
	if !resp.Msg.Created {
		t.Fatal("first force create reported created=false")
	}
	_, err = admin.Resources.CreateResource(ctx, req(false))
	requireCode(t, err, connect.CodeAlreadyExists, `role "dev" already exists`)
	resp, err = admin.Resources.CreateResource(ctx, req(true))
	must(t, err)
	if resp.Msg.Created {
		t.Fatal("force update reported created=true")
	}
	var actions []string
	for _, ev := range e.auditEvents() {
		if ev.Type == audit.EventResourceChanged && ev.Resource.Name == "dev" {
			actions = append(actions, ev.Details["action"])
		}
	}
	if strings.Join(actions, ",") != "created,updated" {
		t.Fatalf("audit actions for dev = %v", actions)
	}
	_, err = admin.Resources.DeleteResource(ctx, connect.NewRequest(&sigilv1.DeleteResourceRequest{Kind: types.KindRole, Name: "dev"}))
	must(t, err)
	_, err = admin.Resources.GetResource(ctx, connect.NewRequest(&sigilv1.GetResourceRequest{Kind: types.KindRole, Name: "dev"}))
	requireCode(t, err, connect.CodeNotFound, `role "dev" not found`)
}

func TestInvalidResourceJSON(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.admin()
	for _, tc := range []struct {
		name string
		json string
		want []string
	}{
		{
			name: "unknown field",
			json: `{"kind":"role","version":"v1","metadata":{"name":"bad"},"spec":{"allow":{"bogus":true}}}`,
			want: []string{"invalid role JSON", `unknown field "bogus"`},
		},
		{
			name: "bad statements",
			json: `{"kind":"role","version":"v1","metadata":{"name":"bad"},"spec":{"allow":{"databases":{"statements":"sudo"}}}}`,
			want: []string{"spec.allow.databases.statements", `"sudo" is not one of read, write, admin`},
		},
		{
			name: "bad verb",
			json: `{"kind":"role","version":"v1","metadata":{"name":"bad"},"spec":{"allow":{"rules":[{"resources":["role"],"verbs":["nuke"]}]}}}`,
			want: []string{"spec.allow.rules[0].verbs", `"nuke"`},
		},
		{
			name: "kind mismatch",
			json: `{"kind":"user","version":"v1","metadata":{"name":"bad"},"spec":{}}`,
			want: []string{`kind: got "user", want "role"`},
		},
		{
			name: "not JSON",
			json: `kind: role`,
			want: []string{"invalid resource JSON"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, force := range []bool{false, true} {
				_, err := admin.Resources.CreateResource(ctx, connect.NewRequest(&sigilv1.CreateResourceRequest{
					Resource: &sigilv1.Resource{Kind: types.KindRole, Name: "bad", Json: []byte(tc.json)},
					Force:    force,
				}))
				requireCode(t, err, connect.CodeInvalidArgument, tc.want...)
			}
			_, err := admin.Resources.GetResource(ctx, connect.NewRequest(&sigilv1.GetResourceRequest{Kind: types.KindRole, Name: "bad"}))
			requireCode(t, err, connect.CodeNotFound, `role "bad" not found`)
		})
	}
	_, err := admin.Resources.CreateResource(ctx, connect.NewRequest(&sigilv1.CreateResourceRequest{}))
	requireCode(t, err, connect.CodeInvalidArgument, "missing resource")
}

func TestAddUser(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.admin()

	_, err := admin.Users.AddUser(ctx, connect.NewRequest(&sigilv1.AddUserRequest{Name: "alice", Roles: []string{types.RoleAccess, "x"}}))
	requireCode(t, err, connect.CodeNotFound, `role "x" does not exist`)
	_, err = admin.Resources.GetResource(ctx, connect.NewRequest(&sigilv1.GetResourceRequest{Kind: types.KindUser, Name: "alice"}))
	requireCode(t, err, connect.CodeNotFound, `user "alice" not found`)

	_, err = admin.Users.AddUser(ctx, connect.NewRequest(&sigilv1.AddUserRequest{Name: "alice"}))
	requireCode(t, err, connect.CodeInvalidArgument, "needs at least one role")

	// The same rule holds for a user written as a resource.
	user, err := types.NewUser("bob", []string{"x"}, nil)
	must(t, err)
	_, err = admin.Resources.CreateResource(ctx, connect.NewRequest(&sigilv1.CreateResourceRequest{
		Resource: &sigilv1.Resource{Kind: types.KindUser, Name: "bob", Json: resourceJSON(t, user)},
	}))
	requireCode(t, err, connect.CodeNotFound, `role "x" does not exist`)
	has, err := e.users.HasUsers(ctx)
	must(t, err)
	if has {
		t.Fatal("a refused user was stored")
	}

	resp, err := admin.Users.AddUser(ctx, connect.NewRequest(&sigilv1.AddUserRequest{Name: "alice", Roles: []string{types.RoleAccess}}))
	must(t, err)
	if want := "https://sigil.example.com:3443/web/signup/" + resp.Msg.Token; resp.Msg.SignupUrl != want {
		t.Fatalf("signup URL = %q, want %q", resp.Msg.SignupUrl, want)
	}
	_, err = admin.Users.AddUser(ctx, connect.NewRequest(&sigilv1.AddUserRequest{Name: "alice", Roles: []string{types.RoleAccess}}))
	requireCode(t, err, connect.CodeAlreadyExists, `user "alice" already exists`)

	_, err = admin.Users.UpdateUser(ctx, connect.NewRequest(&sigilv1.UpdateUserRequest{Name: "alice", SetRoles: []string{"x"}}))
	requireCode(t, err, connect.CodeNotFound, `role "x" does not exist`)
	up, err := admin.Users.UpdateUser(ctx, connect.NewRequest(&sigilv1.UpdateUserRequest{Name: "alice", SetTraits: map[string]string{"logins": "alice,root"}}))
	must(t, err)
	u, err := types.UnmarshalResource(types.KindUser, up.Msg.User.Json)
	must(t, err)
	if got := strings.Join(u.(*types.User).Spec.Traits["logins"], ","); got != "alice,root" {
		t.Fatalf("logins = %q", got)
	}

	// Deleting a user removes their credentials: a signed-up user cannot log in afterwards.
	_, err = e.anon().Auth.Signup(ctx, connect.NewRequest(&sigilv1.SignupRequest{Token: resp.Msg.Token, Password: testPassword}))
	must(t, err)
	_, err = admin.Resources.DeleteResource(ctx, connect.NewRequest(&sigilv1.DeleteResourceRequest{Kind: types.KindUser, Name: "alice"}))
	must(t, err)
	_, _, err = e.login("alice", testPassword, 0)
	requireCode(t, err, connect.CodePermissionDenied, "invalid username or password")
}

func TestTokenNamesStayOutOfAudit(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.admin()
	resp, err := admin.Tokens.AddToken(ctx, connect.NewRequest(&sigilv1.AddTokenRequest{
		Kind: types.TokenKindBot, Name: "ci", Roles: []string{types.RoleAccess}, TtlSeconds: 600,
	}))
	must(t, err)
	secret := resp.Msg.Token
	if len(secret) != 64 {
		t.Fatalf("token %q is not 64 hex characters", secret)
	}
	tok, err := types.UnmarshalResource(types.KindToken, resp.Msg.Resource.Json)
	must(t, err)
	if exp := tok.(*types.Token).Expiry(); !exp.Equal(e.clock.Now().Add(10 * time.Minute).UTC()) {
		t.Fatalf("token expires %v", exp)
	}

	_, err = admin.Resources.DeleteResource(ctx, connect.NewRequest(&sigilv1.DeleteResourceRequest{Kind: types.KindToken, Name: secret}))
	must(t, err)
	// A token written as a resource is redacted as well.
	exp := e.clock.Now().Add(time.Hour)
	manual := &types.Token{
		Metadata: types.Metadata{Name: "0123456789abcdef0123456789abcdef", Expires: &exp},
		Spec:     types.TokenSpec{Kind: types.TokenKindBot, BotName: "ci", Roles: []string{types.RoleAccess}},
	}
	_, err = admin.Resources.CreateResource(ctx, connect.NewRequest(&sigilv1.CreateResourceRequest{
		Resource: &sigilv1.Resource{Kind: types.KindToken, Json: resourceJSON(t, manual)},
	}))
	must(t, err)

	raw := e.auditRaw()
	for _, s := range []string{secret, manual.Metadata.Name} {
		if containsBytes(raw, s) {
			t.Fatalf("token %q appears in the audit log:\n%s", s, raw)
		}
	}
	var n int
	for _, ev := range e.auditEvents() {
		if ev.Type == audit.EventResourceChanged && ev.Resource.Kind == types.KindToken {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d token audit events, want 3 (created, deleted, created)", n)
	}

	_, err = admin.Tokens.AddToken(ctx, connect.NewRequest(&sigilv1.AddTokenRequest{
		Kind: types.TokenKindBot, Name: "ci", Roles: []string{"x"},
	}))
	requireCode(t, err, connect.CodeNotFound, `role "x" does not exist`)
	_, err = admin.Tokens.AddToken(ctx, connect.NewRequest(&sigilv1.AddTokenRequest{
		Kind: types.TokenKindBot, Name: "ci", Roles: []string{types.RoleAccess}, TtlSeconds: -1,
	}))
	requireCode(t, err, connect.CodeInvalidArgument, "--ttl must be positive")
}
