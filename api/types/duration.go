package types

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/gravitational/trace"
	"gopkg.in/yaml.v3"
)

// Duration is a time.Duration that reads and writes as a human string
// ("8h", "1h30m", "365d", "1d12h") in YAML and JSON.
type Duration time.Duration

// Duration returns the value as a time.Duration.
func (d Duration) Duration() time.Duration { return time.Duration(d) }

// String formats without zero components: 8h rather than 8h0m0s.
func (d Duration) String() string {
	td := time.Duration(d)
	if td == 0 {
		return "0s"
	}
	if td < 0 || td%time.Second != 0 {
		return td.String()
	}
	var b strings.Builder
	h := td / time.Hour
	m := (td % time.Hour) / time.Minute
	s := (td % time.Minute) / time.Second
	if h > 0 {
		b.WriteString(strconv.FormatInt(int64(h), 10) + "h")
	}
	if m > 0 {
		b.WriteString(strconv.FormatInt(int64(m), 10) + "m")
	}
	if s > 0 {
		b.WriteString(strconv.FormatInt(int64(s), 10) + "s")
	}
	return b.String()
}

// ParseDuration parses Go durations plus a leading day count: "365d", "1d12h".
func ParseDuration(s string) (Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, trace.BadParameter("invalid duration \"\": use a value like 8h, 30m or 7d")
	}
	var days int64
	rest := s
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil || n < 0 || n > 100*365 {
			return 0, trace.BadParameter("invalid duration %q: use a value like 8h, 30m or 7d", truncate(s, 40))
		}
		days, rest = n, s[i+1:]
	}
	var td time.Duration
	if rest != "" {
		var err error
		td, err = time.ParseDuration(rest)
		if err != nil {
			return 0, trace.BadParameter("invalid duration %q: use a value like 8h, 30m or 7d", truncate(s, 40))
		}
		if days > 0 && td < 0 {
			return 0, trace.BadParameter("invalid duration %q: negative component", truncate(s, 40))
		}
	}
	td += time.Duration(days) * 24 * time.Hour
	if td < 0 {
		return 0, trace.BadParameter("invalid duration %q: must not be negative", truncate(s, 40))
	}
	return Duration(td), nil
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return trace.BadParameter("invalid duration %s: must be a string like \"8h\"", truncate(string(data), 40))
	}
	v, err := ParseDuration(s)
	if err != nil {
		return trace.Wrap(err)
	}
	*d = v
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind != yaml.ScalarNode {
		return trace.BadParameter("line %d: duration must be a string like \"8h\"", node.Line)
	}
	v, err := ParseDuration(node.Value)
	if err != nil {
		return trace.BadParameter("line %d: %s", node.Line, err.Error())
	}
	*d = v
	return nil
}
