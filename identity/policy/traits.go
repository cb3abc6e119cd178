package policy

import (
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
)

// ApplyTraits expands a role value that may hold a trait template.
// {{internal.x}} and {{external.x}} both read trait x; literal text around
// the template is kept on each value. A value without a template passes
// through; a trait with no (non-empty) values yields nothing, so the entry
// grants nothing; a malformed template is an error.
func ApplyTraits(value string, traits map[string][]string) ([]string, error) {
	tpl, err := types.ParseTraitTemplate(value)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if tpl == nil {
		return []string{value}, nil
	}
	var out []string
	for _, v := range traits[tpl.Trait] {
		if v == "" {
			continue
		}
		out = append(out, tpl.Prefix+v+tpl.Suffix)
	}
	return out, nil
}

func applyAll(values []string, traits map[string][]string) ([]string, error) {
	var out []string
	for _, v := range values {
		expanded, err := ApplyTraits(v, traits)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		out = append(out, expanded...)
	}
	return out, nil
}
