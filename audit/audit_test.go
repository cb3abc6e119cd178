package audit

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gravitational/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sigilhq/sigil/audit/store"
)

var fixedTime = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

// memStore is a minimal store.Store recording appends, for emitter tests.
type memStore struct {
	store.Store
	mu      sync.Mutex
	events  []*Event
	durable []bool
	err     error
}

func (m *memStore) Append(ctx context.Context, ev *Event, durable bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	m.events = append(m.events, ev)
	m.durable = append(m.durable, durable)
	return nil
}

func newStoreEmitter(m *memStore) *StoreEmitter {
	e := NewStoreEmitter(m)
	e.clock = func() time.Time { return fixedTime }
	return e
}

func TestStoreEmitter(t *testing.T) {
	m := &memStore{}
	e := newStoreEmitter(m)
	ev := &Event{
		Type:     EventDBSessionStart,
		Identity: &Identity{User: "alice"},
		Details:  map[string]string{"password": "hunter2hunter2", "method": "token"},
	}
	if err := e.Emit(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if ev.Id == "" || !ev.Time.AsTime().Equal(fixedTime) {
		t.Fatalf("Emit did not fill ID and Time on the caller's event: %v", ev)
	}
	if ev.Details["password"] != "hunter2hunter2" {
		t.Fatal("Emit redacted the caller's map; it must redact a copy")
	}
	if err := e.Emit(context.Background(), &Event{Type: EventDBQuery}); err != nil {
		t.Fatal(err)
	}
	if len(m.events) != 2 || !m.durable[0] || m.durable[1] {
		t.Fatalf("durable flags %v, want session start durable and query not", m.durable)
	}
	got := m.events[0]
	if got.Id != ev.Id || got.Details["password"] != redactedValue || got.Details["method"] != "token" {
		t.Fatalf("stored event: %v", got)
	}
	m.err = trace.ConnectionProblem(nil, "disk full")
	if err := e.Emit(context.Background(), &Event{Type: EventDBSessionStart}); !trace.IsConnectionProblem(err) {
		t.Fatalf("store failure must reach the caller (fail closed), got %v", err)
	}
}

func TestEmitValidation(t *testing.T) {
	e := newStoreEmitter(&memStore{})
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
	huge := &Event{Type: EventJoin, Details: map[string]string{}}
	for i := range MaxDetails {
		huge.Details[strings.Repeat("k", 4096)+string(rune('A'+i))] = strings.Repeat("v", MaxDetailBytes)
	}
	if err := e.Emit(context.Background(), huge); !trace.IsLimitExceeded(err) {
		t.Fatalf("oversized event: want LimitExceeded, got %v", err)
	}
}

func TestRedact(t *testing.T) {
	ev := &Event{Type: EventJoin, Details: map[string]string{
		"password": "hunter2hunter2", "token": "s3cr3t", "Refresh-Token": "abc",
		"db_password": "pw", "totp": "123456", "method": "token", "footprint": "large",
	}}
	Redact(ev)
	want := map[string]string{
		"password": redactedValue, "token": redactedValue, "Refresh-Token": redactedValue,
		"db_password": redactedValue, "totp": redactedValue,
		"method": "token", "footprint": "large",
	}
	for k, v := range want {
		if ev.Details[k] != v {
			t.Errorf("details[%q] = %q, want %q", k, ev.Details[k], v)
		}
	}
}

func TestBound(t *testing.T) {
	params := make([]string, 100)
	for i := range params {
		params[i] = strings.Repeat("p", 1000)
	}
	ev := &Event{Type: EventDBQuery, Statement: strings.Repeat("é", MaxStatementBytes), Parameters: params}
	Bound(ev)
	if !strings.HasSuffix(ev.Statement, truncatedSuffix) || len(ev.Statement) > MaxStatementBytes+len(truncatedSuffix) {
		t.Fatalf("statement not truncated: %d bytes", len(ev.Statement))
	}
	if !strings.HasPrefix(ev.Statement, "éé") || strings.ContainsRune(ev.Statement, '\uFFFD') {
		t.Fatal("truncation split a UTF-8 sequence")
	}
	if len(ev.Parameters) != MaxParameters+1 || ev.Parameters[MaxParameters] != truncatedSuffix {
		t.Fatalf("parameters not bounded: %d", len(ev.Parameters))
	}
	if len(ev.Parameters[0]) != MaxParameterBytes+len(truncatedSuffix) {
		t.Fatalf("parameter not truncated: %d bytes", len(ev.Parameters[0]))
	}
	if len(params[0]) != 1000 {
		t.Fatal("Bound wrote through to a parameter string")
	}
}

func TestJSONLine(t *testing.T) {
	ev := &Event{
		Id: "a", Type: EventDBQuery, Time: timestamppb.New(fixedTime), SessionId: "s1",
		Identity: &Identity{User: "alice", OnBehalfOf: "bob"}, Seq: 7, PrevHash: "00", Hash: "ff",
	}
	line, err := MarshalJSONLine(ev)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"session_id":"s1"`, `"on_behalf_of":"bob"`, `"prev_hash":"00"`, `"time":"2025-01-02T03:04:05Z"`} {
		if !strings.Contains(string(line), want) {
			t.Errorf("JSON line lacks %s: %s", want, line)
		}
	}
	if strings.ContainsAny(string(line), "\n") {
		t.Fatalf("JSON line has a newline: %q", line)
	}
	back, err := UnmarshalJSONLine(line)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(back, ev) {
		t.Fatalf("roundtrip: %v, want %v", back, ev)
	}
	input := string(line) + "\n\n" + `{"id":` + "\n"
	if _, err := Read(strings.NewReader(input)); !trace.IsBadParameter(err) || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("want BadParameter naming line 3, got %v", err)
	}
	if _, err := ReadFile(t.TempDir() + "/missing"); !trace.IsNotFound(err) {
		t.Fatalf("missing file: want NotFound, got %v", err)
	}
}

// chain builds n linked events the way a store does.
func chain(t *testing.T, n int) []*Event {
	t.Helper()
	var evs []*Event
	prev := ""
	for i := 1; i <= n; i++ {
		ev := &Event{Id: "id", Type: EventSSHExec, Seq: uint64(i), PrevHash: prev, Statement: "ls",
			Time: timestamppb.New(fixedTime.Add(time.Duration(i) * time.Second))}
		h, err := Hash(ev)
		if err != nil {
			t.Fatal(err)
		}
		ev.Hash, prev = h, h
		evs = append(evs, ev)
	}
	return evs
}

func TestVerify(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	evs := chain(t, 10)
	res, err := Verify(evs, nil, pub)
	if err != nil {
		t.Fatal(err)
	}
	if res.Events != 10 || res.FirstSeq != 1 || res.LastSeq != 10 || res.LastHash != evs[9].Hash {
		t.Fatalf("result %+v", res)
	}
	cp := &Checkpoint{Seq: 4, Hash: evs[3].Hash, Time: evs[3].Time}
	if err := SignCheckpoint(cp, priv); err != nil {
		t.Fatal(err)
	}
	if res, err := Verify(evs[4:], cp, pub); err != nil || res.FirstSeq != 5 {
		t.Fatalf("from checkpoint: %+v, %v", res, err)
	}
	if res, err := Verify(nil, cp, pub); err != nil || res.LastSeq != 4 || res.Events != 0 {
		t.Fatalf("checkpoint only: %+v, %v", res, err)
	}
	otherPub, _, _ := ed25519.GenerateKey(rand.Reader)

	mutate := func(i int, f func(ev *Event)) []*Event {
		out := make([]*Event, len(evs))
		for j, ev := range evs {
			out[j] = Clone(ev)
		}
		f(out[i])
		return out
	}
	for _, tc := range []struct {
		name   string
		events []*Event
		cp     *Checkpoint
		pub    ed25519.PublicKey
		want   string
	}{
		{"content changed", mutate(5, func(ev *Event) { ev.Statement = "rm -rf /" }), nil, pub, "event 6: hash mismatch (stored"},
		{"hash changed", mutate(2, func(ev *Event) { ev.Hash = strings.Repeat("0", 64) }), nil, pub, "event 3: hash mismatch"},
		{"link broken", mutate(7, func(ev *Event) { ev.PrevHash = evs[5].Hash }), nil, pub, "event 8: prev_hash"},
		{"missing event", append(append([]*Event{}, evs[:3]...), evs[4:]...), nil, pub, "event 4: missing"},
		{"duplicate", append(append([]*Event{}, evs[:3]...), evs[2:]...), nil, pub, "event 3: out of order or duplicate"},
		{"no checkpoint for a pruned chain", evs[4:], nil, pub, "event 1: missing"},
		{"checkpoint wrong key", evs[4:], cp, otherPub, "signature does not verify"},
		{"checkpoint does not fit", evs[5:], cp, pub, "event 5: missing"},
		{"first event bad prev", mutate(0, func(ev *Event) { ev.PrevHash = "ab" }), nil, pub, "event 1: prev_hash"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Verify(tc.events, tc.cp, tc.pub)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error containing %q, got %v", tc.want, err)
			}
		})
	}

	// Streaming: the first failure sticks.
	v, err := NewVerifier(nil)
	if err != nil {
		t.Fatal(err)
	}
	bad := mutate(1, func(ev *Event) { ev.Statement = "x" })
	for _, ev := range bad {
		v.Add(ev)
	}
	if _, err := v.Done(); err == nil || !strings.Contains(err.Error(), "event 2:") {
		t.Fatalf("streaming verifier: want event 2 reported, got %v", err)
	}

	// Streaming from a checkpoint, as sigilctl does with Export.
	v, err = NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Checkpoint(cp); err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs[4:] {
		if err := v.Add(ev); err != nil {
			t.Fatal(err)
		}
	}
	res, err = v.Done()
	if err != nil || res.Events != 6 || !strings.Contains(res.String(), "6 events, seq 5 to 10, from the signed checkpoint at seq 4") {
		t.Fatalf("streamed from checkpoint: %v, %v", res, err)
	}
	if err := v.Checkpoint(cp); err == nil {
		t.Fatal("a checkpoint after events was accepted")
	}
	v, _ = NewVerifier(nil)
	if err := v.Checkpoint(cp); err == nil || !strings.Contains(err.Error(), "no audit public key") {
		t.Fatalf("checkpoint without key: %v", err)
	}
}

func TestCheckpointSignature(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	cp := &Checkpoint{Seq: 9, Hash: "abcd", Time: timestamppb.New(fixedTime)}
	if err := SignCheckpoint(cp, priv); err != nil {
		t.Fatal(err)
	}
	if err := VerifyCheckpoint(cp, pub); err != nil {
		t.Fatal(err)
	}
	cp.Hash = "abce"
	if err := VerifyCheckpoint(cp, pub); !trace.IsCompareFailed(err) {
		t.Fatalf("altered checkpoint: want CompareFailed, got %v", err)
	}
	if err := VerifyCheckpoint(cp, nil); !trace.IsBadParameter(err) {
		t.Fatalf("no key: want BadParameter, got %v", err)
	}
}

func TestMultiEmitter(t *testing.T) {
	a, b, c := &memStore{}, &memStore{err: trace.ConnectionProblem(nil, "sink b down")}, &memStore{err: trace.ConnectionProblem(nil, "sink c down")}
	m := NewMultiEmitter(NewStoreEmitter(a), NewStoreEmitter(b), NewStoreEmitter(c))
	ev := &Event{Type: EventCertIssued, Identity: &Identity{User: "alice", CertSerial: "01"}}
	err := m.Emit(context.Background(), ev)
	if err == nil || !strings.Contains(err.Error(), "sink b down") {
		t.Fatalf("want the first error (sink b), got %v", err)
	}
	if len(a.events) != 1 || a.events[0].Id != ev.Id || ev.Id == "" {
		t.Fatalf("sink a: %v, caller ID %q", a.events, ev.Id)
	}
	if err := NewMultiEmitter(NewStoreEmitter(a)).Emit(context.Background(), &Event{Type: EventJoin}); err != nil {
		t.Fatalf("all sinks succeed: %v", err)
	}
}

func TestDiscardEmitter(t *testing.T) {
	ev := &Event{Type: EventJoin}
	if err := (DiscardEmitter{}).Emit(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if ev.Id == "" || ev.Time == nil {
		t.Fatalf("DiscardEmitter did not fill defaults: %v", ev)
	}
	var _ Emitter = DiscardEmitter{}
	var _ Emitter = (*StoreEmitter)(nil)
	var _ Emitter = (*MultiEmitter)(nil)
}

func TestIsDurable(t *testing.T) {
	for _, typ := range EventTypes() {
		want := typ != EventDBQuery && typ != EventKubeRequest && typ != EventAppRequest
		if IsDurable(typ) != want {
			t.Errorf("IsDurable(%q) = %v, want %v", typ, !want, want)
		}
	}
	if !IsDurable("some.future.type") {
		t.Error("unknown types must default to durable")
	}
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

func TestStoreEmitterEmitOwned(t *testing.T) {
	m := &memStore{}
	e := newStoreEmitter(m)
	var _ OwningEmitter = e
	ident := &Identity{User: "alice"}
	long := strings.Repeat("x", MaxStatementBytes+10)
	ev := &Event{
		Type:       EventDBQuery,
		Identity:   ident,
		Statement:  long,
		Parameters: []string{strings.Repeat("p", MaxParameterBytes+1)},
		Details:    map[string]string{"api_key": "k", "protocol": "simple"},
	}
	if err := e.EmitOwned(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if len(m.events) != 1 || m.events[0] != ev {
		t.Fatalf("EmitOwned must store the caller's event itself, stored %v", m.events)
	}
	if ev.Id == "" || !ev.Time.AsTime().Equal(fixedTime) || m.durable[0] {
		t.Fatalf("defaults or durability wrong: %v durable=%v", ev, m.durable)
	}
	// The one redaction and bounding path ran, in place.
	if ev.Details["api_key"] != redactedValue || ev.Details["protocol"] != "simple" {
		t.Fatalf("details = %v", ev.Details)
	}
	if len(ev.Statement) != MaxStatementBytes+len(truncatedSuffix) || !strings.HasSuffix(ev.Parameters[0], truncatedSuffix) {
		t.Fatalf("not bounded: statement %d bytes, parameter %q", len(ev.Statement), ev.Parameters[0])
	}
	if ev.Identity != ident || ident.User != "alice" {
		t.Fatal("sub-messages must be stored as given and left unmodified")
	}
	big := &Event{Type: EventDBQuery, Details: map[string]string{}}
	for i := range MaxDetails {
		big.Details[strings.Repeat("k", 10)+string(rune('a'+i%26))+strings.Repeat("z", i)] = strings.Repeat("v", MaxDetailBytes)
	}
	if err := e.EmitOwned(context.Background(), big); !trace.IsLimitExceeded(err) {
		t.Fatalf("oversized event: err = %v, want LimitExceeded", err)
	}
	if err := e.EmitOwned(context.Background(), &Event{}); err == nil || !strings.Contains(err.Error(), "type is required") {
		t.Fatalf("invalid event: err = %v", err)
	}
}

func TestEmitOwnedFallsBackToEmit(t *testing.T) {
	m := &memStore{}
	// MultiEmitter cannot hand one event to several sinks: it gets Emit,
	// and the caller's event is left unredacted.
	me := NewMultiEmitter(newStoreEmitter(m))
	ev := &Event{Type: EventDBQuery, Details: map[string]string{"password": "pw"}}
	if err := EmitOwned(context.Background(), me, ev); err != nil {
		t.Fatal(err)
	}
	if len(m.events) != 1 || m.events[0] == ev || ev.Details["password"] != "pw" || m.events[0].Details["password"] != redactedValue {
		t.Fatalf("stored %v, caller's %v", m.events, ev)
	}
	// A StoreEmitter takes it over.
	ev2 := &Event{Type: EventDBQuery}
	if err := EmitOwned(context.Background(), newStoreEmitter(m), ev2); err != nil {
		t.Fatal(err)
	}
	if len(m.events) != 2 || m.events[1] != ev2 {
		t.Fatalf("StoreEmitter did not take the event over: %v", m.events)
	}
}
