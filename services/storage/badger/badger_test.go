package badger

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/services/storage"
	"github.com/sigilhq/sigil/services/storage/storagetest"
)

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func newTestBackend(t testing.TB, cfg Config) *Backend {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	b, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

func TestConformanceInMemory(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		return newTestBackend(t, Config{InMemory: true, SweepInterval: 50 * time.Millisecond})
	})
}

func TestConformanceOnDisk(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		return newTestBackend(t, Config{Dir: t.TempDir(), SweepInterval: 50 * time.Millisecond})
	})
}

// The default sweep interval must still satisfy the suite's expiry checks.
func TestConformanceDefaults(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		return newTestBackend(t, Config{InMemory: true})
	})
}

func TestConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"in memory", Config{InMemory: true}, ""},
		{"dir", Config{Dir: "/tmp/x"}, ""},
		{"neither", Config{}, "Dir is required"},
		{"both", Config{Dir: "/tmp/x", InMemory: true}, "mutually exclusive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.CheckAndSetDefaults()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if tt.cfg.Logger == nil || tt.cfg.WatchBufferSize != DefaultWatchBufferSize || tt.cfg.SweepInterval != DefaultSweepInterval {
					t.Fatalf("defaults not set: %+v", tt.cfg)
				}
				return
			}
			if !trace.IsBadParameter(err) {
				t.Fatalf("want BadParameter, got %v", err)
			}
			if got := err.Error(); !strings.Contains(got, tt.wantErr) {
				t.Fatalf("error %q does not mention %q", got, tt.wantErr)
			}
		})
	}
}

func TestReopenKeepsDataAndRevision(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	b, err := New(ctx, Config{Dir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	var last *storage.Item
	for i := range 5 {
		last, err = b.Put(ctx, storage.Item{Key: fmt.Sprintf("/k/%d", i), Value: []byte(fmt.Sprint(i))})
		if err != nil {
			t.Fatal(err)
		}
	}
	expires := time.Now().Add(time.Hour)
	withTTL, err := b.Put(ctx, storage.Item{Key: "/ttl", Value: []byte("t"), Expires: expires})
	if err != nil {
		t.Fatal(err)
	}
	// A delete consumes a revision too; the reopened counter must be past it.
	if err := b.Delete(ctx, "/k/0"); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	b = newTestBackend(t, Config{Dir: dir})
	got, err := b.Get(ctx, "/k/4")
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Value) != "4" || got.Revision != last.Revision {
		t.Fatalf("after reopen /k/4 = %q rev %d, want \"4\" rev %d", got.Value, got.Revision, last.Revision)
	}
	if _, err := b.Get(ctx, "/k/0"); !trace.IsNotFound(err) {
		t.Fatalf("deleted key came back after reopen: %v", err)
	}
	got, err = b.Get(ctx, "/ttl")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Expires.Equal(expires.Round(0)) || got.Revision != withTTL.Revision {
		t.Fatalf("after reopen /ttl expires %v rev %d, want %v rev %d", got.Expires, got.Revision, expires, withTTL.Revision)
	}
	next, err := b.Put(ctx, storage.Item{Key: "/k/new", Value: []byte("n")})
	if err != nil {
		t.Fatal(err)
	}
	if next.Revision <= withTTL.Revision+1 {
		t.Fatalf("revision after reopen = %d, want above %d (last put %d, then a delete)", next.Revision, withTTL.Revision+1, withTTL.Revision)
	}
}

// A watcher that stops reading must be dropped instead of stalling writers.
func TestSlowWatcherIsDropped(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, Config{InMemory: true, WatchBufferSize: 4})
	slow, err := b.Watch(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	fast, err := b.Watch(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	const writes = 20
	for i := range writes {
		key := fmt.Sprintf("/k/%d", i)
		if _, err := b.Put(ctx, storage.Item{Key: key, Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
		// Reading each event before the next write keeps this watcher
		// within its buffer, however the scheduler runs.
		select {
		case ev, ok := <-fast:
			if !ok || ev.Item.Key != key {
				t.Fatalf("fast watcher got %+v (open %v), want put of %s", ev, ok, key)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("fast watcher missed %s", key)
		}
	}
	n := 0
	for range slow {
		n++
	}
	if n != 4 {
		t.Fatalf("slow watcher got %d buffered events before being closed, want 4", n)
	}
	// The fast watcher is still registered; it closes only with the backend.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if ev, ok := <-fast; ok {
		t.Fatalf("fast watcher got %+v after Close, want a closed channel", ev)
	}
}

// Overwriting or deleting a chunked value must not leak its old chunks.
func TestChunksAreCleanedUp(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, Config{InMemory: true})
	countChunks := func() int {
		t.Helper()
		n := 0
		err := b.db.View(func(txn *badger.Txn) error {
			opts := badger.DefaultIteratorOptions
			opts.Prefix = chunkPrefix
			opts.PrefetchValues = false
			it := txn.NewIterator(opts)
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				n++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	put := func(size int) {
		t.Helper()
		if _, err := b.Put(ctx, storage.Item{Key: "/big", Value: make([]byte, size)}); err != nil {
			t.Fatal(err)
		}
	}
	put(storage.MaxValueLen)
	if got, want := countChunks(), storage.MaxValueLen/chunkSize-1; got != want {
		t.Fatalf("%d chunks stored for a max-size value, want %d", got, want)
	}
	put(chunkSize + 1)
	if got := countChunks(); got != 1 {
		t.Fatalf("%d chunks after shrinking to chunkSize+1, want 1", got)
	}
	put(chunkSize)
	if got := countChunks(); got != 0 {
		t.Fatalf("%d chunks after shrinking to chunkSize, want 0", got)
	}
	put(3 * chunkSize)
	if err := b.Delete(ctx, "/big"); err != nil {
		t.Fatal(err)
	}
	if got := countChunks(); got != 0 {
		t.Fatalf("%d chunks left after delete, want 0", got)
	}
}

func TestDecodeHeadRejectsGarbage(t *testing.T) {
	tests := []struct {
		name    string
		buf     []byte
		wantErr string
	}{
		{"empty", nil, "shorter than"},
		{"short", []byte{codecVersion, 1, 2}, "shorter than"},
		{"future version", append([]byte{codecVersion + 1}, make([]byte, headerLen)...), "unsupported format version 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := decodeHead(tt.buf)
			if !trace.IsBadParameter(err) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("decodeHead = %v, want BadParameter mentioning %q", err, tt.wantErr)
			}
		})
	}
}
