package policy

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
)

// DatabaseDecision is the outcome of an allowed database access.
type DatabaseDecision struct {
	// Statements is the most permissive class granted: read, write or admin.
	Statements string
	// WriteApproval is true when any allowing role asks for each write to be
	// approved by a human.
	WriteApproval bool
	// Role names the role that granted Statements.
	Role string
}

// Option tunes an AccessChecker.
type Option func(*AccessChecker)

// WithIdentityKind sets the identity kind (types.IdentityKindHuman, Bot or
// Agent). It picks the default statements when a role leaves them empty:
// admin for humans and bots, read for agents. The default is human.
func WithIdentityKind(kind string) Option {
	return func(c *AccessChecker) { c.kind = kind }
}

// WithOnBehalfOf makes every decision the intersection with the access of
// the named user, for an agent acting on behalf of a human: both must allow,
// statements are the lower of the two, TTL the shorter, MFA and write
// approval required if either requires them.
func WithOnBehalfOf(user string, human *AccessChecker) Option {
	return func(c *AccessChecker) { c.delegatorName, c.delegator = user, human }
}

// AccessChecker answers access questions for one identity.
type AccessChecker struct {
	roles         []expandedRole
	kind          string
	delegatorName string
	delegator     *AccessChecker
}

// expandedRole caches a role with its trait templates already applied.
type expandedRole struct {
	role                       *types.Role
	allowDBUsers, allowDBNames []string
	denyDBUsers, denyDBNames   []string
	allowLogins, denyLogins    []string
}

// NewAccessChecker expands each role's trait templates against traits.
func NewAccessChecker(roles []*types.Role, traits map[string][]string, opts ...Option) (*AccessChecker, error) {
	c := &AccessChecker{kind: types.IdentityKindHuman}
	for _, o := range opts {
		o(c)
	}
	switch c.kind {
	case types.IdentityKindHuman, types.IdentityKindBot, types.IdentityKindAgent:
	default:
		return nil, trace.BadParameter("identity kind %q is not one of human, bot, agent", c.kind)
	}
	if c.delegator != nil && c.delegatorName == "" {
		return nil, trace.BadParameter("on-behalf-of user name is required")
	}
	for i, r := range roles {
		if r == nil {
			return nil, trace.BadParameter("role %d is nil", i)
		}
		er := expandedRole{role: r}
		var err error
		if d := r.Spec.Allow.Databases; d != nil {
			if er.allowDBUsers, err = applyAll(d.DBUsers, traits); err != nil {
				return nil, trace.BadParameter("role %q: spec.allow.databases.db_users: %v", r.Metadata.Name, err)
			}
			if er.allowDBNames, err = applyAll(d.DBNames, traits); err != nil {
				return nil, trace.BadParameter("role %q: spec.allow.databases.db_names: %v", r.Metadata.Name, err)
			}
		}
		if d := r.Spec.Deny.Databases; d != nil {
			if er.denyDBUsers, err = applyAll(d.DBUsers, traits); err != nil {
				return nil, trace.BadParameter("role %q: spec.deny.databases.db_users: %v", r.Metadata.Name, err)
			}
			if er.denyDBNames, err = applyAll(d.DBNames, traits); err != nil {
				return nil, trace.BadParameter("role %q: spec.deny.databases.db_names: %v", r.Metadata.Name, err)
			}
		}
		if er.allowLogins, err = applyAll(r.Spec.Allow.Logins, traits); err != nil {
			return nil, trace.BadParameter("role %q: spec.allow.logins: %v", r.Metadata.Name, err)
		}
		if er.denyLogins, err = applyAll(r.Spec.Deny.Logins, traits); err != nil {
			return nil, trace.BadParameter("role %q: spec.deny.logins: %v", r.Metadata.Name, err)
		}
		c.roles = append(c.roles, er)
	}
	return c, nil
}

// Roles returns the role names in the order given.
func (c *AccessChecker) Roles() []string {
	out := make([]string, 0, len(c.roles))
	for _, r := range c.roles {
		out = append(out, r.role.Metadata.Name)
	}
	return out
}

func (c *AccessChecker) roleList() string {
	if len(c.roles) == 0 {
		return "none"
	}
	return strings.Join(c.Roles(), ", ")
}

// contains returns the entry of list matching v ("*" matches anything).
func contains(list []string, v string) (string, bool) {
	for _, e := range list {
		if e == types.Wildcard || e == v {
			return e, true
		}
	}
	return "", false
}

// denyLabelsMatch applies a deny selector; in deny an empty selector means
// every resource, so a deny rule never silently does nothing.
func denyLabelsMatch(sel types.Labels, labels map[string]string) (bool, error) {
	if len(sel) == 0 {
		return true, nil
	}
	return MatchLabels(sel, labels)
}

