package types

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gravitational/trace"
)

const devRole = `kind: role
version: v1
metadata: {name: dev, labels: {team: db}}
spec:
  options:
    max_session_ttl: 8h
    require_session_mfa: true
  allow:
    databases:
      labels: {env: [staging], tier: "db-*"}
      db_users: ["{{internal.db_users}}", reader]
      db_names: ["*"]
      statements: read
      write_approval: true
    logins: ["{{internal.logins}}"]
    nodes: {labels: {"*": "*"}}
    kube: {labels: {"*": "*"}, groups: [viewers], users: []}
    apps: {labels: {"*": "*"}}
    request: {roles: [dba], max_duration: 4h, approvals: 1}
    review_requests: {roles: [dba]}
    rules:
      - resources: [role, user]
        verbs: [list, read]
  deny: {}
`

func TestParseRole(t *testing.T) {
	rs, err := ParseYAML([]byte(devRole))
	if err != nil {
		t.Fatalf("ParseYAML: %v", err)
	}
	if len(rs) != 1 {
		t.Fatalf("got %d resources, want 1", len(rs))
	}
	r, ok := rs[0].(*Role)
	if !ok {
		t.Fatalf("got %T, want *Role", rs[0])
	}
	if r.Metadata.Name != "dev" || r.Metadata.Labels["team"] != "db" {
		t.Errorf("metadata = %+v", r.Metadata)
	}
	if got := r.Spec.Options.MaxSessionTTL.Duration(); got != 8*time.Hour {
		t.Errorf("max_session_ttl = %v", got)
	}
	if !r.Spec.Options.RequireSessionMFA {
		t.Error("require_session_mfa not set")
	}
	db := r.Spec.Allow.Databases
	if db == nil || db.Statements != "read" || !db.WriteApproval {
		t.Fatalf("databases = %+v", db)
	}
	if got := db.Labels["env"]; len(got) != 1 || got[0] != "staging" {
		t.Errorf("labels env = %v", got)
	}
	if got := db.Labels["tier"]; len(got) != 1 || got[0] != "db-*" {
		t.Errorf("labels tier = %v", got)
	}
	if got := strings.Join(db.DBUsers, ","); got != "{{internal.db_users}},reader" {
		t.Errorf("db_users = %s", got)
	}
	if r.Spec.Allow.Request.MaxDuration.Duration() != 4*time.Hour || r.Spec.Allow.Request.Approvals != 1 {
		t.Errorf("request = %+v", r.Spec.Allow.Request)
	}
	if len(r.Spec.Allow.Rules) != 1 || r.Spec.Allow.Rules[0].Verbs[1] != "read" {
		t.Errorf("rules = %+v", r.Spec.Allow.Rules)
	}
	if r.Spec.Deny.Databases != nil {
		t.Errorf("deny.databases = %+v", r.Spec.Deny.Databases)
	}
}

