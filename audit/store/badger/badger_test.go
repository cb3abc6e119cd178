package badger

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"google.golang.org/protobuf/proto"

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
// so the event still decodes but its content changed.
func tamper(t *testing.T, dir string, seq uint64) {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(eventKey(seq))
		if err != nil {
			return err
		}
		v, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		i := bytes.Index(v, []byte("SELECT"))
		if i < 0 {
			t.Fatalf("event %d has no statement to tamper with", seq)
		}
		v[i] ^= 0x20 // SELECT -> sELECT
		return txn.Set(eventKey(seq), v)
	})
	if err != nil {
		t.Fatal(err)
	}
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
			item, err := txn.Get(eventKey(seq))
			if err != nil {
				return err
			}
			raw, err := item.ValueCopy(nil)
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
