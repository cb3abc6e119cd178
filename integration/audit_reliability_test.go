package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/sigilhq/sigil/api/client"
	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/integration/testenv"
)

// callDeadline is how long one audited API call may take: export must
// never hold up the callers that emit events.
const callDeadline = 5 * time.Second

// createRoles makes n audited admin API calls, failing the test if one
// fails or does not complete within callDeadline.
func createRoles(t *testing.T, clt *client.Client, prefix string, n int) {
	t.Helper()
	for i := range n {
		name := fmt.Sprintf("%s-%d", prefix, i)
		role, err := types.NewRole(name, types.RoleSpec{})
		if err != nil {
			t.Fatal(err)
		}
		data, err := types.MarshalResource(role)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), callDeadline)
		start := time.Now()
		_, err = clt.Resources.CreateResource(ctx, connect.NewRequest(&sigilv1.CreateResourceRequest{
			Resource: &sigilv1.Resource{Kind: types.KindRole, Name: name, Json: data},
		}))
		cancel()
		if err != nil {
			t.Fatalf("creating role %s (after %v): %v", name, time.Since(start), err)
		}
	}
}

// storeEvents returns every event in the audit store, through the API's
// Export stream (what sigilctl audit export uses).
func storeEvents(t *testing.T, clt *client.Client) []*sigilv1.AuditEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := clt.Audit.Export(ctx, connect.NewRequest(&sigilv1.ExportAuditRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	var out []*sigilv1.AuditEvent
	for stream.Receive() {
		if ev := stream.Msg().Event; ev != nil {
			out = append(out, ev)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("the audit store is empty")
	}
	return out
}

// checkDelivered compares what a sink received with the store's events:
// got must be strictly increasing (a duplicate or reordering fails at
// once, wrapped in testenv.Fatal) and start with exactly want, event for
// event; later events may follow. Too few events is a retryable error.
func checkDelivered(got, want []*sigilv1.AuditEvent) error {
	for i := 1; i < len(got); i++ {
		if got[i].GetSeq() <= got[i-1].GetSeq() {
			return testenv.Fatal(fmt.Errorf("delivered seq %d after seq %d (position %d): duplicate or out of order", got[i].GetSeq(), got[i-1].GetSeq(), i))
		}
	}
	for i, w := range want {
		if i >= len(got) {
			return fmt.Errorf("%d of %d events delivered so far", len(got), len(want))
		}
		if got[i].GetSeq() != w.GetSeq() || got[i].GetHash() != w.GetHash() || got[i].GetHash() == "" {
			return testenv.Fatal(fmt.Errorf("delivered event %d is seq %d hash %q, want seq %d hash %q",
				i, got[i].GetSeq(), got[i].GetHash(), w.GetSeq(), w.GetHash()))
		}
	}
	return nil
}

// siemReceiver is an NDJSON webhook target that answers 503 until it is
// brought up, then records every event it accepts.
type siemReceiver struct {
	mu       sync.Mutex
	up       bool
	failures int
	events   []*sigilv1.AuditEvent
	errs     []string
}

func (s *siemReceiver) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.up {
		s.failures++
		http.Error(rw, "down for maintenance", http.StatusServiceUnavailable)
		return
	}
	fail := func(msg string) {
		s.errs = append(s.errs, msg)
		http.Error(rw, msg, http.StatusBadRequest)
	}
	switch {
	case err != nil:
		fail("reading body: " + err.Error())
		return
	case r.Method != http.MethodPost || r.URL.Path != "/ingest":
		fail("unexpected " + r.Method + " " + r.URL.Path)
		return
	case r.Header.Get("Content-Type") != "application/x-ndjson":
		fail("content type " + r.Header.Get("Content-Type"))
		return
	}
	evs, err := audit.Read(bytes.NewReader(body))
	if err != nil || len(evs) == 0 {
		fail(fmt.Sprintf("bad body (%d events): %v", len(evs), err))
		return
	}
	if key, want := r.Header.Get("Idempotency-Key"), fmt.Sprintf("%d-%d", evs[0].GetSeq(), evs[len(evs)-1].GetSeq()); key != want {
		fail("Idempotency-Key " + key + ", want " + want)
		return
	}
	s.events = append(s.events, evs...)
	rw.WriteHeader(http.StatusOK)
}

func (s *siemReceiver) setUp() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.up = true
}

// state returns the refused requests, the accepted events and any
// protocol errors seen.
func (s *siemReceiver) state() (int, []*sigilv1.AuditEvent, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failures, slices.Clone(s.events), slices.Clone(s.errs)
}