func (c *AccessChecker) defaultStatements() string {
	if c.kind == types.IdentityKindAgent {
		return types.StatementsRead
	}
	return types.StatementsAdmin
}

// CheckDatabase decides whether the identity may connect to db as dbUser to
// database dbName. Deny rules are checked first and win.
func (c *AccessChecker) CheckDatabase(db *types.Database, dbUser, dbName string) (*DatabaseDecision, error) {
	if db == nil {
		return nil, trace.BadParameter("missing database")
	}
	prefix := fmt.Sprintf("access to database %q as db user %q denied: ", db.Metadata.Name, dbUser)
	if dbUser == "" {
		return nil, trace.AccessDenied("%sa db user is required", prefix)
	}
	for _, r := range c.roles {
		d := r.role.Spec.Deny.Databases
		if d == nil {
			continue
		}
		ok, err := denyLabelsMatch(d.Labels, db.Metadata.Labels)
		if err != nil {
			return nil, trace.BadParameter("role %q: spec.deny.databases.labels: %v", r.role.Metadata.Name, err)
		}
		if !ok {
			continue
		}
		name := r.role.Metadata.Name
		if len(d.DBUsers) == 0 && len(d.DBNames) == 0 {
			return nil, trace.AccessDenied("%srole %q denies this database", prefix, name)
		}
		if e, hit := contains(r.denyDBUsers, dbUser); hit {
			return nil, trace.AccessDenied("%srole %q denies db_users %q", prefix, name, e)
		}
		if e, hit := contains(r.denyDBNames, dbName); hit {
			return nil, trace.AccessDenied("%srole %q denies db_names %q", prefix, name, e)
		}
	}
	var dec *DatabaseDecision
	labelsMatched, userAllowed := false, false
	for _, r := range c.roles {
		d := r.role.Spec.Allow.Databases
		if d == nil {
			continue
		}
		ok, err := MatchLabels(d.Labels, db.Metadata.Labels)
		if err != nil {
			return nil, trace.BadParameter("role %q: spec.allow.databases.labels: %v", r.role.Metadata.Name, err)
		}
		if !ok {
			continue
		}
		labelsMatched = true
		if _, hit := contains(r.allowDBUsers, dbUser); !hit {
			continue
		}
		userAllowed = true
		if _, hit := contains(r.allowDBNames, dbName); !hit {
			continue
		}
		st := d.Statements
		if st == "" {
			st = c.defaultStatements()
		}
		if dec == nil {
			dec = &DatabaseDecision{Statements: st, Role: r.role.Metadata.Name}
		} else if types.StatementsRank(st) > types.StatementsRank(dec.Statements) {
			dec.Statements, dec.Role = st, r.role.Metadata.Name
		}
		dec.WriteApproval = dec.WriteApproval || d.WriteApproval
	}
	switch {
	case dec != nil:
	case !labelsMatched:
		return nil, trace.AccessDenied("%sno role's databases.labels match this database (roles: %s)", prefix, c.roleList())
	case !userAllowed:
		return nil, trace.AccessDenied("%sno role allows db user %q (roles: %s)", prefix, dbUser, c.roleList())
	default:
		return nil, trace.AccessDenied("%sno role allows db name %q for db user %q (roles: %s)", prefix, dbName, dbUser, c.roleList())
	}
	if c.delegator != nil {
		hd, err := c.delegator.CheckDatabase(db, dbUser, dbName)
		if err != nil {
			return nil, trace.AccessDenied("%s (acting on behalf of %q)", err.Error(), c.delegatorName)
		}
		if types.StatementsRank(hd.Statements) < types.StatementsRank(dec.Statements) {
			dec.Statements = hd.Statements
		}
		// An agent cannot pass the person's per-session MFA; a human
		// approval of each write stands in for it, so reads go on.
		dec.WriteApproval = dec.WriteApproval || hd.WriteApproval || c.delegator.SessionMFARole() != ""
	}
	return dec, nil
}

