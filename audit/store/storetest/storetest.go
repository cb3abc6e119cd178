package storetest

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gravitational/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/audit/store"
)

// Harness tells the suite how to drive one implementation.
type Harness struct {
	// Open opens the store kept in dir: a fresh t.TempDir() creates a new
	// store, the same dir again reopens it. The suite closes what it opens.
	Open func(t *testing.T, dir string) store.Store
	// PublicKey verifies the store's checkpoints.
	PublicKey ed25519.PublicKey
	// Tamper changes one byte of the stored event seq of the closed store
	// in dir, leaving it decodable. Optional: without it that case is not run.
	Tamper func(t *testing.T, dir string, seq uint64)
	// Break makes every later write of s fail (a simulated disk failure).
	// Optional: without it that case is not run.
	Break func(t *testing.T, s store.Store)
}

// t0 is the base time of generated events; far from now so that the
// store's clock never matters.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// Run runs the conformance suite.
func Run(t *testing.T, h Harness) {
	t.Run("ConcurrentAppendsAreGapFree", func(t *testing.T) { testConcurrent(t, h) })
	t.Run("DurableAppendVisibleAndSurvivesReopen", func(t *testing.T) { testReopen(t, h) })
	t.Run("Notify", func(t *testing.T) { testNotify(t, h) })
	t.Run("Search", func(t *testing.T) { testSearch(t, h) })
	t.Run("Pagination", func(t *testing.T) { testPagination(t, h) })
	t.Run("PruneKeepsChainVerifiable", func(t *testing.T) { testPrune(t, h) })
	t.Run("RejectsOversizedAndInvalid", func(t *testing.T) { testRejects(t, h) })
	if h.Tamper != nil {
		t.Run("TamperDetected", func(t *testing.T) { testTamper(t, h) })
	}
	if h.Break != nil {
		t.Run("FailClosed", func(t *testing.T) { testFailClosed(t, h) })
	}
}

func open(t *testing.T, h Harness, dir string) store.Store {
	t.Helper()
	s := h.Open(t, dir)
	t.Cleanup(func() { s.Close() })
	return s
}

func appendEv(t *testing.T, s store.Store, ev *sigilv1.AuditEvent, durable bool) {
	t.Helper()
	if err := s.Append(context.Background(), ev, durable); err != nil {
		t.Fatalf("Append: %v", err)
	}
}

// all reads the whole log in seq order.
func all(t *testing.T, s store.Store) []*sigilv1.AuditEvent {
	t.Helper()
	var out []*sigilv1.AuditEvent
	from := uint64(0)
	for {
		page, err := s.Range(context.Background(), from, 100)
		if err != nil {
			t.Fatalf("Range(%d): %v", from, err)
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		from = page[len(page)-1].Seq + 1
	}
}

func verify(t *testing.T, h Harness, s store.Store) *audit.VerifyResult {
	t.Helper()
	cp, err := s.Checkpoint(context.Background())
	if err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	res, err := audit.Verify(all(t, s), cp, h.PublicKey)
	if err != nil {
		t.Fatalf("chain does not verify: %v", err)
	}
	return res
}

func event(user string, i int) *sigilv1.AuditEvent {
	return &sigilv1.AuditEvent{
		Type:      audit.EventDBQuery,
		Time:      timestamppb.New(t0.Add(time.Duration(i) * time.Second)),
		Identity:  &sigilv1.AuditIdentity{User: user, Kind: "human", Roles: []string{"dba"}},
		Resource:  &sigilv1.AuditResource{Kind: "db", Name: "orders"},
		Statement: fmt.Sprintf("SELECT %d", i),
		Success:   true,
		Details:   map[string]string{"b": "2", "a": "1"},
	}
}

func testConcurrent(t *testing.T, h Harness) {
	s := open(t, h, t.TempDir())
	const goroutines, perG = 20, 50
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*perG)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perG {
				ev := event(fmt.Sprintf("user%d", g), i)
				if err := s.Append(context.Background(), ev, i%2 == 0); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Append: %v", err)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := s.LastSeq(); got != goroutines*perG {
		t.Fatalf("LastSeq = %d, want %d", got, goroutines*perG)
	}
	events := all(t, s)
	if len(events) != goroutines*perG {
		t.Fatalf("Range returned %d events, want %d", len(events), goroutines*perG)
	}
	ids := make(map[string]bool)
	perUser := make(map[string]int)
	for i, ev := range events {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d: not gap-free", i+1, ev.Seq)
		}
		if ev.Id == "" || ids[ev.Id] {
			t.Fatalf("event %d: missing or duplicate id %q", ev.Seq, ev.Id)
		}
		ids[ev.Id] = true
		perUser[ev.GetIdentity().GetUser()]++
	}
	for g := range goroutines {
		if n := perUser[fmt.Sprintf("user%d", g)]; n != perG {
			t.Fatalf("user%d has %d events, want %d", g, n, perG)
		}
	}
	res := verify(t, h, s)
	if res.Events != goroutines*perG || res.LastSeq != goroutines*perG || res.LastHash != events[len(events)-1].Hash {
		t.Fatalf("verify result %+v", res)
	}
	// The canonical hash is what audit.Hash computes, not just self-consistent.
	if want, err := audit.Hash(events[0]); err != nil || events[0].Hash != want || events[0].PrevHash != "" {
		t.Fatalf("event 1 hash %q prev %q, audit.Hash = %q (%v)", events[0].Hash, events[0].PrevHash, want, err)
	}
}