// TestAuditWebhookDownThenUp runs a real sigild against a SIEM that is
// down: audited calls must not wait for it, and once it is up it must
// receive every event exactly once, in order.
func TestAuditWebhookDownThenUp(t *testing.T) {
	t.Parallel()
	recv := &siemReceiver{}
	srv := httptest.NewServer(recv)
	defer srv.Close()
	d := testenv.StartDaemonWithConfig(t, "", fmt.Sprintf(`
audit:
  export:
    webhooks:
      - name: siem
        url: %s/ingest
        timeout: 5s
`, srv.URL))
	clt := d.AdminClient(t)

	createRoles(t, clt, "while-down", 60)
	// The forwarder is trying and being refused, yet the calls above all
	// returned: delivery is decoupled from emitting.
	testenv.Eventually(t, 10*time.Second, func() error {
		if failures, _, _ := recv.state(); failures < 2 {
			return fmt.Errorf("%d refused deliveries so far", failures)
		}
		return nil
	})
	createRoles(t, clt, "still-down", 40)
	if _, got, _ := recv.state(); len(got) != 0 {
		t.Fatalf("the receiver accepted %d events while down", len(got))
	}

	recv.setUp()
	want := storeEvents(t, clt)
	testenv.Eventually(t, 20*time.Second, func() error {
		_, got, errs := recv.state()
		if len(errs) > 0 {
			return testenv.Fatal(fmt.Errorf("receiver saw bad requests: %v", errs))
		}
		return checkDelivered(got, want)
	})

	// Events after the recovery follow without a gap, and a graceful stop
	// does not re-send anything.
	createRoles(t, clt, "after-up", 10)
	want = storeEvents(t, clt)
	testenv.Eventually(t, 10*time.Second, func() error {
		_, got, _ := recv.state()
		return checkDelivered(got, want)
	})
	d.Stop()
	_, got, errs := recv.state()
	if err := checkDelivered(got, want); err != nil || len(errs) > 0 {
		t.Fatalf("after stopping sigild: %v; receiver errors: %v", err, errs)
	}
	if len(got) != len(want) {
		t.Fatalf("receiver has %d events, the store %d", len(got), len(want))
	}
}

// TestAuditVerifyDetectsTampering changes one stored event behind a
// stopped sigild's back; audit verify must then fail naming that event.
func TestAuditVerifyDetectsTampering(t *testing.T) {
	t.Parallel()
	d := testenv.StartDaemon(t, "")
	createRoles(t, d.AdminClient(t), "tamper", 25)
	verify := func() testenv.Result {
		return testenv.Run(t, nil, "", "sigilctl", "--data-dir", d.DataDir, "audit", "verify")
	}
	if r := verify(); r.ExitCode != 0 || !strings.Contains(r.Stdout, "Audit chain OK") {
		t.Fatalf("audit verify before tampering: exit %d\nstdout: %s\nstderr: %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	d.Stop()

	const seq = 17
	if err := testenv.TamperAuditEvent(d.DataDir, seq); err != nil {
		t.Fatal(err)
	}
	d = testenv.StartDaemon(t, d.DataDir)
	r := verify()
	out := r.Stdout + r.Stderr
	if r.ExitCode != 1 || !strings.Contains(out, fmt.Sprintf("event %d:", seq)) {
		t.Fatalf("audit verify after tampering with event %d: exit %d, want 1 naming the event\nstdout: %s\nstderr: %s", seq, r.ExitCode, r.Stdout, r.Stderr)
	}
	t.Logf("audit verify after tampering: %s", strings.TrimSpace(out))
	if strings.Contains(out, "Audit chain OK") {
		t.Fatalf("audit verify reported OK after tampering:\n%s", out)
	}
}

// readJSONLFiles returns the events in path's rotated siblings (oldest
// first, as their names sort) followed by path itself.
func readJSONLFiles(t *testing.T, path string) ([]*sigilv1.AuditEvent, int, error) {
	t.Helper()
	ext := filepath.Ext(path)
	rotated, err := filepath.Glob(strings.TrimSuffix(path, ext) + "-*" + ext)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(rotated)
	var evs []*sigilv1.AuditEvent
	for _, p := range append(rotated, path) {
		b, err := os.ReadFile(p)
		if err != nil {
			// Rotation may be renaming it right now.
			return nil, 0, err
		}
		// The sink writes whole lines per batch, but a poll may catch a
		// write in progress: only complete lines count.
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			b = b[:i+1]
		} else {
			b = nil
		}
		got, err := audit.Read(bytes.NewReader(b))
		if err != nil {
			return nil, 0, testenv.Fatal(fmt.Errorf("%s: %v", p, err))
		}
		evs = append(evs, got...)
	}
	return evs, len(rotated) + 1, nil
}

// TestAuditFileSinkRotation exports through the real daemon to a
// size-rotated JSON-lines file: together the files must hold every event
// exactly once, in order.
func TestAuditFileSinkRotation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	d := testenv.StartDaemonWithConfig(t, "", fmt.Sprintf(`
audit:
  export:
    files:
      - name: f
        path: %s
        max_bytes: 20000
        max_files: 50
`, path))
	clt := d.AdminClient(t)
	createRoles(t, clt, "file", 300)
	want := storeEvents(t, clt)
	var files int
	testenv.Eventually(t, 20*time.Second, func() error {
		got, n, err := readJSONLFiles(t, path)
		if err != nil {
			return err
		}
		files = n
		return checkDelivered(got, want)
	})
	if files < 3 {
		t.Fatalf("%d events went into %d files; want several rotations at max_bytes 20000", len(want), files)
	}
	d.Stop()
	got, _, err := readJSONLFiles(t, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkDelivered(got, want); err != nil || len(got) != len(want) {
		t.Fatalf("after stopping sigild the files hold %d events, the store %d: %v", len(got), len(want), err)
	}
}
