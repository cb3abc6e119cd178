package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/gravitational/trace"
)

var fixedTime = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func newFileEmitter(t *testing.T, path string) *FileEmitter {
	t.Helper()
	e, err := NewFileEmitter(FileConfig{Path: path, Clock: func() time.Time { return fixedTime }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func TestFileEmitterConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit", "events.jsonl")
	e := newFileEmitter(t, path)
	const goroutines, perG = 20, 50
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*perG)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perG {
				err := e.Emit(context.Background(), &Event{
					Type:     EventDBQuery,
					Identity: Identity{User: fmt.Sprintf("user%d", g), Kind: "human", Roles: []string{"dba"}},
					Resource: Resource{Kind: "db", Name: "orders", DBUser: "app", DBName: "orders"},
					Success:  true, Statement: fmt.Sprintf("SELECT %d", i),
					Classification: ClassificationRead,
				})
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Emit: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("file mode %o, want 600", perm)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), "\n"); n != goroutines*perG {
		t.Fatalf("file has %d lines, want %d", n, goroutines*perG)
	}
	events, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != goroutines*perG {
		t.Fatalf("read %d events, want %d", len(events), goroutines*perG)
	}
	ids := make(map[string]bool)
	perUser := make(map[string]int)
	for _, ev := range events {
		if _, err := uuid.Parse(ev.ID); err != nil {
			t.Fatalf("event ID %q is not a UUID: %v", ev.ID, err)
		}
		if ids[ev.ID] {
			t.Fatalf("duplicate event ID %s", ev.ID)
		}
		ids[ev.ID] = true
		if !ev.Time.Equal(fixedTime) || ev.Type != EventDBQuery || ev.Resource.Name != "orders" || !ev.Success {
			t.Fatalf("event did not roundtrip: %+v", ev)
		}
		perUser[ev.Identity.User]++
	}
	for g := range goroutines {
		if n := perUser[fmt.Sprintf("user%d", g)]; n != perG {
			t.Fatalf("user%d has %d events, want %d", g, n, perG)
		}
	}
}

func TestFileEmitterReopenAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	e1, err := NewFileEmitter(FileConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	first := &Event{Type: EventUserLogin, Identity: Identity{User: "alice"}, Success: true}
	if err := e1.Emit(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	if first.ID == "" || first.Time.IsZero() {
		t.Fatalf("Emit did not fill ID and Time on the caller's event: %+v", first)
	}
	if err := e1.Close(); err != nil {
		t.Fatal(err)
	}
	err = e1.Emit(context.Background(), &Event{Type: EventUserLogin})
	if !trace.IsConnectionProblem(err) || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Emit after Close: want ConnectionProblem, got %v", err)
	}

	// A loosely-permissioned existing file is tightened on open.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	e2 := newFileEmitter(t, path)
	second := &Event{ID: "fixed-id", Type: EventLockCreated, Identity: Identity{User: "bob"}}
	if err := e2.Emit(context.Background(), second); err != nil {
		t.Fatal(err)
	}
	events, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 2 {
		t.Fatalf("got %d events after reopen, want 2", len(events))
	}
	if events[0].ID != first.ID || events[0].Identity.User != "alice" {
		t.Fatalf("first event changed: %+v", events[0])
	}
	if events[1].ID != "fixed-id" || events[1].Type != EventLockCreated || !events[1].Time.Equal(fixedTime) {
		t.Fatalf("second event wrong: %+v", events[1])
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("file mode %o after reopen, want 600", perm)
	}
}

func TestFileEmitterRedaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	e := newFileEmitter(t, path)
	ev := &Event{
		Type: EventJoin,
		Details: map[string]string{
			"password":      "hunter2hunter2",
			"token":         "s3cr3t-join-token",
			"Refresh-Token": "abc",
			"db_password":   "pw",
			"totp":          "123456",
			"method":        "token",
			"footprint":     "large",
		},
	}
	if err := e.Emit(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if ev.Details["password"] != "hunter2hunter2" {
		t.Fatal("Emit redacted the caller's map; it must redact a copy")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"hunter2hunter2", "s3cr3t-join-token", `"abc"`, `"pw"`, "123456"} {
		if strings.Contains(string(raw), secret) {
			t.Fatalf("secret %q written to audit file: %s", secret, raw)
		}
	}
	events, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := events[0].Details
	want := map[string]string{
		"password": redactedValue, "token": redactedValue, "Refresh-Token": redactedValue,
		"db_password": redactedValue, "totp": redactedValue,
		"method": "token", "footprint": "large",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("details[%q] = %q, want %q", k, got[k], v)
		}
	}
}

