package postgres

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/gateway/sqlpolicy"
)

// stubClassify keeps the fuzzer on our parser rather than on pg_query's:
// statements containing "w" are writes.
func stubClassify(sql string) sqlpolicy.Result {
	if strings.Contains(sql, "w") {
		return sqlpolicy.Result{Class: sqlpolicy.ClassWrite, Reason: "w"}
	}
	return sqlpolicy.Result{Class: sqlpolicy.ClassRead, Reason: "r"}
}

func encodeFrontend(t testing.TB, msgs ...pgproto3.FrontendMessage) []byte {
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// FuzzClientMessages feeds arbitrary bytes as the client stream through
// the message reader and inspector. With an admin grant nothing is
// refused, so what reaches the server must be exactly a prefix of the
// input: frames are forwarded unchanged. With a read grant the relay must
// merely never panic.
func FuzzClientMessages(f *testing.F) {
	f.Add(encodeFrontend(f, &pgproto3.Query{String: "select 1"}))
	f.Add(encodeFrontend(f, &pgproto3.Query{String: "write"}, &pgproto3.Query{String: "select 2"}))
	f.Add(encodeFrontend(f,
		&pgproto3.Parse{Name: "s", Query: "select $1"},
		&pgproto3.Bind{PreparedStatement: "s", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{{1, 2}}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Close{ObjectType: 'S', Name: "s"},
		&pgproto3.Sync{},
	))
	f.Add(encodeFrontend(f, &pgproto3.Parse{Query: "write"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}, &pgproto3.Terminate{}))
	f.Add(encodeFrontend(f, &pgproto3.CopyData{Data: []byte("1\tx\n")}, &pgproto3.CopyDone{}, &pgproto3.FunctionCall{Function: 1}))
	f.Add([]byte{'B', 0, 0, 0, 12, 0, 0, 0xff, 0xff, 0, 1, 0x80, 0})
	approve := func(_ context.Context, _, fp, _ string) (string, string, error) {
		if fp[0] < '8' {
			return "a", "b", nil
		}
		return "", "", errors.New("pending")
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, granted := range []string{"admin", "read", "approval"} {
			var up bytes.Buffer
			grant := sqlpolicy.Grant{Statements: granted, Role: "r"}
			if granted == "approval" {
				// Refusals and approvals alike must never panic.
				grant = sqlpolicy.Grant{Statements: "admin", Role: "r", WriteApproval: true}
			}
			r := newRelay(relayConfig{
				policy:       grant,
				approve:      approve,
				awaitTimeout: time.Millisecond,
				classify:     stubClassify,
				emit: func(ev *audit.Event) {
					for _, p := range ev.Parameters {
						if len(p) > maxAuditParamBytes {
							t.Fatalf("parameter of %d bytes", len(p))
						}
					}
					if len(ev.Parameters) > maxAuditParams+1 {
						t.Fatalf("%d parameters", len(ev.Parameters))
					}
				},
			}, bufio.NewReader(bytes.NewReader(in)), bufio.NewWriter(&up), &bytes.Buffer{})
			_ = r.clientLoop(context.Background())
			_ = r.uw.Flush()
			if granted == "admin" && !bytes.HasPrefix(in, up.Bytes()) {
				t.Fatalf("admin relay changed the stream:\n in  %x\n out %x", in, up.Bytes())
			}
		}
	})
}

// FuzzServerStream feeds arbitrary server bytes, in arbitrary chunks,
// through the boundary tap: without refusals queued the client receives
// exactly what the server sent.
func FuzzServerStream(f *testing.F) {
	f.Add([]byte{'Z', 0, 0, 0, 5, 'I', 'C', 0, 0, 0, 4}, uint8(3))
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8) {
		var out bytes.Buffer
		r := newRelay(relayConfig{policy: sqlpolicy.Grant{WriteApproval: chunk%2 == 0}}, nil, nil, &out)
		size := int(chunk) + 1
		for i := 0; i < len(in); i += size {
			if err := r.writeServer(in[i:min(i+size, len(in))]); err != nil {
				break
			}
		}
		if !bytes.HasPrefix(in, out.Bytes()) {
			t.Fatalf("tap changed the stream")
		}
	})
}
