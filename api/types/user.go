package types

import (
	"time"

	"github.com/gravitational/trace"
)

// User is a local or SSO human. Credentials are deliberately not part of the
// resource: the server stores them separately so they never travel with it.
type User struct {
	Kind     string   `json:"kind" yaml:"kind"`
	Version  string   `json:"version" yaml:"version"`
	Metadata Metadata `json:"metadata" yaml:"metadata"`
	Spec     UserSpec `json:"spec" yaml:"spec"`
}

// UserSpec is the body of a user.
type UserSpec struct {
	Roles     []string            `json:"roles,omitempty" yaml:"roles,omitempty"`
	Traits    map[string][]string `json:"traits,omitempty" yaml:"traits,omitempty"`
	CreatedAt time.Time           `json:"created_at,omitzero" yaml:"created_at,omitempty"`
}

// NewUser builds and validates a user.
func NewUser(name string, roles []string, traits map[string][]string) (*User, error) {
	u := &User{Metadata: Metadata{Name: name}, Spec: UserSpec{Roles: roles, Traits: traits}}
	if err := u.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return u, nil
}

// CheckAndSetDefaults validates the user.
func (u *User) CheckAndSetDefaults() error {
	if err := checkHeader(&u.Kind, &u.Version, &u.Metadata, KindUser); err != nil {
		return trace.Wrap(err)
	}
	for _, r := range u.Spec.Roles {
		if err := ValidateName("spec.roles", r); err != nil {
			return trace.Wrap(err)
		}
	}
	for k := range u.Spec.Traits {
		if err := ValidateName("spec.traits", k); err != nil {
			return trace.Wrap(err)
		}
	}
	return nil
}
