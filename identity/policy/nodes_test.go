package policy

import (
	"slices"
	"strings"
	"testing"

	"github.com/sigilhq/sigil/api/types"
)

func sshRole(t *testing.T, name string, spec types.RoleSpec) *types.Role {
	t.Helper()
	r, err := types.NewRole(name, spec)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func testNode(name string, labels map[string]string) *types.Node {
	return &types.Node{Kind: types.KindNode, Version: types.Version, Metadata: types.Metadata{Name: name, Labels: labels}, Spec: types.NodeSpec{Addr: "127.0.0.1:22"}}
}

func TestNodeAccessAndLogins(t *testing.T) {
	dev := sshRole(t, "dev", types.RoleSpec{Allow: types.RoleConditions{
		Logins: []string{"{{internal.logins}}", "deploy"},
		Nodes:  &types.ResourceConditions{Labels: types.Labels{"env": {"dev"}}},
	}})
	noRoot := sshRole(t, "no-root", types.RoleSpec{Deny: types.RoleConditions{
		Logins: []string{"root"},
		Nodes:  &types.ResourceConditions{Labels: types.Labels{"*": {"*"}}},
	}})
	c, err := NewAccessChecker([]*types.Role{dev, noRoot}, map[string][]string{"logins": {"alice", "root"}})
	if err != nil {
		t.Fatal(err)
	}
	devNode := testNode("node1", map[string]string{"env": "dev"})
	prodNode := testNode("node2", map[string]string{"env": "prod"})

	visible, logins, err := c.NodeAccess(devNode)
	if err != nil || !visible {
		t.Fatalf("NodeAccess(dev) = %v, %v", visible, err)
	}
	if want := []string{"alice", "deploy"}; !slices.Equal(logins, want) {
		t.Errorf("logins = %v, want %v (root is denied)", logins, want)
	}
	if visible, _, _ := c.NodeAccess(prodNode); visible {
		t.Error("prod node visible, want hidden: no role's labels match")
	}

	tests := []struct {
		node    *types.Node
		login   string
		wantErr string
	}{
		{node: devNode, login: "alice"},
		{node: devNode, login: "deploy"},
		{node: devNode, login: "root", wantErr: `role "no-root" denies logins "root"`},
		{node: devNode, login: "bob", wantErr: `no role allows login "bob"`},
		{node: prodNode, login: "alice", wantErr: "no role's nodes.labels match this node"},
	}
	for _, tt := range tests {
		err := c.CheckLogin(tt.node, tt.login)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("CheckLogin(%s, %s) = %v, want allowed", tt.node.Metadata.Name, tt.login, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("CheckLogin(%s, %s) = %v, want %q", tt.node.Metadata.Name, tt.login, err, tt.wantErr)
		}
	}
}

func TestNodeAccessDeniedWholeNode(t *testing.T) {
	all := sshRole(t, "all", types.RoleSpec{Allow: types.RoleConditions{
		Logins: []string{"alice"}, Nodes: &types.ResourceConditions{Labels: types.Labels{"*": {"*"}}},
	}})
	denyProd := sshRole(t, "deny-prod", types.RoleSpec{Deny: types.RoleConditions{
		Nodes: &types.ResourceConditions{Labels: types.Labels{"env": {"prod"}}},
	}})
	c, err := NewAccessChecker([]*types.Role{all, denyProd}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if visible, _, _ := c.NodeAccess(testNode("p", map[string]string{"env": "prod"})); visible {
		t.Error("node denied as a whole is visible")
	}
	if visible, logins, _ := c.NodeAccess(testNode("d", map[string]string{"env": "dev"})); !visible || !slices.Equal(logins, []string{"alice"}) {
		t.Errorf("dev node: visible %v logins %v", visible, logins)
	}
}

func TestSSHForwardingOptions(t *testing.T) {
	plain := sshRole(t, "plain", types.RoleSpec{})
	fwd := sshRole(t, "fwd", types.RoleSpec{Options: types.RoleOptions{SSHPortForwarding: true}})
	agent := sshRole(t, "agent", types.RoleSpec{Options: types.RoleOptions{SSHAgentForwarding: true}})
	tests := []struct {
		name        string
		roles       []*types.Role
		port, agent bool
	}{
		{name: "off by default", roles: []*types.Role{plain}},
		{name: "port forwarding from one role", roles: []*types.Role{plain, fwd}, port: true},
		{name: "agent forwarding from one role", roles: []*types.Role{agent}, agent: true},
		{name: "both", roles: []*types.Role{fwd, agent}, port: true, agent: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewAccessChecker(tt.roles, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.SSHPortForwarding(); got != tt.port {
				t.Errorf("SSHPortForwarding = %v, want %v", got, tt.port)
			}
			if got := c.SSHAgentForwarding(); got != tt.agent {
				t.Errorf("SSHAgentForwarding = %v, want %v", got, tt.agent)
			}
		})
	}

	// An agent acting for a human gets forwarding only when both allow it.
	human, err := NewAccessChecker([]*types.Role{plain}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewAccessChecker([]*types.Role{fwd}, nil, WithIdentityKind(types.IdentityKindAgent), WithOnBehalfOf("alice", human))
	if err != nil {
		t.Fatal(err)
	}
	if c.SSHPortForwarding() {
		t.Error("agent got port forwarding its human's roles do not allow")
	}
}

func TestRoleOptionsParse(t *testing.T) {
	rs, err := types.ParseYAML([]byte(`kind: role
version: v1
metadata: {name: ops}
spec:
  options:
    ssh_port_forwarding: true
    ssh_agent_forwarding: true
  allow:
    rules: [{resources: [recordings], verbs: [read]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	r := rs[0].(*types.Role)
	if !r.Spec.Options.SSHPortForwarding || !r.Spec.Options.SSHAgentForwarding {
		t.Errorf("options not parsed: %+v", r.Spec.Options)
	}
	c, err := NewAccessChecker([]*types.Role{r}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CheckRule(types.RuleResourceRecordings, types.VerbRead); err != nil {
		t.Errorf("recordings rule: %v", err)
	}
}
