package types

import "github.com/gravitational/trace"

// GenericResource carries kinds whose spec is not modelled yet
// (kube_cluster, app): the header is validated and the spec is kept as an
// opaque map.
type GenericResource struct {
	Kind     string         `json:"kind" yaml:"kind"`
	Version  string         `json:"version" yaml:"version"`
	Metadata Metadata       `json:"metadata" yaml:"metadata"`
	Spec     map[string]any `json:"spec,omitempty" yaml:"spec,omitempty"`
}

func isGenericKind(kind string) bool {
	switch kind {
	case KindKubeCluster, KindApp:
		return true
	}
	return false
}

// CheckAndSetDefaults validates the header.
func (g *GenericResource) CheckAndSetDefaults() error {
	if !isGenericKind(g.Kind) {
		return trace.BadParameter("kind: %q is not one of %s, %s", truncate(g.Kind, 40), KindKubeCluster, KindApp)
	}
	return trace.Wrap(checkHeader(&g.Kind, &g.Version, &g.Metadata, g.Kind))
}