func testReopen(t *testing.T, h Harness) {
	dir := t.TempDir()
	s := h.Open(t, dir)
	ev := event("alice", 1)
	ev.Type = audit.EventDBSessionStart
	ev.Id = "start-1"
	// A caller cannot choose its place in the chain.
	ev.Seq, ev.Hash = 99, "bogus"
	appendEv(t, s, ev, true)
	// Durable means visible without a Flush.
	if s.LastSeq() != 1 {
		t.Fatalf("LastSeq after durable Append = %d, want 1", s.LastSeq())
	}
	got := all(t, s)
	if len(got) != 1 || got[0].Seq != 1 || got[0].Type != audit.EventDBSessionStart || got[0].Id != "start-1" {
		t.Fatalf("Range after durable Append: %v", got)
	}
	appendEv(t, s, event("bob", 2), false)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(context.Background(), event("x", 3), true); err == nil {
		t.Fatal("Append after Close succeeded")
	}

	s2 := open(t, h, dir)
	if s2.LastSeq() != 2 {
		t.Fatalf("LastSeq after reopen = %d, want 2 (Close must flush queued events)", s2.LastSeq())
	}
	appendEv(t, s2, event("carol", 3), true)
	events := all(t, s2)
	if len(events) != 3 || events[0].Id != ev.Id || events[2].PrevHash != events[1].Hash {
		t.Fatalf("after reopen: %v", events)
	}
	verify(t, h, s2)
}

func testNotify(t *testing.T, h Harness) {
	s := open(t, h, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	ch := s.Notify(ctx)
	for i := 1; i <= 3; i++ {
		appendEv(t, s, event("alice", i), true)
	}
	deadline := time.After(5 * time.Second)
	for seen := uint64(0); seen < 3; {
		select {
		case seq, ok := <-ch:
			if !ok {
				t.Fatal("Notify channel closed early")
			}
			if seq < seen {
				t.Fatalf("Notify went backwards: %d after %d", seq, seen)
			}
			seen = seq
		case <-deadline:
			t.Fatalf("Notify never reported seq 3 (last %d)", seen)
		}
	}
	cancel()
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Notify channel not closed after ctx ended")
		}
	}
}