func TestFileEmitterBounds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	e := newFileEmitter(t, path)
	params := make([]string, 100)
	for i := range params {
		params[i] = strings.Repeat("p", 1000)
	}
	ev := &Event{Type: EventDBQuery, Statement: strings.Repeat("é", MaxStatementBytes), Parameters: params}
	if err := e.Emit(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if len(ev.Parameters) != 100 || len(ev.Parameters[0]) != 1000 {
		t.Fatal("Emit truncated the caller's parameters")
	}
	events, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := events[0]
	if !strings.HasSuffix(got.Statement, truncatedSuffix) || len(got.Statement) > MaxStatementBytes+len(truncatedSuffix) {
		t.Fatalf("statement not truncated: %d bytes", len(got.Statement))
	}
	if !strings.HasPrefix(got.Statement, "éé") || strings.ContainsRune(got.Statement, '\uFFFD') {
		t.Fatal("truncation split a UTF-8 sequence")
	}
	if len(got.Parameters) != MaxParameters+1 || got.Parameters[MaxParameters] != truncatedSuffix {
		t.Fatalf("parameters not bounded: %d", len(got.Parameters))
	}
	if len(got.Parameters[0]) != MaxParameterBytes+len(truncatedSuffix) {
		t.Fatalf("parameter not truncated: %d bytes", len(got.Parameters[0]))
	}
}

func TestEmitValidation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	e := newFileEmitter(t, path)
	if err := e.Emit(context.Background(), &Event{}); !trace.IsBadParameter(err) || !strings.Contains(err.Error(), "type is required") {
		t.Fatalf("missing type: want BadParameter, got %v", err)
	}
	if err := e.Emit(context.Background(), nil); !trace.IsBadParameter(err) {
		t.Fatalf("nil event: want BadParameter, got %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.Emit(ctx, &Event{Type: EventJoin}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: want context.Canceled, got %v", err)
	}
	if _, err := NewFileEmitter(FileConfig{}); !trace.IsBadParameter(err) {
		t.Fatalf("empty path: want BadParameter, got %v", err)
	}
}

func TestReadFileMalformed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	content := `{"id":"a","type":"join","time":"2025-01-02T03:04:05Z"}` + "\n\n" + `{"id":` + "\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := ReadFile(path)
	if !trace.IsBadParameter(err) || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("want BadParameter naming line 3, got %v", err)
	}
	if _, err := ReadFile(filepath.Join(t.TempDir(), "missing")); !trace.IsNotFound(err) {
		t.Fatalf("missing file: want NotFound, got %v", err)
	}
}

type recordingEmitter struct {
	mu     sync.Mutex
	events []Event
	err    error
}

func (r *recordingEmitter) Emit(ctx context.Context, ev *Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, *ev.Clone())
	return r.err
}

func TestMultiEmitter(t *testing.T) {
	a := &recordingEmitter{}
	b := &recordingEmitter{err: trace.ConnectionProblem(nil, "sink b down")}
	c := &recordingEmitter{err: trace.ConnectionProblem(nil, "sink c down")}
	m := NewMultiEmitter(a, b, c)
	ev := &Event{Type: EventCertIssued, Identity: Identity{User: "alice", CertSerial: "01"}}
	err := m.Emit(context.Background(), ev)
	if err == nil || !strings.Contains(err.Error(), "sink b down") {
		t.Fatalf("want the first error (sink b), got %v", err)
	}
	for name, r := range map[string]*recordingEmitter{"a": a, "b": b, "c": c} {
		if len(r.events) != 1 {
			t.Fatalf("sink %s got %d events, want 1", name, len(r.events))
		}
		if r.events[0].ID != ev.ID || ev.ID == "" {
			t.Fatalf("sink %s saw ID %q, caller has %q", name, r.events[0].ID, ev.ID)
		}
	}
	if err := NewMultiEmitter(a).Emit(context.Background(), &Event{Type: EventJoin}); err != nil {
		t.Fatalf("all sinks succeed: %v", err)
	}
}

func TestDiscardEmitter(t *testing.T) {
	ev := &Event{Type: EventJoin}
	if err := (DiscardEmitter{}).Emit(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if ev.ID == "" || ev.Time.IsZero() {
		t.Fatalf("DiscardEmitter did not fill defaults: %+v", ev)
	}
	var _ Emitter = DiscardEmitter{}
	var _ Emitter = (*FileEmitter)(nil)
	var _ Emitter = (*MultiEmitter)(nil)
}

func TestEventTypes(t *testing.T) {
	types := EventTypes()
	if len(types) != 19 {
		t.Fatalf("want the 19 event types from SPEC.md, got %d", len(types))
	}
	seen := make(map[string]bool)
	for _, typ := range types {
		if seen[typ] {
			t.Fatalf("duplicate event type %q", typ)
		}
		seen[typ] = true
	}
	if !IsKnownEventType(EventResourceChanged) || IsKnownEventType("db.bogus") {
		t.Fatal("IsKnownEventType wrong")
	}
}

func TestIsSecretKey(t *testing.T) {
	for key, want := range map[string]bool{
		"password": true, "Password": true, "join_token": true, "AccessToken": true,
		"x-api-key": true, "client_secret": true, "otp": true, "mfa-totp": true,
		"private-key": true, "cookie": true, "key_id": false, "public_key": false,
		"method": false, "footprint": false, "keyboard": false, "user": false, "reason": false,
	} {
		if got := IsSecretKey(key); got != want {
			t.Errorf("IsSecretKey(%q) = %v, want %v", key, got, want)
		}
	}
}
