package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"gopkg.in/yaml.v3"
)

// Output formats accepted by --format.
const (
	FormatText = "text"
	FormatJSON = "json"
	FormatYAML = "yaml"
)

// CheckFormat validates a --format value.
func CheckFormat(f string) error {
	switch f {
	case FormatText, FormatJSON, FormatYAML:
		return nil
	}
	return trace.BadParameter("--format: %q is not one of text, json, yaml", f)
}

// Write prints v as JSON or YAML; text output is the caller's job.
func Write(w io.Writer, format string, v any) error {
	switch format {
	case FormatJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return trace.Wrap(enc.Encode(v))
	case FormatYAML:
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		if err := enc.Encode(v); err != nil {
			return trace.Wrap(err)
		}
		return trace.Wrap(enc.Close())
	}
	return trace.BadParameter("--format: %q is not one of text, json, yaml", format)
}

// Table prints rows under a header, aligned.
func Table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	seps := make([]string, len(header))
	for i, h := range header {
		seps[i] = strings.Repeat("-", len(h))
	}
	fmt.Fprintln(tw, strings.Join(seps, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return trace.Wrap(tw.Flush())
}

// Message turns an error into the one line a user sees: the gateway's
// own words for Connect errors, a hint when the gateway is unreachable.
func Message(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		switch ce.Code() {
		case connect.CodeUnavailable:
			return "cannot reach the gateway: " + ce.Message() + " (is sigild running, and is --proxy right?)"
		case connect.CodeUnauthenticated:
			return ce.Message()
		}
		if ce.Message() != "" {
			return ce.Message()
		}
	}
	return strings.TrimSpace(trace.UserMessage(err))
}

// Labels renders labels as "k1=v1,k2=v2", keys sorted.
func Labels(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}

// Traits renders traits as "k1=a,b k2=c", keys sorted.
func Traits(traits map[string][]string) string {
	keys := make([]string, 0, len(traits))
	for k := range traits {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+strings.Join(traits[k], ","))
	}
	return strings.Join(parts, " ")
}

// SplitList splits a comma-separated flag value, dropping blanks.
func SplitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// OneLine squeezes white space so a statement fits one table cell, cut at
// n runes with an ellipsis.
func OneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
