package sso

import (
	"reflect"
	"strings"
	"testing"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
)

func TestRoles(t *testing.T) {
	tests := []struct {
		name   string
		rules  []Rule
		claims Claims
		want   []string
	}{
		{
			name:   "literal",
			rules:  []Rule{{Key: "groups", Value: "admins", Roles: []string{"admin"}}},
			claims: Claims{"groups": {"eng", "admins"}},
			want:   []string{"admin"},
		},
		{
			name:   "literal is exact, not a substring",
			rules:  []Rule{{Key: "groups", Value: "admins", Roles: []string{"admin"}}},
			claims: Claims{"groups": {"not-admins", "admins-x"}},
			want:   nil,
		},
		{
			name:   "literal with regexp metacharacters is literal",
			rules:  []Rule{{Key: "groups", Value: "a.b", Roles: []string{"ab"}}},
			claims: Claims{"groups": {"axb", "a.b"}},
			want:   []string{"ab"},
		},
		{
			name:   "glob with capture",
			rules:  []Rule{{Key: "groups", Value: "db-*", Roles: []string{"$1-reader"}}},
			claims: Claims{"groups": {"db-sales", "web-ops", "db-hr"}},
			want:   []string{"sales-reader", "hr-reader"},
		},
		{
			name:   "regex with capture in braces",
			rules:  []Rule{{Key: "groups", Value: "^team-([a-z]+)-(ro|rw)$", Roles: []string{"${1}${2}", "$2-$1"}}},
			claims: Claims{"groups": {"team-pay-rw", "team-PAY-rw", "team-pay-xx"}},
			want:   []string{"payrw", "rw-pay"},
		},
		{
			name:   "$1 followed by letters is capture 1 then the letters",
			rules:  []Rule{{Key: "groups", Value: "^g-(.*)$", Roles: []string{"$1reader"}}},
			claims: Claims{"groups": {"g-x"}},
			want:   []string{"xreader"},
		},
		{
			name:   "regex anchors are the user's; unanchored part must still match all",
			rules:  []Rule{{Key: "email", Value: "^.*@example\\.com$", Roles: []string{"staff"}}},
			claims: Claims{"email": {"alice@example.com.evil.org", "bob@example.com"}},
			want:   []string{"staff"},
		},
		{
			name:   "wildcard matches any value of the claim",
			rules:  []Rule{{Key: "sub", Value: "*", Roles: []string{"everyone"}}},
			claims: Claims{"sub": {"123"}},
			want:   []string{"everyone"},
		},
		{
			name:   "wildcard needs the claim",
			rules:  []Rule{{Key: "groups", Value: "*", Roles: []string{"everyone"}}},
			claims: Claims{"sub": {"123"}},
			want:   nil,
		},
		{
			name: "several rules, duplicates removed, rule order kept",
			rules: []Rule{
				{Key: "groups", Value: "dev*", Roles: []string{"dev", "access"}},
				{Key: "groups", Value: "ops", Roles: []string{"access", "ops"}},
			},
			claims: Claims{"groups": {"ops", "developers", "devops"}},
			want:   []string{"dev", "access", "ops"},
		},
		{
			name:   "capture that makes an invalid role name is skipped",
			rules:  []Rule{{Key: "groups", Value: "^db-(.*)$", Roles: []string{"$1-reader"}}},
			claims: Claims{"groups": {"db-a b", "db-/x", "db-ok"}},
			want:   []string{"ok-reader"},
		},
		{
			name:   "empty capture that makes a name starting with a dash is still a name",
			rules:  []Rule{{Key: "groups", Value: "^db-(.*)$", Roles: []string{"$1"}}},
			claims: Claims{"groups": {"db-"}},
			want:   nil,
		},
		{
			name:   "claims are case sensitive",
			rules:  []Rule{{Key: "Groups", Value: "admins", Roles: []string{"admin"}}},
			claims: Claims{"groups": {"admins"}},
			want:   nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewMapper("okta", "claim", tt.rules, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Roles(tt.claims); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Roles = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNewMapperErrors(t *testing.T) {
	tests := []struct {
		name string
		rule Rule
		want string
	}{
		{"bad regexp", Rule{Key: "g", Value: "^(a$", Roles: []string{"x"}}, "invalid regular expression"},
		{"capture out of range", Rule{Key: "g", Value: "^a(b)$", Roles: []string{"$2"}}, "refers to capture $2"},
		{"capture on a literal", Rule{Key: "g", Value: "admins", Roles: []string{"$1"}}, "has 0 capture(s)"},
		{"invalid role", Rule{Key: "g", Value: "a", Roles: []string{"no spaces"}}, "may only contain"},
		{"empty value", Rule{Key: "g", Value: "", Roles: []string{"x"}}, "must not be empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewMapper("c", "claim", []Rule{tt.rule}, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestTraits(t *testing.T) {
	tests := []struct {
		name   string
		traits map[string]string
		claims Claims
		want   map[string][]string
	}{
		{
			name:   "claim values become trait values",
			traits: map[string]string{"db_users": "preferred_username", "logins": "unix"},
			claims: Claims{"preferred_username": {"alice"}, "unix": {"alice", "deploy"}},
			want:   map[string][]string{"db_users": {"alice"}, "logins": {"alice", "deploy"}},
		},
		{
			name:   "missing claim gives no trait",
			traits: map[string]string{"db_users": "db_user"},
			claims: Claims{"email": {"a@b"}},
			want:   nil,
		},
		{
			name:   "values a certificate cannot carry are dropped",
			traits: map[string]string{"logins": "unix"},
			claims: Claims{"unix": {"", "ok", "bad\nline", strings.Repeat("x", 2000)}},
			want:   map[string][]string{"logins": {"ok"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewMapper("c", "claim", nil, tt.traits)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.Traits(tt.claims); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Traits = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMapRefusalNamesClaimsAndRules(t *testing.T) {
	c := &types.OIDCConnector{
		Metadata: types.Metadata{Name: "okta"},
		Spec: types.OIDCConnectorSpec{
			IssuerURL: "https://idp.example.com",
			ClientID:  "sigil",
			ClaimsToRoles: []types.ClaimMapping{
				{Claim: "groups", Value: "^db-(.*)$", Roles: []string{"$1-reader"}},
				{Claim: "department", Value: "ops", Roles: []string{"ops"}},
			},
		},
	}
	if err := c.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	m, err := ForOIDC(c)
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Map(Claims{"groups": {"eng", "sales"}, "email": {"alice@example.com"}, "sub": {"1"}})
	if !trace.IsAccessDenied(err) {
		t.Fatalf("err = %v, want AccessDenied", err)
	}
	msg := err.Error()
	for _, want := range []string{
		`connector "okta"`,
		`groups=["eng", "sales"]`,
		"no department",
		"other claims: email, sub",
		`claim groups matches "^db-(.*)$" -> [$1-reader]`,
		`claim department = "ops" -> [ops]`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal %q does not contain %q", msg, want)
		}
	}
	// The claim values themselves (e.g. an email) are not listed unless a
	// rule reads the claim.
	if strings.Contains(msg, "alice@example.com") {
		t.Errorf("refusal lists the value of an unmapped claim: %q", msg)
	}

	res, err := m.Map(Claims{"groups": {"db-pay"}})
	if err != nil || !reflect.DeepEqual(res.Roles, []string{"pay-reader"}) {
		t.Fatalf("Map = %+v, %v", res, err)
	}
}

func TestMapRefusalIsBounded(t *testing.T) {
	m, err := NewMapper("c", "attribute", []Rule{{Key: "groups", Value: "x", Roles: []string{"x"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	many := make([]string, 500)
	for i := range many {
		many[i] = strings.Repeat("g", 300)
	}
	_, err = m.Map(Claims{"groups": many})
	if err == nil || len(err.Error()) > maxReportLen+10 {
		t.Fatalf("refusal is %d bytes", len(err.Error()))
	}
}

func TestFromJSON(t *testing.T) {
	got := FromJSON(map[string]any{
		"email":    "alice@example.com",
		"groups":   []any{"a", "b", map[string]any{"x": 1}, 3.0},
		"verified": true,
		"n":        42.5,
		"nested":   map[string]any{"a": "b"},
		"empty":    []any{},
	})
	want := Claims{
		"email":    {"alice@example.com"},
		"groups":   {"a", "b", "3"},
		"verified": {"true"},
		"n":        {"42.5"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("FromJSON = %v, want %v", got, want)
	}
}
