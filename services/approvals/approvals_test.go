package approvals

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/identity/certid"
	"github.com/sigilhq/sigil/services/storage/badger"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newService(t *testing.T, maxPending int) (*Service, *clock) {
	t.Helper()
	b, err := badger.New(context.Background(), badger.Config{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	// Near the real time: the backend expires items by the real clock.
	c := &clock{now: time.Now().UTC().Truncate(time.Second)}
	s, err := New(Config{Backend: b, Clock: c.Now, MaxPending: maxPending})
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

var (
	alice = &certid.Identity{Name: "alice", Kind: certid.KindHuman, Roles: []string{"dev"}}
	bob   = &certid.Identity{Name: "bob", Kind: certid.KindHuman, Roles: []string{"dba"}}
	agent = &certid.Identity{Name: "claude", Kind: certid.KindAgent, Roles: []string{"agent-writer"}, OnBehalfOf: "alice"}
)

func write(id *certid.Identity, db, fp string) UseRequest {
	return UseRequest{
		Identity: id, Database: db, DBUser: "app", DBName: "shop",
		Statement: "UPDATE orders SET state = 'shipped' WHERE id = 42", Fingerprint: fp,
		SessionID: "sess-1", ClientAddr: "127.0.0.1:5555", Class: "write",
	}
}

func mustUse(t *testing.T, s *Service, req UseRequest) UseResult {
	t.Helper()
	res, err := s.Use(context.Background(), req)
	if err != nil {
		t.Fatalf("Use: %v", err)
	}
	return res
}

func TestPendingIsReusedThenApprovedOnce(t *testing.T) {
	s, clk := newService(t, 0)
	ctx := context.Background()
	first := mustUse(t, s, write(agent, "pg1", "fp1"))
	if first.Approved || first.ID == "" {
		t.Fatalf("first use = %+v, want a pending approval", first)
	}
	a, err := s.Get(ctx, first.ID)
	if err != nil {
		t.Fatal(err)
	}
	if a.State != StatePending || a.Agent != "claude" || a.AgentKind != "agent" || a.OnBehalfOf != "alice" ||
		a.Database != "pg1" || a.DBUser != "app" || a.DBName != "shop" || a.Fingerprint != "fp1" || a.Class != "write" ||
		a.SessionID != "sess-1" || a.ClientAddr != "127.0.0.1:5555" || !strings.HasPrefix(a.Statement, "UPDATE orders") ||
		a.Expires.Sub(a.Created) != PendingTTL || strings.Join(a.Roles, ",") != "agent-writer" {
		t.Fatalf("approval = %+v", a)
	}

	// The same statement again while pending: the same approval, no new one.
	clk.advance(time.Minute)
	if again := mustUse(t, s, write(agent, "pg1", "fp1")); again.ID != first.ID || again.Approved {
		t.Fatalf("second use = %+v, want %s pending", again, first.ID)
	}
	if all, _ := s.List(ctx, Filter{}); len(all) != 1 {
		t.Fatalf("%d approvals stored, want 1", len(all))
	}

	clk.advance(time.Minute)
	reviewed, err := s.Review(ctx, alice, first.ID, true, "looks right", false)
	if err != nil {
		t.Fatal(err)
	}
	if reviewed.State != StateApproved || reviewed.Reviewer != "alice" || reviewed.Reason != "looks right" ||
		!reviewed.ReviewTime.Equal(clk.Now()) || !reviewed.Expires.Equal(clk.Now().Add(UseWindow)) {
		t.Fatalf("reviewed = %+v", reviewed)
	}

	// A different statement, another agent, another database (or db name
	// or db user in it) does not match the approval: they wait for their
	// own.
	otherName, otherUser := write(agent, "pg1", "fp1"), write(agent, "pg1", "fp1")
	otherName.DBName, otherUser.DBUser = "archive", "admin"
	for name, req := range map[string]UseRequest{
		"other db name":   otherName,
		"other db user":   otherUser,
		"other statement": write(agent, "pg1", "fp2"),
		"other database":  write(agent, "pg2", "fp1"),
		"other agent":     write(&certid.Identity{Name: "gpt", Kind: certid.KindAgent, OnBehalfOf: "alice"}, "pg1", "fp1"),
		"same name, bot":  write(&certid.Identity{Name: "claude", Kind: certid.KindBot}, "pg1", "fp1"),
	} {
		if res := mustUse(t, s, req); res.Approved || res.ID == first.ID {
			t.Fatalf("%s: %+v matched the approval", name, res)
		}
	}

	req := write(agent, "pg1", "fp1")
	req.SessionID = "sess-2"
	used := mustUse(t, s, req)
	if !used.Approved || used.ID != first.ID || used.Reviewer != "alice" {
		t.Fatalf("use after approval = %+v", used)
	}
	a, _ = s.Get(ctx, first.ID)
	if a.State != StateUsed || !a.UsedAt.Equal(clk.Now()) || a.UsedSession != "sess-2" {
		t.Fatalf("used approval = %+v", a)
	}

	// Once only: the next run asks anew.
	next := mustUse(t, s, write(agent, "pg1", "fp1"))
	if next.Approved || next.ID == first.ID {
		t.Fatalf("use after the single use = %+v, want a new pending approval", next)
	}
	if _, err := s.Review(ctx, alice, first.ID, true, "", false); err == nil || !strings.Contains(err.Error(), "is already used") {
		t.Fatalf("reviewing a used approval: %v", err)
	}
}

func TestExpiry(t *testing.T) {
	s, clk := newService(t, 0)
	ctx := context.Background()
	stale := mustUse(t, s, write(agent, "pg1", "fp1"))
	clk.advance(PendingTTL)
	if _, err := s.Review(ctx, alice, stale.ID, true, "", false); !trace.IsBadParameter(err) || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("reviewing an expired approval: %v", err)
	}
	fresh := mustUse(t, s, write(agent, "pg1", "fp1"))
	if fresh.ID == stale.ID || fresh.Approved {
		t.Fatalf("after the pending one expired: %+v", fresh)
	}
	if got, _ := s.List(ctx, Filter{State: StateExpired}); len(got) != 1 || got[0].ID != stale.ID {
		t.Fatalf("expired list = %v", got)
	}

	if _, err := s.Review(ctx, alice, fresh.ID, true, "", false); err != nil {
		t.Fatal(err)
	}
	clk.advance(UseWindow)
	late := mustUse(t, s, write(agent, "pg1", "fp1"))
	if late.Approved || late.ID == fresh.ID {
		t.Fatalf("use after the use window: %+v", late)
	}
	if a, _ := s.Get(ctx, fresh.ID); a.StateAt(clk.Now()) != StateExpired || a.State != StateApproved {
		t.Fatalf("approval past its window = %+v", a)
	}
}

func TestDenialIsFinal(t *testing.T) {
	s, _ := newService(t, 0)
	ctx := context.Background()
	res := mustUse(t, s, write(agent, "pg1", "fp1"))
	a, err := s.Review(ctx, alice, res.ID, false, "not on prod", false)
	if err != nil || a.State != StateDenied || a.Reason != "not on prod" {
		t.Fatalf("deny = %+v, %v", a, err)
	}
	if _, err := s.Review(ctx, alice, res.ID, true, "", false); err == nil || !strings.Contains(err.Error(), "is already denied") {
		t.Fatalf("approving after a denial: %v", err)
	}
	// The denial drops the approval's index entries at once.
	for _, prefix := range []string{byKeyPrefix, pendingPrefix} {
		items, err := s.cfg.Backend.List(ctx, prefix, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			if strings.HasSuffix(it.Key, "/"+res.ID) {
				t.Fatalf("index entry %s outlived the denial", it.Key)
			}
		}
	}
	next := mustUse(t, s, write(agent, "pg1", "fp1"))
	if next.Approved || next.ID == res.ID {
		t.Fatalf("use after a denial = %+v", next)
	}
}

func TestReviewerRules(t *testing.T) {
	s, _ := newService(t, 0)
	ctx := context.Background()
	res := mustUse(t, s, write(agent, "pg1", "fp1"))
	orphan := mustUse(t, s, write(&certid.Identity{Name: "cron-agent", Kind: certid.KindAgent}, "pg1", "fp1"))
	for _, tc := range []struct {
		name     string
		reviewer *certid.Identity
		id       string
		all      bool
		want     string
	}{
		{"agent itself", agent, res.ID, true, `only people review write approvals; agent "claude" cannot`},
		{"human named like the agent", &certid.Identity{Name: "claude", Kind: certid.KindHuman}, res.ID, true, `"claude" cannot review its own write`},
		{"bot", &certid.Identity{Name: "ci", Kind: certid.KindBot}, res.ID, true, "only people review"},
		{"not the delegator", bob, res.ID, false, `acting on behalf of "alice"; only alice, or someone whose role allows "update" on "approvals"`},
		{"nobody's agent", alice, orphan.ID, false, "acts for nobody"},
		{"bad id", alice, "nope", true, `"nope" is not a write approval id; run "sigil approval ls"`},
		{"unknown id", alice, "00000000-0000-0000-0000-000000000000", true, `not found; run "sigil approval ls"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.Review(ctx, tc.reviewer, tc.id, true, "", tc.all); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := s.Review(ctx, alice, res.ID, true, strings.Repeat("x", MaxReasonLen+1), false); err == nil || !strings.Contains(err.Error(), "--reason") {
		t.Fatalf("long reason: %v", err)
	}
	// Anyone allowed to review all, who is a person and not the agent.
	a, err := s.Review(ctx, bob, orphan.ID, true, "", true)
	if err != nil || a.State != StateApproved || a.Reviewer != "bob" {
		t.Fatalf("review by a reviewer of all = %+v, %v", a, err)
	}
	if got, _ := s.Get(ctx, res.ID); got.State != StatePending {
		t.Fatalf("refused reviews changed the approval: %+v", got)
	}
}

func TestConcurrentUseConsumesOnce(t *testing.T) {
	s, _ := newService(t, 0)
	ctx := context.Background()
	res := mustUse(t, s, write(agent, "pg1", "fp1"))
	if _, err := s.Review(ctx, alice, res.ID, true, "", false); err != nil {
		t.Fatal(err)
	}
	const n = 8
	results := make(chan UseResult, n)
	errs := make(chan error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r, err := s.Use(ctx, write(agent, "pg1", "fp1"))
			if err != nil {
				errs <- err
				return
			}
			results <- r
		}()
	}
	close(start)
	wg.Wait()
	close(results)
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Use: %v", err)
	}
	approved := 0
	for r := range results {
		if r.Approved {
			approved++
			if r.ID != res.ID {
				t.Fatalf("approved %s, want %s", r.ID, res.ID)
			}
		}
	}
	if approved != 1 {
		t.Fatalf("%d of %d concurrent uses ran the write, want exactly 1", approved, n)
	}
}

func TestPendingBoundPerAgent(t *testing.T) {
	s, clk := newService(t, 3)
	ctx := context.Background()
	var ids []string
	for i := range 3 {
		ids = append(ids, mustUse(t, s, write(agent, "pg1", "fp"+string(rune('a'+i)))).ID)
	}
	_, err := s.Use(ctx, write(agent, "pg1", "fp-d"))
	if !trace.IsLimitExceeded(err) || !strings.Contains(err.Error(), `agent "claude" already has 3 write approvals waiting for review; ask alice to review them`) {
		t.Fatalf("fourth pending: %v", err)
	}
	// An existing pending approval is still returned at the bound, and
	// other agents are not affected.
	if res := mustUse(t, s, write(agent, "pg1", "fpa")); res.ID != ids[0] {
		t.Fatalf("existing pending at the bound = %+v", res)
	}
	mustUse(t, s, write(&certid.Identity{Name: "gpt", Kind: certid.KindAgent}, "pg1", "fp-d"))
	// A review frees a slot; so does expiry.
	if _, err := s.Review(ctx, alice, ids[1], false, "", false); err != nil {
		t.Fatal(err)
	}
	mustUse(t, s, write(agent, "pg1", "fp-d"))
	if _, err := s.Use(ctx, write(agent, "pg1", "fp-e")); !trace.IsLimitExceeded(err) {
		t.Fatalf("at the bound again: %v", err)
	}
	clk.advance(PendingTTL)
	mustUse(t, s, write(agent, "pg1", "fp-e"))
}

func TestListFilters(t *testing.T) {
	s, clk := newService(t, 0)
	ctx := context.Background()
	a1 := mustUse(t, s, write(agent, "pg1", "fp1"))
	clk.advance(time.Second)
	other := &certid.Identity{Name: "gpt", Kind: certid.KindAgent, OnBehalfOf: "bob"}
	a2 := mustUse(t, s, write(other, "pg1", "fp1"))
	clk.advance(time.Second)
	a3 := mustUse(t, s, write(agent, "pg2", "fp1"))
	if _, err := s.Review(ctx, alice, a3.ID, true, "", false); err != nil {
		t.Fatal(err)
	}
	ids := func(f Filter) string {
		t.Helper()
		list, err := s.List(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, a := range list {
			out = append(out, a.ID)
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct {
		f    Filter
		want []string
	}{
		{Filter{}, []string{a3.ID, a2.ID, a1.ID}},
		{Filter{State: "all"}, []string{a3.ID, a2.ID, a1.ID}},
		{Filter{State: StatePending}, []string{a2.ID, a1.ID}},
		{Filter{State: StateApproved}, []string{a3.ID}},
		{Filter{Agent: "gpt"}, []string{a2.ID}},
		{Filter{OnBehalfOf: "alice", State: StatePending}, []string{a1.ID}},
	} {
		if got := ids(tc.f); got != strings.Join(tc.want, ",") {
			t.Errorf("List(%+v) = %s, want %v", tc.f, got, tc.want)
		}
	}
	if _, err := s.List(ctx, Filter{State: "done"}); err == nil || !strings.Contains(err.Error(), `--state: "done" is not one of`) {
		t.Fatalf("bad state: %v", err)
	}
}

func TestUseValidatesAndBounds(t *testing.T) {
	s, _ := newService(t, 0)
	ctx := context.Background()
	for name, req := range map[string]UseRequest{
		"no identity":    {Database: "pg1", Fingerprint: "fp"},
		"no database":    {Identity: agent, Fingerprint: "fp"},
		"no fingerprint": {Identity: agent, Database: "pg1"},
		"long db":        {Identity: agent, Database: strings.Repeat("d", 300), Fingerprint: "fp"},
	} {
		if _, err := s.Use(ctx, req); !trace.IsBadParameter(err) {
			t.Errorf("%s: %v", name, err)
		}
	}
	req := write(agent, "pg1", "fp")
	req.Statement = strings.Repeat("é", MaxStatementLen)
	res := mustUse(t, s, req)
	a, _ := s.Get(ctx, res.ID)
	if len(a.Statement) > MaxStatementLen || !strings.HasPrefix(req.Statement, a.Statement) || len(a.Statement) < MaxStatementLen-1 {
		t.Fatalf("statement of %d bytes stored as %d bytes", len(req.Statement), len(a.Statement))
	}
}
