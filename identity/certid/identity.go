package certid

import (
	"net/netip"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gravitational/trace"
)

// Kind says what kind of principal holds a certificate.
type Kind string

const (
	// KindHuman is a local or SSO user.
	KindHuman Kind = "human"
	// KindBot is a workload that joined with a token.
	KindBot Kind = "bot"
	// KindAgent is an AI agent; it may act on behalf of a human.
	KindAgent Kind = "agent"
)

// ParseKind validates s as a Kind.
func ParseKind(s string) (Kind, error) {
	switch k := Kind(s); k {
	case KindHuman, KindBot, KindAgent:
		return k, nil
	default:
		return "", trace.BadParameter("unknown identity kind %q (want human, bot or agent)", s)
	}
}

// Route binds a certificate to one resource. Zero for a general login cert.
type Route struct {
	ResourceKind string
	ResourceName string
	DBUser       string
	DBName       string
	Login        string
}

// IsZero reports whether the route is unset.
func (r Route) IsZero() bool { return r == Route{} }

// Identity is what a certificate says about its holder.
type Identity struct {
	Name           string
	Kind           Kind
	Roles          []string
	Traits         map[string][]string
	OnBehalfOf     string
	AccessRequests []string
	Route          Route
	MFADevice      string
	ClientIP       string
	// Generation counts a bot's or agent's certificate renewals (zero for
	// humans); the bots service refuses a renewal from an older one.
	Generation uint64

	// Expires and Serial come from the certificate itself: they are filled
	// on decode and by the CA when it signs, never encoded in the extension.
	Expires time.Time
	Serial  string
}

// Limits keep a hostile or buggy certificate from carrying unbounded data
// into logs, audit events and policy evaluation.
const (
	maxStringLen = 1024
	maxListLen   = 1024
)

// CheckAndSetDefaults validates the identity. It is run on every decode, so
// whatever a certificate says has passed the same checks as what was signed.
func (i *Identity) CheckAndSetDefaults() error {
	if i.Name == "" {
		return trace.BadParameter("identity name is required")
	}
	if _, err := ParseKind(string(i.Kind)); err != nil {
		return trace.Wrap(err)
	}
	if i.OnBehalfOf != "" && i.Kind != KindAgent {
		return trace.BadParameter("on_behalf_of is only valid for agents, identity %q is a %s", i.Name, i.Kind)
	}
	if i.Generation != 0 && i.Kind == KindHuman {
		return trace.BadParameter("generation is only valid for bots and agents, identity %q is a human", i.Name)
	}
	if i.OnBehalfOf == i.Name && i.Name != "" {
		return trace.BadParameter("agent %q cannot act on behalf of itself", i.Name)
	}
	for _, f := range []struct{ field, value string }{
		{"name", i.Name},
		{"on_behalf_of", i.OnBehalfOf},
		{"mfa_device", i.MFADevice},
		{"client_ip", i.ClientIP},
		{"route.resource_kind", i.Route.ResourceKind},
		{"route.resource_name", i.Route.ResourceName},
		{"route.db_user", i.Route.DBUser},
		{"route.db_name", i.Route.DBName},
		{"route.login", i.Route.Login},
	} {
		if err := checkString(f.field, f.value); err != nil {
			return trace.Wrap(err)
		}
	}
	if err := checkList("roles", i.Roles); err != nil {
		return trace.Wrap(err)
	}
	if err := checkList("access_requests", i.AccessRequests); err != nil {
		return trace.Wrap(err)
	}
	if len(i.Traits) > maxListLen {
		return trace.BadParameter("identity has %d traits, at most %d allowed", len(i.Traits), maxListLen)
	}
	for k, vals := range i.Traits {
		if k == "" {
			return trace.BadParameter("identity has a trait with an empty name")
		}
		if err := checkString("trait name", k); err != nil {
			return trace.Wrap(err)
		}
		if len(vals) > maxListLen {
			return trace.BadParameter("trait %q has %d values, at most %d allowed", k, len(vals), maxListLen)
		}
		for _, val := range vals {
			if err := checkString("trait "+k, val); err != nil {
				return trace.Wrap(err)
			}
		}
	}
	if i.ClientIP != "" {
		if _, err := netip.ParseAddr(i.ClientIP); err != nil {
			return trace.BadParameter("client_ip %q is not an IP address", i.ClientIP)
		}
	}
	if !i.Route.IsZero() && (i.Route.ResourceKind == "" || i.Route.ResourceName == "") {
		return trace.BadParameter("a route needs both resource_kind and resource_name")
	}
	return nil
}

func checkList(field string, list []string) error {
	if len(list) > maxListLen {
		return trace.BadParameter("%s has %d entries, at most %d allowed", field, len(list), maxListLen)
	}
	for _, s := range list {
		if s == "" {
			return trace.BadParameter("%s contains an empty entry", field)
		}
		if err := checkString(field, s); err != nil {
			return trace.Wrap(err)
		}
	}
	return nil
}

// checkString refuses control characters because identity fields end up in
// logs, audit records and database session settings, where a newline or
// escape sequence could forge or hide entries.
func checkString(field, s string) error {
	if len(s) > maxStringLen {
		return trace.BadParameter("%s is %d bytes long, at most %d allowed", field, len(s), maxStringLen)
	}
	if !utf8.ValidString(s) {
		return trace.BadParameter("%s is not valid UTF-8", field)
	}
	if strings.IndexFunc(s, unicode.IsControl) >= 0 {
		return trace.BadParameter("%s %q contains control characters", field, s)
	}
	return nil
}

// Logins are the Unix logins the identity may use, from its logins trait.
func (i *Identity) Logins() []string { return i.Traits[TraitLogins] }

// TraitLogins is the trait holding the Unix logins of an identity.
const TraitLogins = "logins"

func cloneStrings(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return append([]string(nil), s...)
}
