package types

import (
	"regexp"
	"time"

	"github.com/gravitational/trace"
)

// Resource kinds.
const (
	KindRole          = "role"
	KindUser          = "user"
	KindDatabase      = "database"
	KindNode          = "node"
	KindKubeCluster   = "kube_cluster"
	KindApp           = "app"
	KindToken         = "token"
	KindLock          = "lock"
	KindOIDCConnector = "oidc_connector"
	KindSAMLConnector = "saml_connector"
)

// Version is the only resource version understood today.
const Version = "v1"

// Identity kinds carried in certificates.
const (
	IdentityKindHuman = "human"
	IdentityKindBot   = "bot"
	IdentityKindAgent = "agent"
)

// Wildcard matches any value in labels, rules, db_users, db_names and logins.
const Wildcard = "*"

// Kinds lists every resource kind in a stable order.
func Kinds() []string {
	return []string{KindRole, KindUser, KindDatabase, KindNode, KindKubeCluster, KindApp,
		KindOIDCConnector, KindSAMLConnector, KindToken, KindLock}
}

// IsKnownKind reports whether kind is a resource kind.
func IsKnownKind(kind string) bool {
	for _, k := range Kinds() {
		if k == kind {
			return true
		}
	}
	return false
}

// Metadata is common to all resources.
type Metadata struct {
	Name        string            `json:"name" yaml:"name"`
	Labels      map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	Description string            `json:"description,omitempty" yaml:"description,omitempty"`
	Expires     *time.Time        `json:"expires,omitempty" yaml:"expires,omitempty"`
	// Revision is set by the backend for optimistic concurrency; users leave it empty.
	Revision int64 `json:"revision,omitempty" yaml:"revision,omitempty"`
}

// Resource is implemented by every resource type.
type Resource interface {
	GetKind() string
	GetVersion() string
	GetMetadata() *Metadata
	// CheckAndSetDefaults validates the resource and fills defaults. Errors
	// are trace.BadParameter naming the full field path.
	CheckAndSetDefaults() error
}

// MaxNameLen is the longest metadata.name accepted.
const MaxNameLen = 253

var nameRe = regexp.MustCompile(`^[a-zA-Z0-9._@-]+$`)

// ValidateName checks a resource name (also used for role names referenced by
// other resources). field is used as the error prefix.
func ValidateName(field, name string) error {
	switch {
	case name == "":
		return trace.BadParameter("%s: must not be empty", field)
	case len(name) > MaxNameLen:
		return trace.BadParameter("%s: %q is longer than %d characters", field, truncate(name, 40), MaxNameLen)
	case !nameRe.MatchString(name):
		return trace.BadParameter("%s: %q may only contain letters, digits and . _ @ -", field, truncate(name, 40))
	case name[0] == '.':
		return trace.BadParameter("%s: %q must not start with a dot", field, name)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// checkHeader validates kind, version and metadata shared by all resources,
// filling kind and version when they were left empty by Go callers.
func checkHeader(kind *string, version *string, md *Metadata, want string) error {
	if *kind == "" {
		*kind = want
	}
	if *kind != want {
		return trace.BadParameter("kind: got %q, want %q", *kind, want)
	}
	if *version == "" {
		*version = Version
	}
	if *version != Version {
		return trace.BadParameter("version: %q is not supported (use %q)", *version, Version)
	}
	return md.check()
}

func (m *Metadata) check() error {
	if err := ValidateName("metadata.name", m.Name); err != nil {
		return trace.Wrap(err)
	}
	for k, v := range m.Labels {
		if k == "" || len(k) > MaxNameLen {
			return trace.BadParameter("metadata.labels: key %q must be 1-%d characters", truncate(k, 40), MaxNameLen)
		}
		if len(v) > 1024 {
			return trace.BadParameter("metadata.labels[%s]: value is longer than 1024 characters", k)
		}
	}
	return nil
}

// header is embedded-by-convention: each resource has these four accessors.
func (r *Role) GetKind() string                   { return r.Kind }
func (r *Role) GetVersion() string                { return r.Version }
func (r *Role) GetMetadata() *Metadata            { return &r.Metadata }
func (r *User) GetKind() string                   { return r.Kind }
func (r *User) GetVersion() string                { return r.Version }
func (r *User) GetMetadata() *Metadata            { return &r.Metadata }
func (r *Database) GetKind() string               { return r.Kind }
func (r *Database) GetVersion() string            { return r.Version }
func (r *Database) GetMetadata() *Metadata        { return &r.Metadata }
func (r *Node) GetKind() string                   { return r.Kind }
func (r *Node) GetVersion() string                { return r.Version }
func (r *Node) GetMetadata() *Metadata            { return &r.Metadata }
func (r *Token) GetKind() string                  { return r.Kind }
func (r *Token) GetVersion() string               { return r.Version }
func (r *Token) GetMetadata() *Metadata           { return &r.Metadata }
func (r *Lock) GetKind() string                   { return r.Kind }
func (r *Lock) GetVersion() string                { return r.Version }
func (r *Lock) GetMetadata() *Metadata            { return &r.Metadata }
func (r *GenericResource) GetKind() string        { return r.Kind }
func (r *GenericResource) GetVersion() string     { return r.Version }
func (r *GenericResource) GetMetadata() *Metadata { return &r.Metadata }
