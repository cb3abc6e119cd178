package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
)

func TestMatchLabels(t *testing.T) {
	prod := map[string]string{"env": "prod", "region": "eu-west-1", "team": "db"}
	tests := []struct {
		name    string
		sel     types.Labels
		labels  map[string]string
		want    bool
		wantErr string
	}{
		{name: "empty selector matches nothing", sel: nil, labels: prod, want: false},
		{name: "empty selector, empty labels", sel: types.Labels{}, labels: nil, want: false},
		{name: "wildcard key and value", sel: types.Labels{"*": {"*"}}, labels: prod, want: true},
		{name: "wildcard matches unlabelled", sel: types.Labels{"*": {"*"}}, labels: nil, want: true},
		{name: "exact", sel: types.Labels{"env": {"prod"}}, labels: prod, want: true},
		{name: "exact miss", sel: types.Labels{"env": {"staging"}}, labels: prod, want: false},
		{name: "values OR", sel: types.Labels{"env": {"staging", "prod"}}, labels: prod, want: true},
		{name: "keys AND both match", sel: types.Labels{"env": {"prod"}, "team": {"db"}}, labels: prod, want: true},
		{name: "keys AND one misses", sel: types.Labels{"env": {"prod"}, "team": {"web"}}, labels: prod, want: false},
		{name: "missing key", sel: types.Labels{"owner": {"*"}}, labels: prod, want: false},
		{name: "value wildcard needs key", sel: types.Labels{"env": {"*"}}, labels: map[string]string{"x": "y"}, want: false},
		{name: "value wildcard", sel: types.Labels{"env": {"*"}}, labels: prod, want: true},
		{name: "glob prefix", sel: types.Labels{"region": {"eu-*"}}, labels: prod, want: true},
		{name: "glob suffix", sel: types.Labels{"region": {"*-1"}}, labels: prod, want: true},
		{name: "glob middle", sel: types.Labels{"region": {"eu-*-1"}}, labels: prod, want: true},
		{name: "glob miss", sel: types.Labels{"region": {"us-*"}}, labels: prod, want: false},
		{name: "glob no overlap", sel: types.Labels{"region": {"eu-west-1*-1"}}, labels: prod, want: false},
		{name: "glob is not regex", sel: types.Labels{"env": {"pr.d*"}}, labels: prod, want: false},
		{name: "regex", sel: types.Labels{"region": {"^eu-(west|north)-[0-9]$"}}, labels: prod, want: true},
		{name: "regex anchored", sel: types.Labels{"env": {"^pro$"}}, labels: prod, want: false},
		{name: "bad regex", sel: types.Labels{"env": {"^pro(d$"}}, labels: prod, wantErr: "invalid label regular expression"},
		{name: "wildcard key bad value", sel: types.Labels{"*": {"prod"}}, labels: prod, wantErr: `key "*" only takes the value "*"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := MatchLabels(tt.sel, tt.labels)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("MatchLabels = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestApplyTraits(t *testing.T) {
	traits := map[string][]string{"db_users": {"alice", "reader"}, "logins": {"ubuntu"}, "empty": {}, "blank": {""}}
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{in: "postgres", want: []string{"postgres"}},
		{in: "*", want: []string{"*"}},
		{in: "{{internal.db_users}}", want: []string{"alice", "reader"}},
		{in: "{{external.db_users}}", want: []string{"alice", "reader"}},
		{in: "{{ internal.logins }}", want: []string{"ubuntu"}},
		{in: "pre-{{internal.logins}}-suf", want: []string{"pre-ubuntu-suf"}},
		{in: "{{internal.missing}}", want: nil},
		{in: "{{internal.empty}}", want: nil},
		{in: "{{internal.blank}}", want: nil},
		{in: "{{internal.logins", wantErr: true},
		{in: "{{logins}}", wantErr: true},
		{in: "{{secret.logins}}", wantErr: true},
		{in: "{{internal.a}}{{internal.b}}", wantErr: true},
		{in: "}}", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ApplyTraits(tt.in, traits)
		if tt.wantErr {
			if err == nil || !trace.IsBadParameter(err) {
				t.Errorf("ApplyTraits(%q) = %v, %v; want BadParameter", tt.in, got, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ApplyTraits(%q): %v", tt.in, err)
			continue
		}
		if strings.Join(got, ",") != strings.Join(tt.want, ",") || len(got) != len(tt.want) {
			t.Errorf("ApplyTraits(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func mustRole(t *testing.T, name string, spec types.RoleSpec) *types.Role {
	t.Helper()
	r, err := types.NewRole(name, spec)
	if err != nil {
		t.Fatalf("NewRole(%s): %v", name, err)
	}
	return r
}

func mustDB(t *testing.T, name string, labels map[string]string) *types.Database {
	t.Helper()
	d, err := types.NewDatabase(name, labels, types.DatabaseSpec{Protocol: "postgres", URI: "localhost:5432"})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestCheckDatabase(t *testing.T) {
	staging := mustDB(t, "pg1", map[string]string{"env": "staging"})
	prod := mustDB(t, "pg2", map[string]string{"env": "prod"})
	dev := types.RoleSpec{Allow: types.RoleConditions{Databases: &types.DatabaseConditions{
		Labels:     types.Labels{"env": {"staging"}},
		DBUsers:    []string{"{{internal.db_users}}", "reader"},
		DBNames:    []string{"*"},
		Statements: "read",
	}}}
	ops := types.RoleSpec{
		Allow: types.RoleConditions{Databases: &types.DatabaseConditions{
			Labels:        types.Labels{"*": {"*"}},
			DBUsers:       []string{"*"},
			DBNames:       []string{"app", "ops-{{external.team}}"},
			Statements:    "write",
			WriteApproval: true,
		}},
		Deny: types.RoleConditions{Databases: &types.DatabaseConditions{
			Labels:  types.Labels{"*": {"*"}},
			DBUsers: []string{"root"},
		}},
	}
	denyProd := types.RoleSpec{Deny: types.RoleConditions{Databases: &types.DatabaseConditions{Labels: types.Labels{"env": {"prod"}}}}}
	denyName := types.RoleSpec{Deny: types.RoleConditions{Databases: &types.DatabaseConditions{DBNames: []string{"secrets"}}}}
	noStatements := types.RoleSpec{Allow: types.RoleConditions{Databases: &types.DatabaseConditions{
		Labels: types.Labels{"env": {"staging"}}, DBUsers: []string{"alice"}, DBNames: []string{"*"},
	}}}
	traits := map[string][]string{"db_users": {"alice"}, "team": {"blue"}}

	tests := []struct {
		name         string
		roles        map[string]types.RoleSpec
		order        []string
		kind         string
		db           *types.Database
		user, dbName string
		wantErr      string
		wantStmts    string
		wantApproval bool
		wantRole     string
	}{
		{name: "template user allowed", order: []string{"dev"}, db: staging, user: "alice", dbName: "app", wantStmts: "read", wantRole: "dev"},
		{name: "literal user allowed", order: []string{"dev"}, db: staging, user: "reader", dbName: "app", wantStmts: "read", wantRole: "dev"},
		{name: "user not allowed", order: []string{"dev"}, db: staging, user: "root", dbName: "app",
			wantErr: `access to database "pg1" as db user "root" denied: no role allows db user "root" (roles: dev)`},
		{name: "labels do not match", order: []string{"dev"}, db: prod, user: "alice", dbName: "app",
			wantErr: `access to database "pg2" as db user "alice" denied: no role's databases.labels match this database (roles: dev)`},
		{name: "deny db_users wins over allow *", order: []string{"dev", "ops"}, db: staging, user: "root", dbName: "app",
			wantErr: `access to database "pg1" as db user "root" denied: role "ops" denies db_users "root"`},
		{name: "max statements across roles", order: []string{"dev", "ops"}, db: staging, user: "alice", dbName: "app",
			wantStmts: "write", wantApproval: true, wantRole: "ops"},
		{name: "db name via external template", order: []string{"ops"}, db: prod, user: "bob", dbName: "ops-blue", wantStmts: "write", wantApproval: true, wantRole: "ops"},
		{name: "db name not allowed", order: []string{"ops"}, db: prod, user: "bob", dbName: "other",
			wantErr: `denied: no role allows db name "other" for db user "bob" (roles: ops)`},
		{name: "deny by labels only denies whole db", order: []string{"ops", "deny-prod"}, db: prod, user: "bob", dbName: "app",
			wantErr: `access to database "pg2" as db user "bob" denied: role "deny-prod" denies this database`},
		{name: "deny by labels leaves others", order: []string{"ops", "deny-prod"}, db: staging, user: "bob", dbName: "app", wantStmts: "write", wantApproval: true, wantRole: "ops"},
		{name: "deny db_names without labels applies everywhere", order: []string{"ops", "deny-name"}, db: staging, user: "bob", dbName: "secrets",
			wantErr: `role "deny-name" denies db_names "secrets"`},
		{name: "no roles", order: nil, db: staging, user: "alice", dbName: "app",
			wantErr: `no role's databases.labels match this database (roles: none)`},
		{name: "default statements human", order: []string{"plain"}, db: staging, user: "alice", dbName: "x", wantStmts: "admin", wantRole: "plain"},
		{name: "default statements bot", order: []string{"plain"}, kind: types.IdentityKindBot, db: staging, user: "alice", dbName: "x", wantStmts: "admin", wantRole: "plain"},
		{name: "default statements agent", order: []string{"plain"}, kind: types.IdentityKindAgent, db: staging, user: "alice", dbName: "x", wantStmts: "read", wantRole: "plain"},
		{name: "empty db user", order: []string{"ops"}, db: staging, user: "", dbName: "x", wantErr: "a db user is required"},
	}
	specs := map[string]types.RoleSpec{"dev": dev, "ops": ops, "deny-prod": denyProd, "deny-name": denyName, "plain": noStatements}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var roles []*types.Role
			for _, n := range tt.order {
				roles = append(roles, mustRole(t, n, specs[n]))
			}
			var opts []Option
			if tt.kind != "" {
				opts = append(opts, WithIdentityKind(tt.kind))
			}
			c, err := NewAccessChecker(roles, traits, opts...)
			if err != nil {
				t.Fatal(err)
			}
			dec, err := c.CheckDatabase(tt.db, tt.user, tt.dbName)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("allowed (%+v), want error %q", dec, tt.wantErr)
				}
				if !trace.IsAccessDenied(err) {
					t.Errorf("err %v is not AccessDenied", err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("err = %q, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if dec.Statements != tt.wantStmts || dec.WriteApproval != tt.wantApproval || dec.Role != tt.wantRole {
				t.Errorf("decision = %+v, want statements %s approval %v role %s", dec, tt.wantStmts, tt.wantApproval, tt.wantRole)
			}
		})
	}
}

