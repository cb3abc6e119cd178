package types

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"

	"github.com/gravitational/trace"
	"gopkg.in/yaml.v3"
)

// MaxInputSize bounds a YAML file or JSON resource accepted by the parsers.
const MaxInputSize = 1 << 20

// maxWalkNodes bounds the unknown-field walk so alias-heavy documents
// cannot make it blow up.
const maxWalkNodes = 200000

// New returns an empty resource of the given kind.
func New(kind string) (Resource, error) {
	switch kind {
	case KindRole:
		return &Role{Kind: kind, Version: Version}, nil
	case KindUser:
		return &User{Kind: kind, Version: Version}, nil
	case KindDatabase:
		return &Database{Kind: kind, Version: Version}, nil
	case KindNode:
		return &Node{Kind: kind, Version: Version}, nil
	case KindToken:
		return &Token{Kind: kind, Version: Version}, nil
	case KindLock:
		return &Lock{Kind: kind, Version: Version}, nil
	case KindOIDCConnector:
		return &OIDCConnector{Kind: kind, Version: Version}, nil
	case KindSAMLConnector:
		return &SAMLConnector{Kind: kind, Version: Version}, nil
	case KindKubeCluster, KindApp:
		return &GenericResource{Kind: kind, Version: Version}, nil
	case "":
		return nil, trace.BadParameter("kind: required, one of %s", strings.Join(Kinds(), ", "))
	}
	return nil, trace.BadParameter("kind: %q is not one of %s", truncate(kind, 40), strings.Join(Kinds(), ", "))
}

// ParseYAML parses one or more YAML documents separated by "---", rejects
// unknown fields, and validates every resource. Errors name the document,
// the line where possible and the field path.
func ParseYAML(data []byte) (res []Resource, err error) {
	if len(data) > MaxInputSize {
		return nil, trace.BadParameter("input is %d bytes, larger than the %d byte limit", len(data), MaxInputSize)
	}
	defer func() {
		// yaml.v3 has had panics on hostile input; never let one escape.
		if r := recover(); r != nil {
			res, err = nil, trace.BadParameter("invalid YAML: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for doc := 1; ; doc++ {
		var node yaml.Node
		if err := dec.Decode(&node); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, trace.BadParameter("document %d: invalid YAML: %s", doc, cleanYAMLError(err))
		}
		if node.Kind == yaml.DocumentNode && len(node.Content) == 1 {
			node = *node.Content[0]
		}
		if node.Kind == 0 || (node.Kind == yaml.ScalarNode && node.Tag == "!!null") {
			continue // empty document, e.g. a trailing "---"
		}
		r, err := parseNode(&node)
		if err != nil {
			return nil, trace.BadParameter("document %d: %s", doc, err.Error())
		}
		res = append(res, r)
	}
	if len(res) == 0 {
		return nil, trace.BadParameter("no resources found in input")
	}
	return res, nil
}

func parseNode(node *yaml.Node) (Resource, error) {
	if node.Kind != yaml.MappingNode {
		return nil, trace.BadParameter("line %d: expected a resource (a map with kind, version, metadata, spec)", node.Line)
	}
	kind, kindLine := scalarField(node, "kind")
	version, versionLine := scalarField(node, "version")
	if kindLine == 0 {
		return nil, trace.BadParameter("line %d: kind: required, one of %s", node.Line, strings.Join(Kinds(), ", "))
	}
	r, err := New(kind)
	if err != nil {
		return nil, trace.BadParameter("line %d: %s", kindLine, err.Error())
	}
	if versionLine == 0 {
		return nil, trace.BadParameter("line %d: version: required, use %q", node.Line, Version)
	}
	if version != Version {
		return nil, trace.BadParameter("line %d: version: %q is not supported (use %q)", versionLine, truncate(version, 40), Version)
	}
	budget := maxWalkNodes
	if err := checkKnownFields(node, reflect.TypeOf(r).Elem(), "", &budget); err != nil {
		return nil, trace.Wrap(err)
	}
	if err := node.Decode(r); err != nil {
		return nil, trace.BadParameter("%s", cleanYAMLError(err))
	}
	if err := r.CheckAndSetDefaults(); err != nil {
		return nil, trace.BadParameter("%s %q: %s", r.GetKind(), r.GetMetadata().Name, err.Error())
	}
	return r, nil
}

// scalarField returns the value and line of a top-level scalar key; line 0
// means absent.
func scalarField(m *yaml.Node, key string) (string, int) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			v := m.Content[i+1]
			if v.Kind != yaml.ScalarNode {
				return "<" + nodeKindName(v.Kind) + ">", v.Line
			}
			return v.Value, v.Line
		}
	}
	return "", 0
}

func nodeKindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "map"
	case yaml.SequenceNode:
		return "list"
	case yaml.AliasNode:
		return "alias"
	}
	return "value"
}

var yamlUnmarshaler = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

// checkKnownFields walks node against t, reporting the first key that has no
// matching field. It does by hand what Decoder.KnownFields does, because
// KnownFields is lost once a document is decoded through a yaml.Node and
// because the walk lets the error carry the full field path.
func checkKnownFields(n *yaml.Node, t reflect.Type, path string, budget *int) error {
	*budget--
	if *budget < 0 {
		return trace.BadParameter("document is too complex")
	}
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(yamlUnmarshaler) {
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil // type mismatches are reported by the decoder
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind == yaml.ScalarNode && k.Value == "<<" {
				continue // merge key; its contents are checked by the decoder
			}
			f, ok := fields[k.Value]
			if !ok {
				names := make([]string, 0, len(fields))
				for name := range fields {
					names = append(names, name)
				}
				sort.Strings(names)
				return trace.BadParameter("line %d: %s: unknown field (known fields: %s)", k.Line, joinPath(path, truncate(k.Value, 60)), strings.Join(names, ", "))
			}
			if err := checkKnownFields(v, f.Type, joinPath(path, k.Value), budget); err != nil {
				return err
			}
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return nil
		}
		for i, item := range n.Content {
			if err := checkKnownFields(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i), budget); err != nil {
				return err
			}
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := checkKnownFields(n.Content[i+1], t.Elem(), fmt.Sprintf("%s[%s]", path, truncate(n.Content[i].Value, 60)), budget); err != nil {
				return err
			}
		}
	}
	return nil
}

func yamlFields(t reflect.Type) map[string]reflect.StructField {
	out := make(map[string]reflect.StructField, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f
	}
	return out
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// cleanYAMLError drops the library's "yaml: " prefix and Go type names that
// mean nothing to users.
func cleanYAMLError(err error) string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return strings.Join(te.Errors, "; ")
	}
	var tErr trace.Error
	if errors.As(err, &tErr) {
		return tErr.Error()
	}
	return strings.TrimPrefix(err.Error(), "yaml: ")
}

// UnmarshalResource decodes a resource from its JSON wire form (the whole
// resource: kind, version, metadata, spec) and validates it. kind may be
// empty to take it from the document; when set, the document must agree.
func UnmarshalResource(kind string, data []byte) (Resource, error) {
	if len(data) > MaxInputSize {
		return nil, trace.BadParameter("input is %d bytes, larger than the %d byte limit", len(data), MaxInputSize)
	}
	var hdr struct {
		Kind    string `json:"kind"`
		Version string `json:"version"`
	}
	if err := json.Unmarshal(data, &hdr); err != nil {
		return nil, trace.BadParameter("invalid resource JSON: %v", err)
	}
	switch {
	case hdr.Kind == "":
		hdr.Kind = kind
	case kind != "" && hdr.Kind != kind:
		return nil, trace.BadParameter("kind: got %q, want %q", truncate(hdr.Kind, 40), kind)
	}
	if hdr.Version != "" && hdr.Version != Version {
		return nil, trace.BadParameter("version: %q is not supported (use %q)", truncate(hdr.Version, 40), Version)
	}
	r, err := New(hdr.Kind)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(r); err != nil {
		return nil, trace.BadParameter("invalid %s JSON: %v", hdr.Kind, err)
	}
	if err := r.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return r, nil
}

// MarshalResource encodes a resource in its JSON wire form.
func MarshalResource(r Resource) ([]byte, error) {
	data, err := json.Marshal(r)
	return data, trace.Wrap(err)
}

// MarshalYAML encodes resources as a multi-document YAML stream that
// ParseYAML reads back.
func MarshalYAML(rs ...Resource) ([]byte, error) {
	var buf bytes.Buffer
	for i, r := range rs {
		if i > 0 {
			buf.WriteString("---\n")
		}
		data, err := yaml.Marshal(r)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		buf.Write(data)
	}
	return buf.Bytes(), nil
}
