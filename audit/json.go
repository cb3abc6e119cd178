package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"

	"github.com/gravitational/trace"
	"google.golang.org/protobuf/encoding/protojson"
)

var (
	jsonMarshal   = protojson.MarshalOptions{UseProtoNames: true}
	jsonUnmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}
)

// MarshalJSONLine encodes ev as one line of JSON (snake_case field names,
// the same form the API's JSON and `sigilctl audit --format json` use),
// without the trailing newline.
func MarshalJSONLine(ev *Event) ([]byte, error) {
	b, err := jsonMarshal.Marshal(ev)
	if err != nil {
		return nil, trace.Wrap(err, "encoding audit event")
	}
	// protojson may add spaces but never newlines in single-line mode;
	// compact anyway so one event is always exactly one line.
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return nil, trace.Wrap(err)
	}
	return buf.Bytes(), nil
}

// UnmarshalJSONLine parses one line written by MarshalJSONLine. Unknown
// fields are ignored so newer writers stay readable.
func UnmarshalJSONLine(line []byte) (*Event, error) {
	if len(line) > MaxEventBytes {
		return nil, trace.LimitExceeded("audit event line is %d bytes, over the %d byte limit", len(line), MaxEventBytes)
	}
	ev := &Event{}
	if err := jsonUnmarshal.Unmarshal(line, ev); err != nil {
		return nil, trace.BadParameter("malformed audit event: %v", err)
	}
	return ev, nil
}

// Read parses JSON-lines audit events from r. Blank lines are skipped; a
// malformed or oversized line is an error naming its number.
func Read(r io.Reader) ([]*Event, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), MaxEventBytes+1)
	var events []*Event
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		ev, err := UnmarshalJSONLine(line)
		if err != nil {
			return nil, trace.BadParameter("line %d: %v", n, err)
		}
		events = append(events, ev)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, trace.LimitExceeded("audit event line exceeds %d bytes", MaxEventBytes)
		}
		return nil, trace.Wrap(err)
	}
	return events, nil
}

// ReadFile parses a JSON-lines audit file (e.g. from `sigilctl audit export`).
func ReadFile(path string) ([]*Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	defer f.Close()
	events, err := Read(f)
	return events, trace.Wrap(err, "reading %s", path)
}
