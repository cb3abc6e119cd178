package export

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"log/slog"
	"testing"

	"github.com/sigilhq/sigil/audit/store"
	"github.com/sigilhq/sigil/audit/store/badger"
)

// newTestStore opens an in-memory badger audit store closed at cleanup.
func newTestStore(t *testing.T) store.Store {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	st, err := badger.New(context.Background(), badger.Config{
		InMemory: true,
		Signer:   key,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("closing store: %v", err)
		}
	})
	return st
}
