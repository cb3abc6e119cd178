package types

import (
	"time"

	"github.com/gravitational/trace"
)

// Token kinds.
const (
	TokenKindBot   = IdentityKindBot
	TokenKindAgent = IdentityKindAgent
)

// Token is a join token for a bot or agent. metadata.name is the token id,
// a secret: never log it.
type Token struct {
	Kind     string    `json:"kind" yaml:"kind"`
	Version  string    `json:"version" yaml:"version"`
	Metadata Metadata  `json:"metadata" yaml:"metadata"`
	Spec     TokenSpec `json:"spec" yaml:"spec"`
}

// TokenSpec is the body of a token.
type TokenSpec struct {
	Kind       string   `json:"kind" yaml:"kind"`
	BotName    string   `json:"bot_name" yaml:"bot_name"`
	Roles      []string `json:"roles" yaml:"roles"`
	OnBehalfOf string   `json:"on_behalf_of,omitempty" yaml:"on_behalf_of,omitempty"`
	// OnBehalfOfRoles and OnBehalfOfTraits record what a person who is not
	// a local user (SSO) had when they made a token for their own agent:
	// the bound on the agent's access, since such users are not stored.
	OnBehalfOfRoles  []string            `json:"on_behalf_of_roles,omitempty" yaml:"on_behalf_of_roles,omitempty"`
	OnBehalfOfTraits map[string][]string `json:"on_behalf_of_traits,omitempty" yaml:"on_behalf_of_traits,omitempty"`
}

// Expiry returns metadata.expires or the zero time.
func (t *Token) Expiry() time.Time {
	if t.Metadata.Expires == nil {
		return time.Time{}
	}
	return *t.Metadata.Expires
}

// CheckAndSetDefaults validates the token.
func (t *Token) CheckAndSetDefaults() error {
	if err := checkHeader(&t.Kind, &t.Version, &t.Metadata, KindToken); err != nil {
		return trace.Wrap(err)
	}
	if t.Metadata.Expires == nil || t.Metadata.Expires.IsZero() {
		return trace.BadParameter("metadata.expires: required for tokens")
	}
	switch t.Spec.Kind {
	case TokenKindBot, TokenKindAgent:
	case "":
		return trace.BadParameter("spec.kind: required, one of bot, agent")
	default:
		return trace.BadParameter("spec.kind: %q is not one of bot, agent", truncate(t.Spec.Kind, 40))
	}
	if err := ValidateName("spec.bot_name", t.Spec.BotName); err != nil {
		return trace.Wrap(err)
	}
	if len(t.Spec.Roles) == 0 {
		return trace.BadParameter("spec.roles: needs at least one role")
	}
	for _, r := range t.Spec.Roles {
		if err := ValidateName("spec.roles", r); err != nil {
			return trace.Wrap(err)
		}
	}
	if t.Spec.OnBehalfOf != "" {
		if t.Spec.Kind != TokenKindAgent {
			return trace.BadParameter("spec.on_behalf_of: only agents act on behalf of a user")
		}
		if err := ValidateName("spec.on_behalf_of", t.Spec.OnBehalfOf); err != nil {
			return trace.Wrap(err)
		}
	}
	if t.Spec.OnBehalfOf == "" && (len(t.Spec.OnBehalfOfRoles) > 0 || len(t.Spec.OnBehalfOfTraits) > 0) {
		return trace.BadParameter("spec.on_behalf_of_roles: only with spec.on_behalf_of")
	}
	for _, r := range t.Spec.OnBehalfOfRoles {
		if err := ValidateName("spec.on_behalf_of_roles", r); err != nil {
			return trace.Wrap(err)
		}
	}
	return nil
}
