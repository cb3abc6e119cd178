package types

import (
	"time"

	"github.com/gravitational/trace"
)

// Lock blocks every session of a user, role or bot until removed or expired.
type Lock struct {
	Kind     string   `json:"kind" yaml:"kind"`
	Version  string   `json:"version" yaml:"version"`
	Metadata Metadata `json:"metadata" yaml:"metadata"`
	Spec     LockSpec `json:"spec" yaml:"spec"`
}

// LockSpec is the body of a lock.
type LockSpec struct {
	Target    LockTarget `json:"target" yaml:"target"`
	Message   string     `json:"message,omitempty" yaml:"message,omitempty"`
	CreatedBy string     `json:"created_by,omitempty" yaml:"created_by,omitempty"`
	CreatedAt time.Time  `json:"created_at,omitzero" yaml:"created_at,omitempty"`
}

// LockTarget names exactly one thing to lock.
type LockTarget struct {
	User string `json:"user,omitempty" yaml:"user,omitempty"`
	Role string `json:"role,omitempty" yaml:"role,omitempty"`
	Bot  string `json:"bot,omitempty" yaml:"bot,omitempty"`
}

// CheckAndSetDefaults validates the lock.
func (l *Lock) CheckAndSetDefaults() error {
	if err := checkHeader(&l.Kind, &l.Version, &l.Metadata, KindLock); err != nil {
		return trace.Wrap(err)
	}
	set := 0
	for field, v := range map[string]string{"user": l.Spec.Target.User, "role": l.Spec.Target.Role, "bot": l.Spec.Target.Bot} {
		if v == "" {
			continue
		}
		set++
		if err := ValidateName("spec.target."+field, v); err != nil {
			return trace.Wrap(err)
		}
	}
	if set != 1 {
		return trace.BadParameter("spec.target: set exactly one of user, role, bot")
	}
	if len(l.Spec.Message) > 4096 {
		return trace.BadParameter("spec.message: longer than 4096 characters")
	}
	return nil
}

// Matches reports whether the lock targets the given user, any of roles, or bot.
func (l *Lock) Matches(user string, roles []string, bot string) bool {
	t := l.Spec.Target
	if t.User != "" && t.User == user {
		return true
	}
	if t.Bot != "" && t.Bot == bot {
		return true
	}
	if t.Role != "" {
		for _, r := range roles {
			if r == t.Role {
				return true
			}
		}
	}
	return false
}

// String names the target as "user=alice", "role=dev" or "bot=ci".
func (t LockTarget) String() string {
	switch {
	case t.User != "":
		return "user=" + t.User
	case t.Role != "":
		return "role=" + t.Role
	case t.Bot != "":
		return "bot=" + t.Bot
	}
	return "(none)"
}
