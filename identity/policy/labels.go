package policy

import (
	"regexp"
	"strings"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
)

// MatchLabels reports whether labels satisfy the selector: every key must
// match (AND) and a key matches when any of its values does (OR). Values are
// exact strings, "*", globs using "*", or ^regex$. The key "*" with value "*"
// matches everything. An empty selector matches nothing.
func MatchLabels(sel types.Labels, labels map[string]string) (bool, error) {
	if len(sel) == 0 {
		return false, nil
	}
	for key, vals := range sel {
		if key == types.Wildcard {
			for _, v := range vals {
				if v != types.Wildcard {
					return false, trace.BadParameter("label selector key \"*\" only takes the value \"*\", got %q", v)
				}
			}
			continue
		}
		actual, ok := labels[key]
		if !ok {
			return false, nil
		}
		matched := false
		for _, v := range vals {
			m, err := matchValue(v, actual)
			if err != nil {
				return false, trace.Wrap(err)
			}
			if m {
				matched = true
				break
			}
		}
		if !matched {
			return false, nil
		}
	}
	return true, nil
}

func matchValue(pattern, value string) (bool, error) {
	switch {
	case pattern == types.Wildcard:
		return true, nil
	case types.IsRegexp(pattern):
		re, err := regexp.Compile(pattern)
		if err != nil {
			return false, trace.BadParameter("invalid label regular expression %q: %v", pattern, err)
		}
		return re.MatchString(value), nil
	case strings.Contains(pattern, "*"):
		return globMatch(pattern, value), nil
	}
	return pattern == value, nil
}

// globMatch matches with "*" as the only metacharacter, spanning any run of
// characters (including "/" and "."), without building a regexp.
func globMatch(pattern, value string) bool {
	parts := strings.Split(pattern, "*")
	if !strings.HasPrefix(value, parts[0]) {
		return false
	}
	value = value[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(value, mid)
		if i < 0 {
			return false
		}
		value = value[i+len(mid):]
	}
	return len(value) >= len(last) && strings.HasSuffix(value, last)
}