// CheckLogin decides whether the identity may log in to node as login.
func (c *AccessChecker) CheckLogin(node *types.Node, login string) error {
	if node == nil {
		return trace.BadParameter("missing node")
	}
	prefix := fmt.Sprintf("access to node %q as login %q denied: ", node.Metadata.Name, login)
	if login == "" {
		return trace.AccessDenied("%sa login is required", prefix)
	}
	for _, r := range c.roles {
		deny := r.role.Spec.Deny
		if deny.Nodes == nil && len(deny.Logins) == 0 {
			continue
		}
		var sel types.Labels
		if deny.Nodes != nil {
			sel = deny.Nodes.Labels
		}
		ok, err := denyLabelsMatch(sel, node.Metadata.Labels)
		if err != nil {
			return trace.BadParameter("role %q: spec.deny.nodes.labels: %v", r.role.Metadata.Name, err)
		}
		if !ok {
			continue
		}
		if len(deny.Logins) == 0 {
			return trace.AccessDenied("%srole %q denies this node", prefix, r.role.Metadata.Name)
		}
		if e, hit := contains(r.denyLogins, login); hit {
			return trace.AccessDenied("%srole %q denies logins %q", prefix, r.role.Metadata.Name, e)
		}
	}
	labelsMatched := false
	allowed := false
	for _, r := range c.roles {
		n := r.role.Spec.Allow.Nodes
		if n == nil {
			continue
		}
		ok, err := MatchLabels(n.Labels, node.Metadata.Labels)
		if err != nil {
			return trace.BadParameter("role %q: spec.allow.nodes.labels: %v", r.role.Metadata.Name, err)
		}
		if !ok {
			continue
		}
		labelsMatched = true
		if _, hit := contains(r.allowLogins, login); hit {
			allowed = true
			break
		}
	}
	switch {
	case allowed:
	case !labelsMatched:
		return trace.AccessDenied("%sno role's nodes.labels match this node (roles: %s)", prefix, c.roleList())
	default:
		return trace.AccessDenied("%sno role allows login %q (roles: %s)", prefix, login, c.roleList())
	}
	if c.delegator != nil {
		if err := c.delegator.CheckLogin(node, login); err != nil {
			return trace.AccessDenied("%s (acting on behalf of %q)", err.Error(), c.delegatorName)
		}
	}
	return nil
}

func ruleMatches(rules []types.Rule, kind, verb string) bool {
	for _, rule := range rules {
		_, resOK := contains(rule.Resources, kind)
		_, verbOK := contains(rule.Verbs, verb)
		if resOK && verbOK {
			return true
		}
	}
	return false
}

// CheckRule decides whether the identity may perform verb on resources of
// kind through the admin API.
func (c *AccessChecker) CheckRule(kind, verb string) error {
	if kind == "" || verb == "" {
		return trace.BadParameter("kind and verb are required")
	}
	for _, r := range c.roles {
		if ruleMatches(r.role.Spec.Deny.Rules, kind, verb) {
			return trace.AccessDenied("access denied: %q on %q is denied by role %q", verb, kind, r.role.Metadata.Name)
		}
	}
	allowed := false
	for _, r := range c.roles {
		if ruleMatches(r.role.Spec.Allow.Rules, kind, verb) {
			allowed = true
			break
		}
	}
	if !allowed {
		return trace.AccessDenied("access denied: %q on %q is not allowed by roles %s", verb, kind, c.roleList())
	}
	if c.delegator != nil {
		if err := c.delegator.CheckRule(kind, verb); err != nil {
			return trace.AccessDenied("%s (acting on behalf of %q)", err.Error(), c.delegatorName)
		}
	}
	return nil
}

// MaxSessionTTL returns the shortest non-zero max_session_ttl across the
// roles, or def when no role sets one.
func (c *AccessChecker) MaxSessionTTL(def time.Duration) time.Duration {
	var ttl time.Duration
	for _, r := range c.roles {
		t := r.role.Spec.Options.MaxSessionTTL.Duration()
		if t > 0 && (ttl == 0 || t < ttl) {
			ttl = t
		}
	}
	if c.delegator != nil {
		if t := c.delegator.MaxSessionTTL(0); t > 0 && (ttl == 0 || t < ttl) {
			ttl = t
		}
	}
	if ttl == 0 {
		return def
	}
	return ttl
}

// RequireSessionMFA reports whether any role requires per-session MFA.
func (c *AccessChecker) RequireSessionMFA() bool { return c.SessionMFARole() != "" }

// SessionMFARole names a role of the identity that requires per-session
// MFA, "" when none does. The person an agent acts for does not count
// here: their MFA requirement turns into a write approval for the agent
// (see CheckDatabase).
func (c *AccessChecker) SessionMFARole() string {
	for _, r := range c.roles {
		if r.role.Spec.Options.RequireSessionMFA {
			return r.role.Metadata.Name
		}
	}
	return ""
}

