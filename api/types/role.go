package types

import (
	"regexp"
	"strconv"
	"strings"

	"github.com/gravitational/trace"
)

// Statement classes a database role may grant, least to most permissive.
const (
	StatementsRead  = "read"
	StatementsWrite = "write"
	StatementsAdmin = "admin"
)

// Admin API verbs used in rules.
const (
	VerbList   = "list"
	VerbRead   = "read"
	VerbCreate = "create"
	VerbUpdate = "update"
	VerbDelete = "delete"
)

// RuleResourceAudit names the audit log in role rules: "list" (search,
// export, watch) on "audit" lets a role read everyone's events; without
// it a caller reads only their own.
const RuleResourceAudit = "audit"

// RuleResourceRecordings names SSH session recordings in role rules:
// "read" on "recordings" lets a role replay everyone's sessions; without
// it a caller replays only their own.
const RuleResourceRecordings = "recordings"

// RuleResourceApprovals names agents' write approvals in role rules:
// "update" on "approvals" lets a role review every agent's writes, "list"
// lets it see them; without it a person reviews only the writes of agents
// acting on their behalf.
const RuleResourceApprovals = "approvals"

// RuleResources lists what role rules may name: every resource kind, the
// audit log, session recordings and write approvals.
func RuleResources() []string {
	return append(Kinds(), RuleResourceAudit, RuleResourceRecordings, RuleResourceApprovals)
}

// StatementsRank orders statement classes: read 1, write 2, admin 3, anything else 0.
func StatementsRank(s string) int {
	switch s {
	case StatementsRead:
		return 1
	case StatementsWrite:
		return 2
	case StatementsAdmin:
		return 3
	}
	return 0
}

// Role grants and denies access.
type Role struct {
	Kind     string   `json:"kind" yaml:"kind"`
	Version  string   `json:"version" yaml:"version"`
	Metadata Metadata `json:"metadata" yaml:"metadata"`
	Spec     RoleSpec `json:"spec" yaml:"spec"`
}

// RoleSpec is the body of a role.
type RoleSpec struct {
	Options RoleOptions    `json:"options,omitzero" yaml:"options,omitempty"`
	Allow   RoleConditions `json:"allow,omitzero" yaml:"allow,omitempty"`
	Deny    RoleConditions `json:"deny,omitzero" yaml:"deny,omitempty"`
}

// RoleOptions tune sessions granted by the role.
type RoleOptions struct {
	MaxSessionTTL     Duration `json:"max_session_ttl,omitempty" yaml:"max_session_ttl,omitempty"`
	RequireSessionMFA bool     `json:"require_session_mfa,omitempty" yaml:"require_session_mfa,omitempty"`
	// SSHPortForwarding lets SSH sessions forward ports (ssh -L, -R, -D);
	// off unless a role turns it on.
	SSHPortForwarding bool `json:"ssh_port_forwarding,omitempty" yaml:"ssh_port_forwarding,omitempty"`
	// SSHAgentForwarding lets SSH sessions forward the client's agent
	// (ssh -A); off unless a role turns it on.
	SSHAgentForwarding bool `json:"ssh_agent_forwarding,omitempty" yaml:"ssh_agent_forwarding,omitempty"`
}

// RoleConditions is the shape of both allow and deny.
type RoleConditions struct {
	Databases      *DatabaseConditions `json:"databases,omitempty" yaml:"databases,omitempty"`
	Logins         []string            `json:"logins,omitempty" yaml:"logins,omitempty"`
	Nodes          *ResourceConditions `json:"nodes,omitempty" yaml:"nodes,omitempty"`
	Kube           *KubeConditions     `json:"kube,omitempty" yaml:"kube,omitempty"`
	Apps           *ResourceConditions `json:"apps,omitempty" yaml:"apps,omitempty"`
	Request        *RequestConditions  `json:"request,omitempty" yaml:"request,omitempty"`
	ReviewRequests *ReviewConditions   `json:"review_requests,omitempty" yaml:"review_requests,omitempty"`
	Rules          []Rule              `json:"rules,omitempty" yaml:"rules,omitempty"`
}

