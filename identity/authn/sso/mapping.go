package sso

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
)

// Limits on what a provider can push into a certificate through claims.
const (
	maxClaims      = 256
	maxClaimValues = 1024
	maxValueLen    = 1024
	// maxReportLen bounds the refusal message: it names claims and rules,
	// and a provider may send many of both.
	maxReportLen = 2048
)

// Claims are the values of each claim (OIDC) or attribute (SAML), as
// strings. A single value is a one-element list.
type Claims map[string][]string

// Rule is one claims_to_roles or attributes_to_roles entry.
type Rule struct {
	// Key is the claim or attribute name.
	Key   string
	Value string
	Roles []string
}

type compiledRule struct {
	Rule
	re *regexp.Regexp
}

// Mapper maps claims to roles and traits for one connector.
type Mapper struct {
	connector string
	// keyWord is "claim" or "attribute", for messages.
	keyWord string
	rules   []compiledRule
	traits  map[string]string
}

// NewMapper compiles rules. keyWord ("claim" or "attribute") is used in
// messages; traits maps trait names to claim names.
func NewMapper(connector, keyWord string, rules []Rule, traits map[string]string) (*Mapper, error) {
	m := &Mapper{connector: connector, keyWord: keyWord, traits: traits}
	for i, r := range rules {
		re, err := types.CompileClaimValue(r.Value)
		if err != nil {
			return nil, trace.BadParameter("connector %q mapping %d: %v", connector, i, err)
		}
		for _, role := range r.Roles {
			if err := types.CheckRoleTemplate(fmt.Sprintf("connector %q mapping %d role", connector, i), role, re.NumSubexp()); err != nil {
				return nil, trace.Wrap(err)
			}
		}
		m.rules = append(m.rules, compiledRule{Rule: r, re: re})
	}
	return m, nil
}

// ForOIDC returns the mapper of an OIDC connector.
func ForOIDC(c *types.OIDCConnector) (*Mapper, error) {
	rules := make([]Rule, 0, len(c.Spec.ClaimsToRoles))
	for _, r := range c.Spec.ClaimsToRoles {
		rules = append(rules, Rule{Key: r.Claim, Value: r.Value, Roles: r.Roles})
	}
	return NewMapper(c.Metadata.Name, "claim", rules, c.Spec.Traits)
}

// ForSAML returns the mapper of a SAML connector.
func ForSAML(c *types.SAMLConnector) (*Mapper, error) {
	rules := make([]Rule, 0, len(c.Spec.AttributesToRoles))
	for _, r := range c.Spec.AttributesToRoles {
		rules = append(rules, Rule{Key: r.Name, Value: r.Value, Roles: r.Roles})
	}
	return NewMapper(c.Metadata.Name, "attribute", rules, c.Spec.Traits)
}

// Result is what a login maps to.
type Result struct {
	Roles  []string
	Traits map[string][]string
}

// Map returns the roles and traits for claims. When no rule grants a
// role, the error is trace.AccessDenied naming the claims received and the
// connector's rules, so a user (and the admin they show it to) can see
// why.
func (m *Mapper) Map(c Claims) (*Result, error) {
	roles := m.Roles(c)
	if len(roles) == 0 {
		return nil, trace.AccessDenied("%s", m.refusal(c))
	}
	return &Result{Roles: roles, Traits: m.Traits(c)}, nil
}

// Roles returns the roles every matching rule grants, in rule order,
// without duplicates. Expanded names that are not valid role names are
// skipped: a capture can hold anything the provider sends.
func (m *Mapper) Roles(c Claims) []string {
	var out []string
	seen := map[string]bool{}
	for _, r := range m.rules {
		for _, v := range c[r.Key] {
			captures := r.re.FindStringSubmatch(v)
			if captures == nil {
				continue
			}
			for _, tpl := range r.Roles {
				role := types.ExpandRoleTemplate(tpl, captures)
				if seen[role] || types.ValidateName("role", role) != nil {
					continue
				}
				seen[role] = true
				out = append(out, role)
			}
		}
	}
	return out
}