// corpus builds 60 events over an hour with varied fields.
func corpus(t *testing.T, s store.Store) []*sigilv1.AuditEvent {
	t.Helper()
	users := []string{"alice", "bob", "carol", "ann"}
	kinds := []string{"human", "bot", "agent"}
	types := []string{audit.EventDBQuery, audit.EventSSHExec, audit.EventUserLogin}
	var evs []*sigilv1.AuditEvent
	for i := range 60 {
		ev := &sigilv1.AuditEvent{
			Type:      types[i%3],
			Time:      timestamppb.New(t0.Add(time.Duration(i) * time.Minute)),
			Identity:  &sigilv1.AuditIdentity{User: users[i%4], Kind: kinds[i%3]},
			Resource:  &sigilv1.AuditResource{Kind: "db", Name: fmt.Sprintf("db%d", i%5)},
			SessionId: fmt.Sprintf("sess%d", i/10),
			Success:   i%7 != 0,
		}
		// Two events share a timestamp so ordering must fall back to seq.
		if i == 31 {
			ev.Time = evs[30].Time
		}
		appendEv(t, s, ev, i%10 == 0)
		evs = append(evs, ev)
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	stored := all(t, s)
	if len(stored) != 60 {
		t.Fatalf("stored %d events, want 60", len(stored))
	}
	return stored
}

func expect(evs []*sigilv1.AuditEvent, q store.Query) []uint64 {
	var out []uint64
	for _, ev := range evs {
		tm := ev.GetTime().AsTime()
		switch {
		case !q.Since.IsZero() && tm.Before(q.Since),
			!q.Until.IsZero() && !tm.Before(q.Until),
			q.User != "" && ev.GetIdentity().GetUser() != q.User,
			q.Kind != "" && ev.GetIdentity().GetKind() != q.Kind,
			len(q.Types) > 0 && !slices.Contains(q.Types, ev.Type),
			q.Resource != "" && ev.GetResource().GetName() != q.Resource,
			q.SessionID != "" && ev.SessionId != q.SessionID,
			q.Success != nil && ev.Success != *q.Success:
			continue
		}
		out = append(out, ev.Seq)
	}
	// Newest first: by time, then seq.
	slices.SortFunc(out, func(a, b uint64) int {
		ta, tb := evs[a-1].GetTime().AsTime(), evs[b-1].GetTime().AsTime()
		if c := tb.Compare(ta); c != 0 {
			return c
		}
		return int(b) - int(a)
	})
	return out
}

func seqs(evs []*sigilv1.AuditEvent) []uint64 {
	out := make([]uint64, len(evs))
	for i, ev := range evs {
		out[i] = ev.Seq
	}
	return out
}

func testSearch(t *testing.T, h Harness) {
	s := open(t, h, t.TempDir())
	evs := corpus(t, s)
	yes, no := true, false
	for _, tc := range []struct {
		name string
		q    store.Query
	}{
		{"all", store.Query{}},
		{"user", store.Query{User: "ann"}},
		{"unknown user", store.Query{User: "an"}},
		{"kind", store.Query{Kind: "bot"}},
		{"one type", store.Query{Types: []string{audit.EventSSHExec}}},
		{"two types", store.Query{Types: []string{audit.EventSSHExec, audit.EventUserLogin}}},
		{"resource", store.Query{Resource: "db3"}},
		{"session", store.Query{SessionID: "sess2"}},
		{"success", store.Query{Success: &yes}},
		{"failure", store.Query{Success: &no}},
		{"since inclusive", store.Query{Since: t0.Add(50 * time.Minute)}},
		{"until exclusive", store.Query{Until: t0.Add(10 * time.Minute)}},
		{"range", store.Query{Since: t0.Add(20 * time.Minute), Until: t0.Add(40 * time.Minute)}},
		{"user and range", store.Query{User: "alice", Since: t0.Add(20 * time.Minute), Until: t0.Add(41 * time.Minute)}},
		{"session user failure", store.Query{SessionID: "sess0", User: "alice", Success: &no}},
		{"kind type resource", store.Query{Kind: "human", Types: []string{audit.EventDBQuery}, Resource: "db0"}},
		{"empty range", store.Query{Since: t0.Add(2 * time.Hour)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.q.Limit = 1000
			got, tok, err := s.Search(context.Background(), tc.q)
			if err != nil {
				t.Fatal(err)
			}
			want := expect(evs, tc.q)
			if !slices.Equal(seqs(got), want) {
				t.Fatalf("got seqs %v, want %v", seqs(got), want)
			}
			if tok != "" {
				t.Fatalf("complete result returned page token %q", tok)
			}
			for _, ev := range got {
				if ev.Hash == "" || ev.Id == "" {
					t.Fatalf("search result not a full stored event: %v", ev)
				}
			}
		})
	}
	if _, _, err := s.Search(context.Background(), store.Query{Since: t0, Until: t0}); !trace.IsBadParameter(err) {
		t.Fatalf("until == since: want BadParameter, got %v", err)
	}
	if _, _, err := s.Search(context.Background(), store.Query{PageToken: "!!bogus"}); !trace.IsBadParameter(err) {
		t.Fatalf("bad page token: want BadParameter, got %v", err)
	}
}

func testPagination(t *testing.T, h Harness) {
	s := open(t, h, t.TempDir())
	evs := corpus(t, s)
	for _, q := range []store.Query{
		{Limit: 7},
		{Limit: 3, User: "bob"},
		{Limit: 4, Since: t0.Add(5 * time.Minute), Until: t0.Add(45 * time.Minute), Types: []string{audit.EventDBQuery, audit.EventSSHExec}},
		{Limit: 60},
	} {
		want := expect(evs, q)
		var got []uint64
		for pages := 0; ; pages++ {
			if pages > 100 {
				t.Fatal("pagination does not end")
			}
			page, tok, err := s.Search(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) > q.Limit {
				t.Fatalf("page of %d events over limit %d", len(page), q.Limit)
			}
			got = append(got, seqs(page)...)
			if tok == "" {
				break
			}
			q.PageToken = tok
		}
		if !slices.Equal(got, want) {
			t.Fatalf("query %+v: pages gave %v, want %v", q, got, want)
		}
	}
	// A page token stays valid while new events arrive: they are newer and
	// do not shift the next page.
	q := store.Query{Limit: 10}
	first, tok, err := s.Search(context.Background(), q)
	if err != nil || tok == "" || len(first) != 10 {
		t.Fatalf("first page: %d events, token %q, %v", len(first), tok, err)
	}
	appendEv(t, s, event("dave", 3600), true)
	q.PageToken = tok
	second, _, err := s.Search(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if want := expect(evs, store.Query{})[10:20]; !slices.Equal(seqs(second), want) {
		t.Fatalf("second page after a new event: %v, want %v", seqs(second), want)
	}
}

func testPrune(t *testing.T, h Harness) {
	dir := t.TempDir()
	s := h.Open(t, dir)
	// Hourly events; event 7 is out of time order (older than the cut) so
	// pruning must stop at event 6, the first event not older than it.
	for i := 1; i <= 10; i++ {
		ev := event("alice", i)
		ev.Time = timestamppb.New(t0.Add(time.Duration(i) * time.Hour))
		if i == 7 {
			ev.Time = timestamppb.New(t0)
		}
		appendEv(t, s, ev, true)
	}
	cp, err := s.Checkpoint(context.Background())
	if err != nil || cp != nil {
		t.Fatalf("checkpoint before any prune: %v, %v", cp, err)
	}
	before := all(t, s)
	n, err := s.Prune(context.Background(), t0.Add(5*time.Hour+time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Fatalf("Prune deleted %d events, want 5", n)
	}
	cp, err = s.Checkpoint(context.Background())
	if err != nil || cp == nil {
		t.Fatalf("checkpoint after prune: %v, %v", cp, err)
	}
	if cp.Seq != 5 || cp.Hash != before[4].Hash || !cp.GetTime().AsTime().Equal(t0.Add(5*time.Hour)) {
		t.Fatalf("checkpoint %v, want seq 5 hash %s", cp, before[4].Hash)
	}
	if err := audit.VerifyCheckpoint(cp, h.PublicKey); err != nil {
		t.Fatal(err)
	}
	rest := all(t, s)
	if len(rest) != 5 || rest[0].Seq != 6 {
		t.Fatalf("after prune Range gives %v", seqs(rest))
	}
	if got, _, err := s.Search(context.Background(), store.Query{User: "alice"}); err != nil || len(got) != 5 {
		t.Fatalf("search after prune: %v (%v)", seqs(got), err)
	}
	res := verify(t, h, s)
	if res.FirstSeq != 6 || res.LastSeq != 10 || res.Checkpoint == nil {
		t.Fatalf("verify after prune: %+v", res)
	}
	// Without the checkpoint the pruned chain must not pass as complete.
	if _, err := audit.Verify(rest, nil, h.PublicKey); err == nil || !strings.Contains(err.Error(), "event 1: missing") {
		t.Fatalf("verify without checkpoint: want event 1 missing, got %v", err)
	}
	// A forged checkpoint is refused.
	forged := proto.Clone(cp).(*sigilv1.AuditCheckpoint)
	forged.Seq = 4
	if _, err := audit.Verify(rest, forged, h.PublicKey); err == nil || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("verify with forged checkpoint: %v", err)
	}
	// Nothing older: a no-op that keeps the checkpoint.
	if n, err := s.Prune(context.Background(), t0); err != nil || n != 0 {
		t.Fatalf("second prune: %d, %v", n, err)
	}
	// Prune everything, then the chain continues from the checkpoint, also
	// across a reopen.
	if n, err := s.Prune(context.Background(), t0.Add(1000*time.Hour)); err != nil || n != 5 {
		t.Fatalf("prune all: %d, %v", n, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, h, dir)
	if s.LastSeq() != 10 {
		t.Fatalf("LastSeq after pruning everything and reopening = %d, want 10", s.LastSeq())
	}
	appendEv(t, s, event("bob", 11), true)
	res = verify(t, h, s)
	if res.FirstSeq != 11 || res.Checkpoint.GetSeq() != 10 {
		t.Fatalf("verify after prune-all and reopen: %+v", res)
	}
}

func testRejects(t *testing.T, h Harness) {
	s := open(t, h, t.TempDir())
	big := event("alice", 1)
	big.Statement = strings.Repeat("x", audit.MaxEventBytes)
	if err := s.Append(context.Background(), big, true); !trace.IsLimitExceeded(err) {
		t.Fatalf("oversized event: want LimitExceeded, got %v", err)
	}
	if err := s.Append(context.Background(), &sigilv1.AuditEvent{}, true); !trace.IsBadParameter(err) {
		t.Fatalf("event without type: want BadParameter, got %v", err)
	}
	if err := s.Append(context.Background(), nil, true); !trace.IsBadParameter(err) {
		t.Fatalf("nil event: want BadParameter, got %v", err)
	}
	if s.LastSeq() != 0 {
		t.Fatalf("rejected events consumed seq numbers: LastSeq %d", s.LastSeq())
	}
}

func testTamper(t *testing.T, h Harness) {
	dir := t.TempDir()
	s := h.Open(t, dir)
	for i := 1; i <= 10; i++ {
		appendEv(t, s, event("alice", i), i == 10)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	h.Tamper(t, dir, 4)
	s = open(t, h, dir)
	_, err := audit.Verify(all(t, s), nil, h.PublicKey)
	if err == nil || !strings.Contains(err.Error(), "event 4: hash mismatch") {
		t.Fatalf("tampered event 4: want hash mismatch at event 4, got %v", err)
	}
}

func testFailClosed(t *testing.T, h Harness) {
	s := open(t, h, t.TempDir())
	appendEv(t, s, event("alice", 1), true)
	h.Break(t, s)
	if err := s.Append(context.Background(), event("alice", 2), true); err == nil {
		t.Fatal("durable Append succeeded on a broken store")
	}
	for _, durable := range []bool{true, false} {
		err := s.Append(context.Background(), event("alice", 3), durable)
		if !trace.IsConnectionProblem(err) || !strings.Contains(err.Error(), "refuses") {
			t.Fatalf("Append (durable=%v) after failure: want refusal, got %v", durable, err)
		}
	}
	if s.LastSeq() != 1 {
		t.Fatalf("LastSeq after failure = %d, want 1", s.LastSeq())
	}
}