func TestParseErrors(t *testing.T) {
	role := func(spec string) string {
		return "kind: role\nversion: v1\nmetadata: {name: dev}\nspec:\n" + spec
	}
	tests := []struct {
		name  string
		input string
		want  []string // substrings of the error
	}{
		{
			name:  "bad statements",
			input: role("  allow:\n    databases:\n      labels: {env: prod}\n      statements: wrte\n"),
			want:  []string{`role "dev": spec.allow.databases.statements: "wrte" is not one of read, write, admin`},
		},
		{
			name:  "unknown field",
			input: role("  allow:\n    databasez: {}\n"),
			want:  []string{"line 6: spec.allow.databasez: unknown field", "known fields: apps, databases"},
		},
		{
			name:  "unknown top-level field",
			input: "kind: role\nversion: v1\nmetadata: {name: dev}\nspecs: {}\n",
			want:  []string{"line 4: specs: unknown field"},
		},
		{
			name:  "unknown metadata field",
			input: "kind: role\nversion: v1\nmetadata: {name: dev, nmae: x}\n",
			want:  []string{"line 3: metadata.nmae: unknown field"},
		},
		{
			name:  "bad label regex",
			input: role("  allow:\n    databases:\n      labels: {env: '^prod(-[a-z$'}\n"),
			want:  []string{"spec.allow.databases.labels[env]: invalid regular expression"},
		},
		{
			name:  "wildcard key with other value",
			input: role("  allow:\n    nodes: {labels: {'*': prod}}\n"),
			want:  []string{`spec.allow.nodes.labels[*]: the wildcard key only takes the value "*"`},
		},
		{
			name:  "bad duration",
			input: role("  options:\n    max_session_ttl: 8 hours\n"),
			want:  []string{`line 6: invalid duration "8 hours"`},
		},
		{
			name:  "duration as list",
			input: role("  options:\n    max_session_ttl: [8h]\n"),
			want:  []string{"line 6: duration must be a string"},
		},
		{
			name:  "missing kind",
			input: "version: v1\nmetadata: {name: x}\n",
			want:  []string{"document 1: line 1: kind: required, one of role, user"},
		},
		{
			name:  "unknown kind",
			input: "kind: rolez\nversion: v1\nmetadata: {name: x}\n",
			want:  []string{`line 1: kind: "rolez" is not one of role`},
		},
		{
			name:  "missing version",
			input: "kind: role\nmetadata: {name: x}\n",
			want:  []string{`version: required, use "v1"`},
		},
		{
			name:  "unknown version",
			input: "kind: role\nversion: v2\nmetadata: {name: x}\n",
			want:  []string{`line 2: version: "v2" is not supported (use "v1")`},
		},
		{
			name:  "empty name",
			input: "kind: role\nversion: v1\nmetadata: {}\n",
			want:  []string{"metadata.name: must not be empty"},
		},
		{
			name:  "bad name chars",
			input: "kind: role\nversion: v1\nmetadata: {name: 'a b'}\n",
			want:  []string{`metadata.name: "a b" may only contain letters, digits and . _ @ -`},
		},
		{
			name:  "leading dot",
			input: "kind: role\nversion: v1\nmetadata: {name: .hidden}\n",
			want:  []string{`metadata.name: ".hidden" must not start with a dot`},
		},
		{
			name:  "long name",
			input: "kind: role\nversion: v1\nmetadata: {name: " + strings.Repeat("a", 254) + "}\n",
			want:  []string{"longer than 253 characters"},
		},
		{
			name:  "bad rule verb",
			input: role("  allow:\n    rules: [{resources: [role], verbs: [write]}]\n"),
			want:  []string{`spec.allow.rules[0].verbs: "write" is not one of list, read, create, update, delete, *`},
		},
		{
			name:  "bad rule resource",
			input: role("  allow:\n    rules: [{resources: [roles], verbs: [read]}]\n"),
			want:  []string{`spec.allow.rules[0].resources: "roles" is not one of role`},
		},
		{
			name:  "malformed template",
			input: role("  allow:\n    logins: ['{{internal.logins']\n"),
			want:  []string{"spec.allow.logins:", "is not a valid trait template"},
		},
		{
			name:  "statements in deny",
			input: role("  deny:\n    databases: {statements: write}\n"),
			want:  []string{"spec.deny.databases.statements: not supported in deny"},
		},
		{
			name:  "type mismatch",
			input: role("  allow:\n    request: {approvals: many}\n"),
			want:  []string{"line 6", "cannot unmarshal"},
		},
		{
			name:  "garbage bytes",
			input: "\x00\xff\xfe{{{[[[:::",
			want:  []string{"document 1: invalid YAML"},
		},
		{
			name:  "scalar document",
			input: "hello",
			want:  []string{"expected a resource"},
		},
		{
			name:  "empty",
			input: "---\n---\n",
			want:  []string{"no resources found"},
		},
		{
			name:  "second document bad",
			input: "kind: node\nversion: v1\nmetadata: {name: n1}\nspec: {addr: 'h:22'}\n---\nkind: database\nversion: v1\nmetadata: {name: pg}\nspec: {protocol: oracle, uri: 'h:5432'}\n",
			want:  []string{`document 2: database "pg": spec.protocol: "oracle" is not one of postgres, mysql`},
		},
		{
			name:  "database bad uri",
			input: "kind: database\nversion: v1\nmetadata: {name: pg}\nspec: {protocol: postgres, uri: 'nohost'}\n",
			want:  []string{`spec.uri: "nohost" is not HOST:PORT`},
		},
		{
			name:  "database bad ca",
			input: "kind: database\nversion: v1\nmetadata: {name: pg}\nspec: {protocol: postgres, uri: 'h:5432', ca_cert: 'nope'}\n",
			want:  []string{"spec.ca_cert: no PEM CERTIFICATE block found"},
		},
		{
			name:  "token without expiry",
			input: "kind: token\nversion: v1\nmetadata: {name: abc}\nspec: {kind: bot, bot_name: ci, roles: [access]}\n",
			want:  []string{"metadata.expires: required for tokens"},
		},
		{
			name:  "token on behalf for bot",
			input: "kind: token\nversion: v1\nmetadata: {name: abc, expires: 2030-01-01T00:00:00Z}\nspec: {kind: bot, bot_name: ci, roles: [access], on_behalf_of: alice}\n",
			want:  []string{"spec.on_behalf_of: only agents act on behalf of a user"},
		},
		{
			name:  "lock two targets",
			input: "kind: lock\nversion: v1\nmetadata: {name: l1}\nspec: {target: {user: a, role: b}}\n",
			want:  []string{"spec.target: set exactly one of user, role, bot"},
		},
		{
			name:  "user password field rejected",
			input: "kind: user\nversion: v1\nmetadata: {name: alice}\nspec: {roles: [access], password: hunter2}\n",
			want:  []string{"spec.password: unknown field"},
		},
		{
			name:  "too large",
			input: strings.Repeat("#", MaxInputSize+1),
			want:  []string{"larger than the 1048576 byte limit"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseYAML([]byte(tt.input))
			if err == nil {
				t.Fatal("expected an error")
			}
			if !trace.IsBadParameter(err) {
				t.Errorf("error %q is %T, want BadParameter", err, trace.Unwrap(err))
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseMultiDoc(t *testing.T) {
	input := devRole + `---
kind: user
version: v1
metadata: {name: alice@example.com}
spec:
  roles: [dev, access]
  traits: {db_users: [alice], logins: [ubuntu]}
---
kind: database
version: v1
metadata: {name: pg1, labels: {env: staging}}
spec: {protocol: postgres, uri: "db.internal:5432"}
---
kind: node
version: v1
metadata: {name: web1}
spec: {addr: "10.0.0.5:22"}
---
kind: token
version: v1
metadata: {name: 3f2a9c, expires: 2030-01-01T00:00:00Z}
spec: {kind: agent, bot_name: claude, roles: [access], on_behalf_of: alice@example.com}
---
kind: lock
version: v1
metadata: {name: lock-alice}
spec: {target: {user: alice@example.com}, message: compromised laptop}
---
kind: app
version: v1
metadata: {name: grafana}
spec: {uri: "http://localhost:3000"}
---
`
	rs, err := ParseYAML([]byte(input))
	if err != nil {
		t.Fatalf("ParseYAML: %v", err)
	}
	wantKinds := []string{KindRole, KindUser, KindDatabase, KindNode, KindToken, KindLock, KindApp}
	if len(rs) != len(wantKinds) {
		t.Fatalf("got %d resources, want %d", len(rs), len(wantKinds))
	}
	for i, r := range rs {
		if r.GetKind() != wantKinds[i] || r.GetVersion() != Version {
			t.Errorf("resource %d: kind %q version %q", i, r.GetKind(), r.GetVersion())
		}
	}
	u := rs[1].(*User)
	if u.Spec.Traits["db_users"][0] != "alice" || u.Spec.Roles[1] != "access" {
		t.Errorf("user = %+v", u.Spec)
	}
	tok := rs[4].(*Token)
	if tok.Expiry().Year() != 2030 || tok.Spec.OnBehalfOf != "alice@example.com" {
		t.Errorf("token = %+v", tok)
	}
	if !rs[5].(*Lock).Matches("alice@example.com", nil, "") || rs[5].(*Lock).Matches("bob", []string{"dev"}, "") {
		t.Error("lock target matching is wrong")
	}
	if rs[6].(*GenericResource).Spec["uri"] != "http://localhost:3000" {
		t.Errorf("app spec = %v", rs[6].(*GenericResource).Spec)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	rs, err := ParseYAML([]byte(devRole))
	if err != nil {
		t.Fatal(err)
	}
	data, err := MarshalResource(rs[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"max_session_ttl":"8h"`, `"require_session_mfa":true`, `"db_users":["{{internal.db_users}}","reader"]`, `"write_approval":true`, `"env":["staging"]`} {
		if !bytes.Contains(data, []byte(want)) {
			t.Errorf("JSON %s lacks %s", data, want)
		}
	}
	back, err := UnmarshalResource(KindRole, data)
	if err != nil {
		t.Fatalf("UnmarshalResource: %v", err)
	}
	again, _ := json.Marshal(back)
	if !bytes.Equal(data, again) {
		t.Errorf("round trip changed:\n%s\n%s", data, again)
	}

	// YAML round trip through MarshalYAML.
	y, err := MarshalYAML(rs[0], BuiltinRoles()[0])
	if err != nil {
		t.Fatal(err)
	}
	rs2, err := ParseYAML(y)
	if err != nil {
		t.Fatalf("re-parse of MarshalYAML output: %v\n%s", err, y)
	}
	if len(rs2) != 2 || rs2[1].GetMetadata().Name != RoleAdmin {
		t.Errorf("got %d resources", len(rs2))
	}
	if !bytes.Contains(y, []byte("max_session_ttl: 8h")) {
		t.Errorf("YAML lacks compact duration:\n%s", y)
	}
}

func TestUnmarshalResourceErrors(t *testing.T) {
	tests := []struct {
		kind, input, want string
	}{
		{"", `{"kind":"role","version":"v1","metadata":{"name":"x"},"spec":{"bogus":1}}`, `unknown field "bogus"`},
		{"user", `{"kind":"role","version":"v1","metadata":{"name":"x"}}`, `kind: got "role", want "user"`},
		{"", `{"version":"v1","metadata":{"name":"x"}}`, "kind: required"},
		{"", `{"kind":"role","version":"v9","metadata":{"name":"x"}}`, `version: "v9" is not supported`},
		{"", `not json`, "invalid resource JSON"},
		{"role", `{"metadata":{"name":"x"},"spec":{"allow":{"databases":{"statements":"wrte"}}}}`, `spec.allow.databases.statements: "wrte" is not one of read, write, admin`},
		{"role", `{"metadata":{"name":"x"},"spec":{"allow":{"databases":{"labels":{"env":5}}}}}`, `label "env" must be a string or a list of strings`},
	}
	for _, tt := range tests {
		_, err := UnmarshalResource(tt.kind, []byte(tt.input))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("UnmarshalResource(%q, %s) = %v, want error containing %q", tt.kind, tt.input, err, tt.want)
		}
	}
	// JSON labels accept a plain string.
	r, err := UnmarshalResource("role", []byte(`{"metadata":{"name":"x"},"spec":{"allow":{"nodes":{"labels":{"env":"prod","*":["*"]}}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := r.(*Role).Spec.Allow.Nodes.Labels["env"]; len(got) != 1 || got[0] != "prod" {
		t.Errorf("labels = %v", got)
	}
	if r.GetKind() != KindRole || r.GetVersion() != Version {
		t.Errorf("defaults not set: %q %q", r.GetKind(), r.GetVersion())
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		out     string
		wantErr bool
	}{
		{in: "8h", want: 8 * time.Hour, out: "8h"},
		{in: "90m", want: 90 * time.Minute, out: "1h30m"},
		{in: "365d", want: 365 * 24 * time.Hour, out: "8760h"},
		{in: "1d12h", want: 36 * time.Hour, out: "36h"},
		{in: "1d", want: 24 * time.Hour, out: "24h"},
		{in: "1.5s", want: 1500 * time.Millisecond, out: "1.5s"},
		{in: "0s", want: 0, out: "0s"},
		{in: "", wantErr: true},
		{in: "d", wantErr: true},
		{in: "xd", wantErr: true},
		{in: "-1h", wantErr: true},
		{in: "1d-1h", wantErr: true},
		{in: "8 hours", wantErr: true},
		{in: "99999999d", wantErr: true},
	}
	for _, tt := range tests {
		d, err := ParseDuration(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("ParseDuration(%q) = %v, want error", tt.in, d)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseDuration(%q): %v", tt.in, err)
			continue
		}
		if d.Duration() != tt.want || d.String() != tt.out {
			t.Errorf("ParseDuration(%q) = %v (%s), want %v (%s)", tt.in, d.Duration(), d, tt.want, tt.out)
		}
	}
}

func TestBuiltinRoles(t *testing.T) {
	roles := BuiltinRoles()
	if len(roles) != 2 {
		t.Fatalf("got %d builtin roles", len(roles))
	}
	for _, r := range roles {
		if err := r.CheckAndSetDefaults(); err != nil {
			t.Errorf("builtin %s invalid: %v", r.Metadata.Name, err)
		}
		if !IsBuiltinRole(r.Metadata.Name) {
			t.Errorf("IsBuiltinRole(%q) = false", r.Metadata.Name)
		}
	}
	if IsBuiltinRole("dev") {
		t.Error("IsBuiltinRole(dev) = true")
	}
	if len(roles[0].Spec.Allow.Rules) == 0 || len(roles[1].Spec.Allow.Rules) != 0 {
		t.Error("admin must hold rules and access must not")
	}
	// Fresh copies: mutating one must not leak into the next call.
	roles[0].Spec.Allow.Rules = nil
	if len(BuiltinRoles()[0].Spec.Allow.Rules) == 0 {
		t.Error("BuiltinRoles returned shared state")
	}
}

func TestAliasBombRejected(t *testing.T) {
	var b strings.Builder
	b.WriteString("kind: app\nversion: v1\nmetadata: {name: x}\nspec:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 12; i++ {
		b.WriteString("  a" + strconv.Itoa(i) + ": &a" + strconv.Itoa(i) + " [")
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*a" + strconv.Itoa(i-1))
		}
		b.WriteString("]\n")
	}
	_, err := ParseYAML([]byte(b.String()))
	if err == nil || !trace.IsBadParameter(err) {
		t.Fatalf("alias bomb: got %v, want BadParameter", err)
	}
	t.Log(err)
}

func FuzzParseYAML(f *testing.F) {
	f.Add([]byte(devRole))
	f.Add([]byte("kind: user\nversion: v1\nmetadata: {name: a}\n---\nkind: lock\n"))
	f.Add([]byte("\x00\xff"))
	f.Add([]byte("a: &a [*a]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := ParseYAML(data)
		if err != nil {
			if !trace.IsBadParameter(err) {
				t.Fatalf("non-BadParameter error %T: %v", trace.Unwrap(err), err)
			}
			return
		}
		for _, r := range rs {
			// Whatever parsed must survive the JSON wire form.
			data, err := MarshalResource(r)
			if err != nil {
				continue // e.g. opaque specs with non-string map keys
			}
			if _, err := UnmarshalResource(r.GetKind(), data); err != nil {
				t.Fatalf("re-decode of %s failed: %v", data, err)
			}
		}
	})
}