// Traits returns the traits the connector takes from claims; values that
// could not go into a certificate (empty, too long, control characters)
// are dropped.
func (m *Mapper) Traits(c Claims) map[string][]string {
	out := map[string][]string{}
	for trait, claim := range m.traits {
		var vals []string
		for _, v := range c[claim] {
			if v == "" || len(v) > maxValueLen || !utf8.ValidString(v) || strings.IndexFunc(v, unicode.IsControl) >= 0 {
				continue
			}
			vals = append(vals, v)
		}
		if len(vals) > 0 {
			out[trait] = vals
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// refusal explains why no rule matched.
func (m *Mapper) refusal(c Claims) string {
	var b strings.Builder
	fmt.Fprintf(&b, "no role mapping of connector %q matched what the identity provider sent. ", m.connector)
	b.WriteString("Received: ")
	b.WriteString(Describe(c, m.ruleKeys()))
	b.WriteString(". Rules: ")
	for i, r := range m.rules {
		if i > 0 {
			b.WriteString("; ")
		}
		op := "="
		if r.re.NumSubexp() > 0 || types.IsRegexp(r.Value) || strings.Contains(r.Value, "*") {
			op = "matches"
		}
		fmt.Fprintf(&b, "%s %s %s %q -> [%s]", m.keyWord, r.Key, op, r.Value, strings.Join(r.Roles, ", "))
	}
	b.WriteString(". Ask an admin to grant you a mapped group or to extend the connector's rules.")
	return clip(b.String(), maxReportLen)
}

func (m *Mapper) ruleKeys() map[string]bool {
	keys := map[string]bool{}
	for _, r := range m.rules {
		keys[r.Key] = true
	}
	return keys
}

// protocolClaims are ID token claims about the token, not the user: they
// only clutter a list of what the provider said about someone.
var protocolClaims = map[string]bool{
	"iss": true, "aud": true, "exp": true, "iat": true, "nbf": true, "nonce": true, "azp": true,
	"at_hash": true, "c_hash": true, "auth_time": true, "amr": true, "acr": true, "sid": true,
	"jti": true, "client_id": true,
}

// Describe lists claims for messages: the values of the claims in show,
// then the names of the others (leaving out token plumbing such as iss,
// aud and exp).
func Describe(c Claims, show map[string]bool) string {
	names := make([]string, 0, len(c))
	for k := range c {
		names = append(names, k)
	}
	sort.Strings(names)
	var shown, others []string
	for _, k := range names {
		if !show[k] {
			if !protocolClaims[k] {
				others = append(others, k)
			}
			continue
		}
		vals := make([]string, 0, len(c[k]))
		for i, v := range c[k] {
			if i == 20 {
				vals = append(vals, fmt.Sprintf("... %d more", len(c[k])-i))
				break
			}
			vals = append(vals, strconv.Quote(clip(v, 80)))
		}
		shown = append(shown, fmt.Sprintf("%s=[%s]", k, strings.Join(vals, ", ")))
	}
	var missing []string
	for k := range show {
		if _, ok := c[k]; !ok {
			missing = append(missing, k)
		}
	}
	sort.Strings(missing)
	var parts []string
	if len(shown) > 0 {
		parts = append(parts, strings.Join(shown, ", "))
	}
	if len(missing) > 0 {
		parts = append(parts, "no "+strings.Join(missing, ", "))
	}
	if len(others) > 0 {
		parts = append(parts, "other claims: "+strings.Join(others, ", "))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, "; ")
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

// FromJSON flattens decoded JSON claims (an ID token's or userinfo's):
// strings, numbers and booleans become one value, lists of them many;
// nested objects are skipped. Past the limits, claims and values are
// dropped rather than refused, since a provider decides what it sends.
func FromJSON(raw map[string]any) Claims {
	out := Claims{}
	for k, v := range raw {
		if len(out) >= maxClaims {
			break
		}
		var vals []string
		switch x := v.(type) {
		case []any:
			for _, e := range x {
				if s, ok := scalar(e); ok && len(vals) < maxClaimValues {
					vals = append(vals, s)
				}
			}
		default:
			if s, ok := scalar(x); ok {
				vals = []string{s}
			}
		}
		if len(vals) > 0 {
			out[k] = vals
		}
	}
	return out
}

func scalar(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case bool:
		return strconv.FormatBool(x), true
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case int64:
		return strconv.FormatInt(x, 10), true
	case int:
		return strconv.Itoa(x), true
	}
	return "", false
}

// Add appends values to a claim, within the limits FromJSON keeps.
func (c Claims) Add(key string, values ...string) {
	if _, ok := c[key]; !ok && len(c) >= maxClaims {
		return
	}
	for _, v := range values {
		if len(c[key]) >= maxClaimValues {
			return
		}
		c[key] = append(c[key], v)
	}
}

// First returns the first value of a claim, or "".
func (c Claims) First(key string) string {
	if vals := c[key]; len(vals) > 0 {
		return vals[0]
	}
	return ""
}