// DatabaseConditions select databases and what may be done on them.
type DatabaseConditions struct {
	Labels  Labels   `json:"labels,omitempty" yaml:"labels,omitempty"`
	DBUsers []string `json:"db_users,omitempty" yaml:"db_users,omitempty"`
	DBNames []string `json:"db_names,omitempty" yaml:"db_names,omitempty"`
	// Statements is read, write or admin; empty means the default for the
	// identity kind (admin for humans and bots, read for agents).
	Statements    string `json:"statements,omitempty" yaml:"statements,omitempty"`
	WriteApproval bool   `json:"write_approval,omitempty" yaml:"write_approval,omitempty"`
}

// ResourceConditions select resources by label.
type ResourceConditions struct {
	Labels Labels `json:"labels,omitempty" yaml:"labels,omitempty"`
}

// KubeConditions select clusters and the groups/users to impersonate.
type KubeConditions struct {
	Labels Labels   `json:"labels,omitempty" yaml:"labels,omitempty"`
	Groups []string `json:"groups,omitempty" yaml:"groups,omitempty"`
	Users  []string `json:"users,omitempty" yaml:"users,omitempty"`
}

// RequestConditions list roles that may be requested.
type RequestConditions struct {
	Roles       []string `json:"roles,omitempty" yaml:"roles,omitempty"`
	MaxDuration Duration `json:"max_duration,omitempty" yaml:"max_duration,omitempty"`
	Approvals   int      `json:"approvals,omitempty" yaml:"approvals,omitempty"`
}

// ReviewConditions list roles whose requests may be reviewed.
type ReviewConditions struct {
	Roles []string `json:"roles,omitempty" yaml:"roles,omitempty"`
}

// Rule grants admin API verbs on resource kinds.
type Rule struct {
	Resources []string `json:"resources" yaml:"resources"`
	Verbs     []string `json:"verbs" yaml:"verbs"`
}

// NewRole builds and validates a role.
func NewRole(name string, spec RoleSpec) (*Role, error) {
	r := &Role{Metadata: Metadata{Name: name}, Spec: spec}
	if err := r.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return r, nil
}

// CheckAndSetDefaults validates the role.
func (r *Role) CheckAndSetDefaults() error {
	if err := checkHeader(&r.Kind, &r.Version, &r.Metadata, KindRole); err != nil {
		return trace.Wrap(err)
	}
	if r.Spec.Options.MaxSessionTTL < 0 {
		return trace.BadParameter("spec.options.max_session_ttl: must not be negative")
	}
	if err := r.Spec.Allow.check("spec.allow", false); err != nil {
		return trace.Wrap(err)
	}
	return trace.Wrap(r.Spec.Deny.check("spec.deny", true))
}