func TestOnBehalfOf(t *testing.T) {
	db := mustDB(t, "pg1", map[string]string{"env": "staging"})
	all := types.Labels{"*": {"*"}}
	agentRole := mustRole(t, "agent-rw", types.RoleSpec{
		Options: types.RoleOptions{MaxSessionTTL: types.Duration(time.Hour)},
		Allow:   types.RoleConditions{Databases: &types.DatabaseConditions{Labels: all, DBUsers: []string{"*"}, DBNames: []string{"*"}, Statements: "admin"}},
	})
	humanRole := mustRole(t, "human-ro", types.RoleSpec{
		Options: types.RoleOptions{MaxSessionTTL: types.Duration(30 * time.Minute), RequireSessionMFA: true},
		Allow:   types.RoleConditions{Databases: &types.DatabaseConditions{Labels: all, DBUsers: []string{"alice"}, DBNames: []string{"*"}, Statements: "read", WriteApproval: true}},
	})
	human, err := NewAccessChecker([]*types.Role{humanRole}, nil)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := NewAccessChecker([]*types.Role{agentRole}, nil, WithIdentityKind(types.IdentityKindAgent), WithOnBehalfOf("alice", human))
	if err != nil {
		t.Fatal(err)
	}
	dec, err := agent.CheckDatabase(db, "alice", "app")
	if err != nil {
		t.Fatal(err)
	}
	if dec.Statements != "read" || !dec.WriteApproval || dec.Role != "agent-rw" {
		t.Errorf("decision = %+v", dec)
	}
	_, err = agent.CheckDatabase(db, "postgres", "app")
	if err == nil || !strings.Contains(err.Error(), `no role allows db user "postgres" (roles: human-ro) (acting on behalf of "alice")`) {
		t.Errorf("err = %v", err)
	}
	if got := agent.MaxSessionTTL(8 * time.Hour); got != 30*time.Minute {
		t.Errorf("MaxSessionTTL = %v", got)
	}
	// The person's per-session MFA becomes a write approval for the
	// agent, which cannot pass an MFA check itself.
	if agent.RequireSessionMFA() {
		t.Error("RequireSessionMFA = true for an agent whose person needs MFA")
	}
	humanRW := mustRole(t, "human-rw", types.RoleSpec{
		Options: types.RoleOptions{RequireSessionMFA: true},
		Allow:   types.RoleConditions{Databases: &types.DatabaseConditions{Labels: all, DBUsers: []string{"alice"}, DBNames: []string{"*"}, Statements: "write"}},
	})
	human2, err := NewAccessChecker([]*types.Role{humanRW}, nil)
	if err != nil {
		t.Fatal(err)
	}
	agent2, err := NewAccessChecker([]*types.Role{agentRole}, nil, WithIdentityKind(types.IdentityKindAgent), WithOnBehalfOf("alice", human2))
	if err != nil {
		t.Fatal(err)
	}
	if dec, err := agent2.CheckDatabase(db, "alice", "app"); err != nil || dec.Statements != "write" || !dec.WriteApproval {
		t.Errorf("decision = %+v, %v; want write with write approval", dec, err)
	}
}

