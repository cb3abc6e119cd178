package types

import (
	"encoding/json"
	"regexp"
	"sort"
	"strings"

	"github.com/gravitational/trace"
	"gopkg.in/yaml.v3"
)

// Labels is a label selector: keys AND, values OR. Each value is an exact
// string, "*", a glob using "*" (prod-*), or a regular expression written
// as ^...$. The key "*" with value "*" matches every resource. In YAML and
// JSON each key takes a string or a list of strings.
type Labels map[string][]string

// IsRegexp reports whether a selector value is a regular expression.
func IsRegexp(v string) bool {
	return len(v) >= 2 && strings.HasPrefix(v, "^") && strings.HasSuffix(v, "$")
}

// Check validates the selector, compiling regular expressions. field is the
// path used in error messages.
func (l Labels) Check(field string) error {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		vals := l[k]
		if k == "" {
			return trace.BadParameter("%s: empty label key", field)
		}
		if len(vals) == 0 {
			return trace.BadParameter("%s[%s]: needs at least one value", field, k)
		}
		for _, v := range vals {
			if k == Wildcard && v != Wildcard {
				return trace.BadParameter("%s[*]: the wildcard key only takes the value \"*\", got %q", field, truncate(v, 40))
			}
			if v == "" {
				return trace.BadParameter("%s[%s]: empty value", field, k)
			}
			if IsRegexp(v) {
				if _, err := regexp.Compile(v); err != nil {
					return trace.BadParameter("%s[%s]: invalid regular expression %q: %v", field, k, truncate(v, 60), err)
				}
			}
		}
	}
	return nil
}

// UnmarshalYAML accepts {key: value} and {key: [v1, v2]}.
func (l *Labels) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind == yaml.ScalarNode && node.Tag == "!!null" {
		*l = nil
		return nil
	}
	if node.Kind != yaml.MappingNode {
		return trace.BadParameter("line %d: labels must be a map of key to value or list of values", node.Line)
	}
	out := make(Labels, len(node.Content)/2)
	for i := 0; i+1 < len(node.Content); i += 2 {
		kn, vn := node.Content[i], node.Content[i+1]
		if kn.Kind != yaml.ScalarNode {
			return trace.BadParameter("line %d: label key must be a string", kn.Line)
		}
		switch vn.Kind {
		case yaml.ScalarNode:
			out[kn.Value] = append(out[kn.Value], vn.Value)
		case yaml.SequenceNode:
			for _, item := range vn.Content {
				if item.Kind != yaml.ScalarNode {
					return trace.BadParameter("line %d: label %q values must be strings", item.Line, kn.Value)
				}
				out[kn.Value] = append(out[kn.Value], item.Value)
			}
		default:
			return trace.BadParameter("line %d: label %q must be a string or a list of strings", vn.Line, kn.Value)
		}
	}
	*l = out
	return nil
}

// UnmarshalJSON accepts {"key": "value"} and {"key": ["v1", "v2"]}.
func (l *Labels) UnmarshalJSON(data []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return trace.BadParameter("labels must be an object of key to value or list of values")
	}
	if raw == nil {
		*l = nil
		return nil
	}
	out := make(Labels, len(raw))
	for k, v := range raw {
		var s string
		if err := json.Unmarshal(v, &s); err == nil {
			out[k] = []string{s}
			continue
		}
		var list []string
		if err := json.Unmarshal(v, &list); err != nil {
			return trace.BadParameter("label %q must be a string or a list of strings", k)
		}
		out[k] = list
	}
	*l = out
	return nil
}