func (c *RoleConditions) check(p string, deny bool) error {
	if d := c.Databases; d != nil {
		if err := d.Labels.Check(p + ".databases.labels"); err != nil {
			return trace.Wrap(err)
		}
		if err := checkTemplates(p+".databases.db_users", d.DBUsers); err != nil {
			return trace.Wrap(err)
		}
		if err := checkTemplates(p+".databases.db_names", d.DBNames); err != nil {
			return trace.Wrap(err)
		}
		if d.Statements != "" && StatementsRank(d.Statements) == 0 {
			return trace.BadParameter("%s.databases.statements: %q is not one of read, write, admin", p, truncate(d.Statements, 40))
		}
		// Deny cannot express "allow less"; rejecting beats silently ignoring a security setting.
		if deny && d.Statements != "" {
			return trace.BadParameter("%s.databases.statements: not supported in deny; lower statements in the allowing role instead", p)
		}
		if deny && d.WriteApproval {
			return trace.BadParameter("%s.databases.write_approval: not supported in deny; set it in the allowing role instead", p)
		}
	}
	if err := checkTemplates(p+".logins", c.Logins); err != nil {
		return trace.Wrap(err)
	}
	if c.Nodes != nil {
		if err := c.Nodes.Labels.Check(p + ".nodes.labels"); err != nil {
			return trace.Wrap(err)
		}
	}
	if c.Apps != nil {
		if err := c.Apps.Labels.Check(p + ".apps.labels"); err != nil {
			return trace.Wrap(err)
		}
	}
	if k := c.Kube; k != nil {
		if err := k.Labels.Check(p + ".kube.labels"); err != nil {
			return trace.Wrap(err)
		}
		if err := checkTemplates(p+".kube.groups", k.Groups); err != nil {
			return trace.Wrap(err)
		}
		if err := checkTemplates(p+".kube.users", k.Users); err != nil {
			return trace.Wrap(err)
		}
	}
	if rq := c.Request; rq != nil {
		if err := checkRoleNames(p+".request.roles", rq.Roles); err != nil {
			return trace.Wrap(err)
		}
		if rq.MaxDuration < 0 {
			return trace.BadParameter("%s.request.max_duration: must not be negative", p)
		}
		if rq.Approvals < 0 {
			return trace.BadParameter("%s.request.approvals: must not be negative", p)
		}
	}
	if rv := c.ReviewRequests; rv != nil {
		if err := checkRoleNames(p+".review_requests.roles", rv.Roles); err != nil {
			return trace.Wrap(err)
		}
	}
	for i, rule := range c.Rules {
		rp := p + ".rules[" + strconv.Itoa(i) + "]"
		if len(rule.Resources) == 0 {
			return trace.BadParameter("%s.resources: needs at least one kind or \"*\"", rp)
		}
		if len(rule.Verbs) == 0 {
			return trace.BadParameter("%s.verbs: needs at least one verb or \"*\"", rp)
		}
		for _, res := range rule.Resources {
			if res != Wildcard && res != RuleResourceAudit && res != RuleResourceRecordings && res != RuleResourceApprovals && !IsKnownKind(res) {
				return trace.BadParameter("%s.resources: %q is not one of %s, *", rp, truncate(res, 40), strings.Join(RuleResources(), ", "))
			}
		}
		for _, v := range rule.Verbs {
			switch v {
			case Wildcard, VerbList, VerbRead, VerbCreate, VerbUpdate, VerbDelete:
			default:
				return trace.BadParameter("%s.verbs: %q is not one of list, read, create, update, delete, *", rp, truncate(v, 40))
			}
		}
	}
	return nil
}

func checkRoleNames(field string, names []string) error {
	for _, n := range names {
		if n == Wildcard {
			continue
		}
		if err := ValidateName(field, n); err != nil {
			return trace.Wrap(err)
		}
	}
	return nil
}

func checkTemplates(field string, vals []string) error {
	for _, v := range vals {
		if v == "" {
			return trace.BadParameter("%s: empty value", field)
		}
		if _, err := ParseTraitTemplate(v); err != nil {
			return trace.BadParameter("%s: %v", field, err)
		}
	}
	return nil
}

// TraitTemplate is a parsed "prefix{{internal.name}}suffix" value.
type TraitTemplate struct {
	Prefix    string
	Namespace string // internal or external
	Trait     string
	Suffix    string
}

var templateRe = regexp.MustCompile(`^([^{}]*)\{\{\s*(internal|external)\.([A-Za-z0-9_.\-]+)\s*\}\}([^{}]*)$`)

// ParseTraitTemplate parses a value that may hold one trait template. It
// returns nil, nil when the value holds no template, and an error when it
// looks like a template but is malformed.
func ParseTraitTemplate(v string) (*TraitTemplate, error) {
	if !strings.ContainsAny(v, "{}") {
		return nil, nil
	}
	m := templateRe.FindStringSubmatch(v)
	if m == nil {
		return nil, trace.BadParameter("%q is not a valid trait template; use {{internal.NAME}} or {{external.NAME}}", truncate(v, 60))
	}
	return &TraitTemplate{Prefix: m[1], Namespace: m[2], Trait: m[3], Suffix: m[4]}, nil
}
