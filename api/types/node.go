package types

import "github.com/gravitational/trace"

// Node is an SSH server reachable by the gateway.
type Node struct {
	Kind     string   `json:"kind" yaml:"kind"`
	Version  string   `json:"version" yaml:"version"`
	Metadata Metadata `json:"metadata" yaml:"metadata"`
	Spec     NodeSpec `json:"spec" yaml:"spec"`
}

// NodeSpec is the body of a node.
type NodeSpec struct {
	Addr string `json:"addr" yaml:"addr"`
}

// CheckAndSetDefaults validates the node.
func (n *Node) CheckAndSetDefaults() error {
	if err := checkHeader(&n.Kind, &n.Version, &n.Metadata, KindNode); err != nil {
		return trace.Wrap(err)
	}
	return trace.Wrap(checkHostPort("spec.addr", n.Spec.Addr))
}
