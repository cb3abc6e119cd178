package types

// Built-in role names. The server refuses to overwrite or delete them.
const (
	RoleAdmin  = "admin"
	RoleAccess = "access"
)

// IsBuiltinRole reports whether name is a built-in role.
func IsBuiltinRole(name string) bool {
	return name == RoleAdmin || name == RoleAccess
}

// BuiltinRoles returns fresh copies of the built-in roles.
//
// Both grant data access to every resource, with the concrete accounts coming
// from the user's traits (db_users, logins, kube_groups, kube_users;
// any db name), so an admin still has to be given accounts explicitly. admin
// also holds every admin API rule and runs admin statements; access leaves
// statements at the identity-kind default (read for agents).
func BuiltinRoles() []*Role {
	return []*Role{builtinRole(RoleAdmin), builtinRole(RoleAccess)}
}

func builtinRole(name string) *Role {
	all := func() Labels { return Labels{Wildcard: {Wildcard}} }
	r := &Role{
		Kind:     KindRole,
		Version:  Version,
		Metadata: Metadata{Name: name, Description: "built-in role", Labels: map[string]string{"sigil.dev/builtin": "true"}},
		Spec: RoleSpec{
			Allow: RoleConditions{
				Databases: &DatabaseConditions{
					Labels:  all(),
					DBUsers: []string{"{{internal.db_users}}"},
					DBNames: []string{Wildcard},
				},
				Logins: []string{"{{internal.logins}}"},
				Nodes:  &ResourceConditions{Labels: all()},
				Kube:   &KubeConditions{Labels: all(), Groups: []string{"{{internal.kube_groups}}"}, Users: []string{"{{internal.kube_users}}"}},
				Apps:   &ResourceConditions{Labels: all()},
			},
		},
	}
	if name == RoleAdmin {
		r.Spec.Allow.Databases.Statements = StatementsAdmin
		r.Spec.Allow.Rules = []Rule{{Resources: []string{Wildcard}, Verbs: []string{Wildcard}}}
		r.Spec.Allow.ReviewRequests = &ReviewConditions{Roles: []string{Wildcard}}
	}
	return r
}
