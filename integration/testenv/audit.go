package testenv

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"log/slog"
	"path/filepath"

	"github.com/dgraph-io/badger/v4"
	"github.com/gravitational/trace"

	auditbadger "github.com/sigilhq/sigil/audit/store/badger"
)

// AuditLogDir is where sigild keeps its audit badger database.
func AuditLogDir(dataDir string) string {
	return filepath.Join(dataDir, "audit", "log")
}

// TamperAuditEvent changes one byte of event seq (the case of a letter of
// its id) directly in the audit database of a stopped sigild, so the event
// still decodes but no longer matches its hash.
//
// It reads the event through the store's own API and then finds the id's
// bytes in the raw database, so it does not depend on the store's key
// layout, only on each event being stored as its protobuf encoding, not
// compressed or checksummed. If the layout stops doing that, this belongs
// in audit/store/badger as TamperForTest.
func TamperAuditEvent(dataDir string, seq uint64) error {
	id, err := auditEventID(dataDir, seq)
	if err != nil {
		return trace.Wrap(err)
	}
	db, err := badger.Open(badger.DefaultOptions(AuditLogDir(dataDir)).WithLogger(nil))
	if err != nil {
		return trace.Wrap(err, "opening the audit database (is sigild still running?)")
	}
	err = db.Update(func(txn *badger.Txn) error {
		var key, val []byte
		at, found := -1, 0
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				it.Close()
				return trace.Wrap(err)
			}
			if i := bytes.Index(v, []byte(id)); i >= 0 {
				found += bytes.Count(v, []byte(id))
				key, val, at = it.Item().KeyCopy(nil), v, i
			}
		}
		it.Close()
		if found != 1 {
			return trace.BadParameter("the id %q of event %d occurs %d times in the audit database, want exactly once", id, seq, found)
		}
		flipped := false
		for i := at; i < at+len(id) && !flipped; i++ {
			if c := val[i] | 0x20; c >= 'a' && c <= 'z' {
				val[i] ^= 0x20
				flipped = true
			}
		}
		if !flipped {
			// An id of digits only: change one digit.
			val[at] = '0' + (val[at]-'0'+1)%10
		}
		return trace.Wrap(txn.Set(key, val))
	})
	return trace.NewAggregate(err, db.Close())
}

// auditEventID reads event seq through the audit store's API.
func auditEventID(dataDir string, seq uint64) (string, error) {
	// The signer only signs retention checkpoints, which reading never
	// does: any key opens the store.
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", trace.Wrap(err)
	}
	ctx := context.Background()
	st, err := auditbadger.New(ctx, auditbadger.Config{
		Dir:    AuditLogDir(dataDir),
		Signer: key,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		return "", trace.Wrap(err, "opening the audit store (is sigild still running?)")
	}
	evs, err := st.Range(ctx, seq, 1)
	if err := trace.NewAggregate(err, st.Close()); err != nil {
		return "", trace.Wrap(err)
	}
	if len(evs) != 1 || evs[0].GetSeq() != seq || evs[0].GetId() == "" {
		return "", trace.NotFound("audit event %d not found (or has no id)", seq)
	}
	return evs[0].GetId(), nil
}
