package policy

import (
	"sort"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
)

// NodeAccess says whether any role lets the identity see node at all
// (labels allow and no deny covers the whole node), and with which
// (expanded) logins, for listings. Connecting still goes through
// CheckLogin, which also applies denied logins.
func (c *AccessChecker) NodeAccess(node *types.Node) (visible bool, logins []string, err error) {
	if node == nil {
		return false, nil, trace.BadParameter("missing node")
	}
	denied := map[string]bool{}
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
			return false, nil, trace.BadParameter("role %q: spec.deny.nodes.labels: %v", r.role.Metadata.Name, err)
		}
		if !ok {
			continue
		}
		if len(deny.Logins) == 0 {
			return false, nil, nil
		}
		for _, l := range r.denyLogins {
			denied[l] = true
		}
	}
	if denied[types.Wildcard] {
		return false, nil, nil
	}
	seen := map[string]bool{}
	for _, r := range c.roles {
		n := r.role.Spec.Allow.Nodes
		if n == nil {
			continue
		}
		ok, err := MatchLabels(n.Labels, node.Metadata.Labels)
		if err != nil {
			return false, nil, trace.BadParameter("role %q: spec.allow.nodes.labels: %v", r.role.Metadata.Name, err)
		}
		if !ok {
			continue
		}
		visible = true
		for _, l := range r.allowLogins {
			if !seen[l] && !denied[l] {
				seen[l] = true
				logins = append(logins, l)
			}
		}
	}
	if visible && c.delegator != nil {
		hv, hl, err := c.delegator.NodeAccess(node)
		if err != nil {
			return false, nil, trace.Wrap(err)
		}
		if !hv {
			return false, nil, nil
		}
		logins = intersectLogins(logins, hl)
	}
	sort.Strings(logins)
	return visible, logins, nil
}

// intersectLogins keeps the logins both lists allow, "*" standing for any.
func intersectLogins(a, b []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, l := range append(append([]string(nil), a...), b...) {
		_, inA := contains(a, l)
		_, inB := contains(b, l)
		if inA && inB && !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	return out
}

// SSHPortForwarding reports whether SSH sessions may forward ports: off
// unless one of the roles sets options.ssh_port_forwarding (and, for an
// agent acting on behalf of a human, one of the human's roles too).
func (c *AccessChecker) SSHPortForwarding() bool {
	return c.anyOption(func(o types.RoleOptions) bool { return o.SSHPortForwarding })
}

// SSHAgentForwarding reports whether SSH sessions may forward the
// client's agent, with the same rule as SSHPortForwarding.
func (c *AccessChecker) SSHAgentForwarding() bool {
	return c.anyOption(func(o types.RoleOptions) bool { return o.SSHAgentForwarding })
}

func (c *AccessChecker) anyOption(opt func(types.RoleOptions) bool) bool {
	on := false
	for _, r := range c.roles {
		if opt(r.role.Spec.Options) {
			on = true
			break
		}
	}
	if on && c.delegator != nil {
		return c.delegator.anyOption(opt)
	}
	return on
}