func TestCheckLogin(t *testing.T) {
	web := &types.Node{Metadata: types.Metadata{Name: "web1", Labels: map[string]string{"env": "prod", "role": "web"}}, Spec: types.NodeSpec{Addr: "10.0.0.1:22"}}
	db := &types.Node{Metadata: types.Metadata{Name: "db1", Labels: map[string]string{"env": "prod", "role": "db"}}, Spec: types.NodeSpec{Addr: "10.0.0.2:22"}}
	for _, n := range []*types.Node{web, db} {
		if err := n.CheckAndSetDefaults(); err != nil {
			t.Fatal(err)
		}
	}
	allowAll := mustRole(t, "ssh", types.RoleSpec{Allow: types.RoleConditions{
		Logins: []string{"{{internal.logins}}", "deploy"},
		Nodes:  &types.ResourceConditions{Labels: types.Labels{"env": {"prod"}}},
	}})
	denyRoot := mustRole(t, "no-root", types.RoleSpec{Deny: types.RoleConditions{Logins: []string{"root"}}})
	denyDB := mustRole(t, "no-db", types.RoleSpec{Deny: types.RoleConditions{Nodes: &types.ResourceConditions{Labels: types.Labels{"role": {"db"}}}}})
	loginsOnly := mustRole(t, "logins-only", types.RoleSpec{Allow: types.RoleConditions{Logins: []string{"*"}}})
	traits := map[string][]string{"logins": {"ubuntu", "root"}}
	tests := []struct {
		name    string
		roles   []*types.Role
		node    *types.Node
		login   string
		wantErr string
	}{
		{name: "trait login", roles: []*types.Role{allowAll}, node: web, login: "ubuntu"},
		{name: "literal login", roles: []*types.Role{allowAll}, node: db, login: "deploy"},
		{name: "login not allowed", roles: []*types.Role{allowAll}, node: web, login: "admin",
			wantErr: `access to node "web1" as login "admin" denied: no role allows login "admin" (roles: ssh)`},
		{name: "deny login wins", roles: []*types.Role{allowAll, denyRoot}, node: web, login: "root",
			wantErr: `access to node "web1" as login "root" denied: role "no-root" denies logins "root"`},
		{name: "deny node labels wins", roles: []*types.Role{allowAll, denyDB}, node: db, login: "ubuntu",
			wantErr: `role "no-db" denies this node`},
		{name: "deny node labels leaves others", roles: []*types.Role{allowAll, denyDB}, node: web, login: "ubuntu"},
		{name: "logins without nodes grants nothing", roles: []*types.Role{loginsOnly}, node: web, login: "ubuntu",
			wantErr: `no role's nodes.labels match this node (roles: logins-only)`},
		{name: "empty login", roles: []*types.Role{allowAll}, node: web, login: "", wantErr: "a login is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewAccessChecker(tt.roles, traits)
			if err != nil {
				t.Fatal(err)
			}
			err = c.CheckLogin(tt.node, tt.login)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckLogin: %v", err)
				}
				return
			}
			if err == nil || !trace.IsAccessDenied(err) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want AccessDenied containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestCheckRule(t *testing.T) {
	reader := mustRole(t, "reader", types.RoleSpec{Allow: types.RoleConditions{Rules: []types.Rule{{Resources: []string{"*"}, Verbs: []string{"list", "read"}}}}})
	roleAdmin := mustRole(t, "role-admin", types.RoleSpec{Allow: types.RoleConditions{Rules: []types.Rule{{Resources: []string{"role"}, Verbs: []string{"*"}}}}})
	noTokens := mustRole(t, "no-tokens", types.RoleSpec{Deny: types.RoleConditions{Rules: []types.Rule{{Resources: []string{"token"}, Verbs: []string{"*"}}}}})
	dev := mustRole(t, "dev", types.RoleSpec{})
	admin := types.BuiltinRoles()[0]
	tests := []struct {
		name       string
		roles      []*types.Role
		kind, verb string
		wantErr    string
	}{
		{name: "wildcard resource", roles: []*types.Role{reader}, kind: "user", verb: "list"},
		{name: "verb missing", roles: []*types.Role{reader}, kind: "user", verb: "create",
			wantErr: `access denied: "create" on "user" is not allowed by roles reader`},
		{name: "wildcard verb", roles: []*types.Role{roleAdmin}, kind: "role", verb: "delete"},
		{name: "other kind", roles: []*types.Role{roleAdmin, dev}, kind: "user", verb: "delete",
			wantErr: `access denied: "delete" on "user" is not allowed by roles role-admin, dev`},
		{name: "no rules", roles: []*types.Role{dev}, kind: "role", verb: "create",
			wantErr: `access denied: "create" on "role" is not allowed by roles dev`},
		{name: "admin all", roles: []*types.Role{admin}, kind: "token", verb: "create"},
		{name: "deny wins over admin", roles: []*types.Role{admin, noTokens}, kind: "token", verb: "read",
			wantErr: `access denied: "read" on "token" is denied by role "no-tokens"`},
		{name: "deny leaves others", roles: []*types.Role{admin, noTokens}, kind: "role", verb: "read"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewAccessChecker(tt.roles, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = c.CheckRule(tt.kind, tt.verb)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckRule: %v", err)
				}
				return
			}
			if err == nil || !trace.IsAccessDenied(err) || err.Error() != tt.wantErr {
				t.Errorf("err = %v, want AccessDenied %q", err, tt.wantErr)
			}
		})
	}
}

