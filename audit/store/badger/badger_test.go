package badger

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/audit/store"
	"github.com/sigilhq/sigil/audit/store/storetest"
)

func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func TestConformance(t *testing.T) {
	pub, priv := newKey(t)
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T, dir string) store.Store {
			s, err := New(context.Background(), Config{Dir: dir, Signer: priv})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		PublicKey: pub,
		Tamper:    tamper,
		Break: func(t *testing.T, s store.Store) {
			// The hook is read by the committer after this Append's batch
			// was queued, so set it through a Flush barrier.
			bs := s.(*Store)
			if err := bs.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			bs.syncHook = func() error { return errors.New("disk on fire") }
		},
	})
}

// tamper flips one byte of the statement of event seq directly in badger,
// inside the chunk that holds it, so the event still decodes but its
// content changed.
func tamper(t *testing.T, dir string, seq uint64) {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(txn *badger.Txn) error {
		key, raw, chunk, err := rawEvent(txn, seq)
		if err != nil {
			return err
		}
		i := bytes.Index(raw, []byte("SELECT"))
		if i < 0 {
			t.Fatalf("event %d has no statement to tamper with", seq)
		}
		raw[i] ^= 0x20 // SELECT -> sELECT; raw aliases chunk
		return txn.Set(key, chunk)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// rawEvent returns the key and value of the chunk holding event seq, and
// the event's stored encoding within that value.
func rawEvent(txn *badger.Txn, seq uint64) (key, raw, chunk []byte, err error) {
	it := txn.NewIterator(badger.IteratorOptions{Reverse: true, Prefix: eventPrefix})
	defer it.Close()
	if it.Seek(eventKey(seq)); !it.Valid() {
		return nil, nil, nil, fmt.Errorf("no chunk holds event %d", seq)
	}
	key = it.Item().KeyCopy(nil)
	first, err := seqOfKey(key, eventPrefix)
	if err != nil {
		return nil, nil, nil, err
	}
	chunk, err = it.Item().ValueCopy(nil)
	if err != nil {
		return nil, nil, nil, err
	}
	events, err := decodeChunk(chunk)
	if err != nil {
		return nil, nil, nil, err
	}
	if seq-first >= uint64(len(events)) {
		return nil, nil, nil, fmt.Errorf("no chunk holds event %d", seq)
	}
	return key, events[seq-first], chunk, nil
}

func TestConformanceInMemory(t *testing.T) {
	pub, priv := newKey(t)
	// In memory nothing survives Close, so the reopen-based suite does not
	// apply; check the in-memory options hold a chain and its indexes.
	s, err := New(context.Background(), Config{InMemory: true, Signer: priv})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 1; i <= 50; i++ {
		ev := &sigilv1.AuditEvent{Type: audit.EventDBQuery, Identity: &sigilv1.AuditIdentity{User: "alice"}}
		if err := s.Append(context.Background(), ev, i%5 == 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	events, err := s.Range(context.Background(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.Verify(events, nil, pub); err != nil || len(events) != 50 {
		t.Fatalf("in-memory chain: %d events, %v", len(events), err)
	}
	got, _, err := s.Search(context.Background(), store.Query{User: "alice", Limit: 10})
	if err != nil || len(got) != 10 || got[0].Seq != 50 {
		t.Fatalf("in-memory search: %d events, %v", len(got), err)
	}
}

// The store builds the canonical encoding by appending seq to the encoding
// of the other fields; it must equal what audit.CanonicalEncoding produces
// for every field set, including maps and nested messages.
func TestStoredEncodingIsCanonical(t *testing.T) {
	_, priv := newKey(t)
	s, err := New(context.Background(), Config{InMemory: true, Signer: priv})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ev := &sigilv1.AuditEvent{
		Id: "x", Type: audit.EventSSHExec, SessionId: "s", ClientAddr: "1.2.3.4:5", Success: true, Error: "e",
		Identity:  &sigilv1.AuditIdentity{User: "u", Kind: "agent", Roles: []string{"a", "b"}, OnBehalfOf: "h", Requests: []string{"r"}, MfaDevice: "m", CertSerial: "c"},
		Resource:  &sigilv1.AuditResource{Kind: "node", Name: "n", DbUser: "du", DbName: "dn", Login: "root"},
		Statement: "ls", Parameters: []string{"p1", "p2"}, Classification: "read",
		Details: map[string]string{"z": "1", "a": "2", "m": "3"},
	}
	for range 3 {
		if err := s.Append(context.Background(), ev, true); err != nil {
			t.Fatal(err)
		}
	}
	err = s.db.View(func(txn *badger.Txn) error {
		for seq := uint64(1); seq <= 3; seq++ {
			_, raw, _, err := rawEvent(txn, seq)
			if err != nil {
				return err
			}
			stored := &sigilv1.AuditEvent{}
			if err := proto.Unmarshal(raw, stored); err != nil {
				return err
			}
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(stored)
			if err != nil {
				return err
			}
			if !bytes.Equal(raw, want) {
				t.Errorf("event %d: stored bytes differ from the deterministic encoding", seq)
			}
			if h, err := audit.Hash(stored); err != nil || h != stored.Hash {
				t.Errorf("event %d: hash %s, audit.Hash %s (%v)", seq, stored.Hash, h, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestConfig(t *testing.T) {
	_, priv := newKey(t)
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Signer: priv}, "Dir is required"},
		{Config{Dir: t.TempDir(), InMemory: true, Signer: priv}, "mutually exclusive"},
		{Config{InMemory: true}, "Signer"},
	} {
		_, err := New(context.Background(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v): want error containing %q, got %v", tc.cfg, tc.want, err)
		}
	}
}

// Large batches with out-of-order times (spread well beyond one posting
// list's span), paged searches, and a Prune that cuts a batch in the
// middle: results must equal a brute-force filter of Range, across reopen.
func TestSearchAcrossBatches(t *testing.T) {
	pub, priv := newKey(t)
	dir := t.TempDir()
	s, err := New(context.Background(), Config{Dir: dir, Signer: priv, MaxBatchEvents: 700})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	base := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	r := mrand.New(mrand.NewPCG(1, 2))
	const n = 3000
	for i := range n {
		// Mostly increasing, with jitter of up to a minute and some
		// events an hour late; a few share a timestamp.
		at := base.Add(time.Duration(i)*100*time.Millisecond + time.Duration(r.IntN(60_000))*time.Millisecond)
		if i%97 == 0 {
			at = at.Add(-time.Hour)
		}
		ev := &sigilv1.AuditEvent{
			Type:      []string{audit.EventDBQuery, audit.EventSSHExec}[i%2],
			Time:      timestamppb.New(at.Truncate(10 * time.Millisecond)),
			Identity:  &sigilv1.AuditIdentity{User: fmt.Sprintf("u%d", r.IntN(7)), Kind: "human"},
			SessionId: fmt.Sprintf("s%d", i/50),
		}
		if err := s.Append(context.Background(), ev, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, s *Store, q store.Query) {
		t.Helper()
		cp, _ := s.Checkpoint(context.Background())
		var events []*sigilv1.AuditEvent
		for from := uint64(0); ; {
			page, err := s.Range(context.Background(), from, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if len(page) == 0 {
				break
			}
			events = append(events, page...)
			from = page[len(page)-1].Seq + 1
		}
		if _, err := audit.Verify(events, cp, pub); err != nil {
			t.Fatal(err)
		}
		var want []uint64
		for _, ev := range events {
			tm := ev.GetTime().AsTime()
			if (q.User == "" || ev.GetIdentity().GetUser() == q.User) && (q.Since.IsZero() || !tm.Before(q.Since)) &&
				(q.Until.IsZero() || tm.Before(q.Until)) && (len(q.Types) == 0 || q.Types[0] == ev.Type) {
				want = append(want, ev.Seq)
			}
		}
		slices.SortFunc(want, func(a, b uint64) int {
			ta, tb := events[a-events[0].Seq].GetTime().AsTime(), events[b-events[0].Seq].GetTime().AsTime()
			if c := tb.Compare(ta); c != 0 {
				return c
			}
			return int(b) - int(a)
		})
		var got []uint64
		for pages := 0; ; pages++ {
			if pages > 1000 {
				t.Fatal("pagination does not end")
			}
			page, tok, err := s.Search(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range page {
				got = append(got, ev.Seq)
			}
			if tok == "" {
				break
			}
			q.PageToken = tok
		}
		if !slices.Equal(got, want) {
			t.Fatalf("query %+v: got %d events, want %d\ngot  %v\nwant %v", q, len(got), len(want), got, want)
		}
	}
	queries := []store.Query{
		{Limit: 77},
		{User: "u3", Limit: 13},
		{Types: []string{audit.EventSSHExec}, Limit: 500},
		{User: "u1", Since: base.Add(2 * time.Minute), Until: base.Add(4 * time.Minute), Limit: 5},
		{Since: base.Add(-30 * time.Minute), Until: base.Add(time.Minute), Limit: 9},
	}
	for _, q := range queries {
		check(t, s, q)
	}
	// Cut in the middle of a batch (batches hold up to 700 events).
	events, err := s.Range(context.Background(), 1000, 1)
	if err != nil {
		t.Fatal(err)
	}
	cut := events[0].GetTime().AsTime()
	if _, err := s.Prune(context.Background(), cut); err != nil {
		t.Fatal(err)
	}
	cp, err := s.Checkpoint(context.Background())
	if err != nil || cp == nil || cp.Seq%700 == 0 {
		t.Fatalf("checkpoint %v (%v): want one inside a batch", cp, err)
	}
	for _, q := range queries {
		check(t, s, q)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = New(context.Background(), Config{Dir: dir, Signer: priv})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Prune(context.Background(), base.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, q := range queries {
		check(t, s, q)
	}
}

// Non-durable appends wait at most CommitDelay for company; a durable
// append or a Flush does not wait for the delay, and takes the waiting
// non-durable events with it.
func TestCommitDelay(t *testing.T) {
	_, priv := newKey(t)
	ctx := context.Background()
	query := func(i int) *sigilv1.AuditEvent {
		return &sigilv1.AuditEvent{Type: audit.EventDBQuery, Statement: fmt.Sprintf("SELECT %d", i)}
	}

	t.Run("durable ends the wait", func(t *testing.T) {
		s, err := New(ctx, Config{InMemory: true, Signer: priv, CommitDelay: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		for i := range 3 {
			if err := s.Append(ctx, query(i), false); err != nil {
				t.Fatal(err)
			}
		}
		if got := s.LastSeq(); got != 0 {
			t.Fatalf("LastSeq %d before anything durable with a 1h delay, want 0", got)
		}
		waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := s.Append(waitCtx, &sigilv1.AuditEvent{Type: audit.EventDBSessionStart}, true); err != nil {
			t.Fatalf("durable append with a 1h commit delay: %v", err)
		}
		if got := s.LastSeq(); got != 4 {
			t.Fatalf("LastSeq %d after the durable append, want 4 (three queries before it)", got)
		}
		evs, err := s.Range(ctx, 1, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 4 || evs[0].Statement != "SELECT 0" || evs[3].Type != audit.EventDBSessionStart {
			t.Fatalf("stored events out of order: %v", evs)
		}
	})

	t.Run("delay commits alone", func(t *testing.T) {
		s, err := New(ctx, Config{InMemory: true, Signer: priv, CommitDelay: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		nctx, cancel := context.WithCancel(ctx)
		defer cancel()
		committed := s.Notify(nctx)
		if err := s.Append(ctx, query(1), false); err != nil {
			t.Fatal(err)
		}
		select {
		case seq := <-committed:
			if seq != 1 {
				t.Fatalf("first commit published seq %d, want 1", seq)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a lone non-durable event was never committed")
		}
	})
}
