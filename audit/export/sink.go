package export

import (
	"context"

	"github.com/gravitational/trace"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit"
)

// Sink delivers batches of events to one destination.
type Sink interface {
	// Name identifies the sink in logs, status and cursor file names.
	Name() string
	// Write delivers batch (in seq order) as a whole or returns an error;
	// the forwarder then retries the same batch, so Write must not leave a
	// partial delivery behind that the retry would duplicate.
	Write(ctx context.Context, batch []*sigilv1.AuditEvent) error
}

// marshalLine encodes ev as one JSON line (no trailing newline) with the
// encoder every export path shares, so SIEMs see one format.
func marshalLine(ev *sigilv1.AuditEvent) ([]byte, error) {
	b, err := audit.MarshalJSONLine(ev)
	if err != nil {
		return nil, trace.Wrap(err, "encoding audit event %d", ev.GetSeq())
	}
	return b, nil
}