// RequestableRoles returns the roles this identity may request, minus any
// denied, sorted. "*" is returned as is.
func (c *AccessChecker) RequestableRoles() []string {
	denied := map[string]bool{}
	for _, r := range c.roles {
		if rq := r.role.Spec.Deny.Request; rq != nil {
			for _, n := range rq.Roles {
				denied[n] = true
			}
		}
	}
	set := map[string]bool{}
	for _, r := range c.roles {
		if rq := r.role.Spec.Allow.Request; rq != nil {
			for _, n := range rq.Roles {
				if !denied[n] && !denied[types.Wildcard] {
					set[n] = true
				}
			}
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// CheckRequestRole decides whether the identity may request role.
func (c *AccessChecker) CheckRequestRole(role string) error {
	for _, r := range c.roles {
		if rq := r.role.Spec.Deny.Request; rq != nil {
			if e, hit := contains(rq.Roles, role); hit {
				return trace.AccessDenied("request for role %q denied: role %q denies request.roles %q", role, r.role.Metadata.Name, e)
			}
		}
	}
	for _, r := range c.roles {
		if rq := r.role.Spec.Allow.Request; rq != nil {
			if _, hit := contains(rq.Roles, role); hit {
				return nil
			}
		}
	}
	return trace.AccessDenied("request for role %q denied: no role allows requesting it (roles: %s)", role, c.roleList())
}

// DefaultRequestMaxDuration bounds a request when no allowing role sets
// request.max_duration.
const DefaultRequestMaxDuration = 4 * time.Hour

// RequestLimits returns, for a role the identity may request (see
// CheckRequestRole), how long a request for it may last and how many
// distinct approvals it needs. Several allowing roles combine strictly:
// the shortest duration and the most approvals (at least one).
func (c *AccessChecker) RequestLimits(role string) (maxDuration time.Duration, approvals int) {
	approvals = 1
	for _, r := range c.roles {
		rq := r.role.Spec.Allow.Request
		if rq == nil {
			continue
		}
		if _, hit := contains(rq.Roles, role); !hit {
			continue
		}
		if d := rq.MaxDuration.Duration(); d > 0 && (maxDuration == 0 || d < maxDuration) {
			maxDuration = d
		}
		approvals = max(approvals, rq.Approvals)
	}
	if maxDuration == 0 {
		maxDuration = DefaultRequestMaxDuration
	}
	return maxDuration, approvals
}

// CheckReviewRole decides whether the identity may review requests for role.
func (c *AccessChecker) CheckReviewRole(role string) error {
	for _, r := range c.roles {
		if rv := r.role.Spec.Deny.ReviewRequests; rv != nil {
			if e, hit := contains(rv.Roles, role); hit {
				return trace.AccessDenied("review of role %q denied: role %q denies review_requests.roles %q", role, r.role.Metadata.Name, e)
			}
		}
	}
	for _, r := range c.roles {
		if rv := r.role.Spec.Allow.ReviewRequests; rv != nil {
			if _, hit := contains(rv.Roles, role); hit {
				return nil
			}
		}
	}
	return trace.AccessDenied("review of role %q denied: no role allows reviewing it (roles: %s)", role, c.roleList())
}

// DatabaseAccess says whether any role lets the identity see db at all
// (labels allow and no deny covers the whole database), and with which
// (expanded) db users and db names, for listings. Connecting still goes
// through CheckDatabase.
func (c *AccessChecker) DatabaseAccess(db *types.Database) (visible bool, dbUsers, dbNames []string, err error) {
	if db == nil {
		return false, nil, nil, trace.BadParameter("missing database")
	}
	for _, r := range c.roles {
		d := r.role.Spec.Deny.Databases
		if d == nil || len(d.DBUsers) > 0 || len(d.DBNames) > 0 {
			continue
		}
		ok, err := denyLabelsMatch(d.Labels, db.Metadata.Labels)
		if err != nil {
			return false, nil, nil, trace.BadParameter("role %q: spec.deny.databases.labels: %v", r.role.Metadata.Name, err)
		}
		if ok {
			return false, nil, nil, nil
		}
	}
	seenU, seenN := map[string]bool{}, map[string]bool{}
	for _, r := range c.roles {
		d := r.role.Spec.Allow.Databases
		if d == nil {
			continue
		}
		ok, err := MatchLabels(d.Labels, db.Metadata.Labels)
		if err != nil {
			return false, nil, nil, trace.BadParameter("role %q: spec.allow.databases.labels: %v", r.role.Metadata.Name, err)
		}
		if !ok {
			continue
		}
		visible = true
		for _, u := range r.allowDBUsers {
			if !seenU[u] {
				seenU[u] = true
				dbUsers = append(dbUsers, u)
			}
		}
		for _, n := range r.allowDBNames {
			if !seenN[n] {
				seenN[n] = true
				dbNames = append(dbNames, n)
			}
		}
	}
	sort.Strings(dbUsers)
	sort.Strings(dbNames)
	return visible, dbUsers, dbNames, nil
}