func TestSessionOptions(t *testing.T) {
	ttl := func(name string, d time.Duration, mfa bool) *types.Role {
		return mustRole(t, name, types.RoleSpec{Options: types.RoleOptions{MaxSessionTTL: types.Duration(d), RequireSessionMFA: mfa}})
	}
	tests := []struct {
		name    string
		roles   []*types.Role
		wantTTL time.Duration
		wantMFA bool
	}{
		{name: "none set uses default", roles: []*types.Role{ttl("a", 0, false)}, wantTTL: 12 * time.Hour},
		{name: "no roles", roles: nil, wantTTL: 12 * time.Hour},
		{name: "single", roles: []*types.Role{ttl("a", 8*time.Hour, false)}, wantTTL: 8 * time.Hour},
		{name: "min of non-zero", roles: []*types.Role{ttl("a", 8*time.Hour, false), ttl("b", 0, false), ttl("c", time.Hour, false)}, wantTTL: time.Hour},
		{name: "mfa OR", roles: []*types.Role{ttl("a", 0, false), ttl("b", 0, true)}, wantTTL: 12 * time.Hour, wantMFA: true},
	}
	for _, tt := range tests {
		c, err := NewAccessChecker(tt.roles, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.MaxSessionTTL(12 * time.Hour); got != tt.wantTTL {
			t.Errorf("%s: MaxSessionTTL = %v, want %v", tt.name, got, tt.wantTTL)
		}
		if got := c.RequireSessionMFA(); got != tt.wantMFA {
			t.Errorf("%s: RequireSessionMFA = %v, want %v", tt.name, got, tt.wantMFA)
		}
	}
}

func TestRequestsAndReviews(t *testing.T) {
	r := mustRole(t, "dev", types.RoleSpec{
		Allow: types.RoleConditions{Request: &types.RequestConditions{Roles: []string{"dba", "ops"}}, ReviewRequests: &types.ReviewConditions{Roles: []string{"*"}}},
		Deny:  types.RoleConditions{Request: &types.RequestConditions{Roles: []string{"ops"}}, ReviewRequests: &types.ReviewConditions{Roles: []string{"admin"}}},
	})
	c, err := NewAccessChecker([]*types.Role{r}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.RequestableRoles(), ","); got != "dba" {
		t.Errorf("RequestableRoles = %s", got)
	}
	if err := c.CheckRequestRole("dba"); err != nil {
		t.Error(err)
	}
	if err := c.CheckRequestRole("ops"); err == nil || !strings.Contains(err.Error(), `role "dev" denies request.roles "ops"`) {
		t.Errorf("CheckRequestRole(ops) = %v", err)
	}
	if err := c.CheckRequestRole("root"); err == nil || !strings.Contains(err.Error(), "no role allows requesting it (roles: dev)") {
		t.Errorf("CheckRequestRole(root) = %v", err)
	}
	if err := c.CheckReviewRole("dba"); err != nil {
		t.Error(err)
	}
	if err := c.CheckReviewRole("admin"); err == nil || !trace.IsAccessDenied(err) {
		t.Errorf("CheckReviewRole(admin) = %v", err)
	}
}

func TestNewAccessCheckerErrors(t *testing.T) {
	if _, err := NewAccessChecker([]*types.Role{nil}, nil); err == nil {
		t.Error("nil role accepted")
	}
	if _, err := NewAccessChecker(nil, nil, WithIdentityKind("robot")); err == nil || !strings.Contains(err.Error(), `identity kind "robot"`) {
		t.Errorf("bad kind: %v", err)
	}
	// A role that skipped validation still cannot smuggle a malformed template.
	bad := &types.Role{Metadata: types.Metadata{Name: "bad"}, Spec: types.RoleSpec{Allow: types.RoleConditions{Logins: []string{"{{internal.x"}}}}
	if _, err := NewAccessChecker([]*types.Role{bad}, nil); err == nil || !strings.Contains(err.Error(), `role "bad": spec.allow.logins`) {
		t.Errorf("malformed template: %v", err)
	}
	c, err := NewAccessChecker(types.BuiltinRoles(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.Roles(), ","); got != "admin,access" {
		t.Errorf("Roles = %s", got)
	}
}

func TestDatabaseAccess(t *testing.T) {
	dev := &types.Database{Metadata: types.Metadata{Name: "pg1", Labels: map[string]string{"env": "dev"}}}
	prod := &types.Database{Metadata: types.Metadata{Name: "pg2", Labels: map[string]string{"env": "prod"}}}
	reader := mustRole(t, "reader", types.RoleSpec{Allow: types.RoleConditions{Databases: &types.DatabaseConditions{
		Labels: types.Labels{"env": {"dev", "prod"}}, DBUsers: []string{"{{internal.db_users}}", "reader"}, DBNames: []string{"app"},
	}}})
	noProd := mustRole(t, "no-prod", types.RoleSpec{Deny: types.RoleConditions{Databases: &types.DatabaseConditions{
		Labels: types.Labels{"env": {"prod"}},
	}}})
	denyUser := mustRole(t, "deny-root", types.RoleSpec{Deny: types.RoleConditions{Databases: &types.DatabaseConditions{
		Labels: types.Labels{"env": {"dev"}}, DBUsers: []string{"root"},
	}}})
	traits := map[string][]string{"db_users": {"alice"}}
	for _, tc := range []struct {
		name        string
		roles       []*types.Role
		db          *types.Database
		visible     bool
		users, dbns string
	}{
		{"labels allow, traits expanded", []*types.Role{reader}, dev, true, "alice,reader", "app"},
		{"full deny hides", []*types.Role{reader, noProd}, prod, false, "", ""},
		{"other db stays visible", []*types.Role{reader, noProd}, dev, true, "alice,reader", "app"},
		{"user-level deny does not hide the database", []*types.Role{reader, denyUser}, dev, true, "alice,reader", "app"},
		{"no allowing role", []*types.Role{noProd}, dev, false, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewAccessChecker(tc.roles, traits)
			if err != nil {
				t.Fatal(err)
			}
			visible, users, names, err := c.DatabaseAccess(tc.db)
			if err != nil {
				t.Fatal(err)
			}
			if visible != tc.visible || strings.Join(users, ",") != tc.users || strings.Join(names, ",") != tc.dbns {
				t.Fatalf("DatabaseAccess = %v %v %v, want %v %q %q", visible, users, names, tc.visible, tc.users, tc.dbns)
			}
		})
	}
}
