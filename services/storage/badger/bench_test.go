package badger

import (
	"context"
	"fmt"
	"testing"

	"github.com/sigilhq/sigil/services/storage"
)

func TestNewInMemoryForOtherPackages(t *testing.T) {
	// The exact call other packages' tests make.
	b, err := New(context.Background(), Config{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(context.Background(), storage.Item{Key: "/k", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkPut(b *testing.B) {
	for _, mode := range []string{"memory", "disk"} {
		b.Run(mode, func(b *testing.B) {
			be := newBenchBackend(b, mode)
			ctx := context.Background()
			value := make([]byte, 512)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := be.Put(ctx, storage.Item{Key: fmt.Sprintf("/bench/%d", i%1000), Value: value}); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

func BenchmarkGet(b *testing.B) {
	for _, mode := range []string{"memory", "disk"} {
		b.Run(mode, func(b *testing.B) {
			be := newBenchBackend(b, mode)
			ctx := context.Background()
			value := make([]byte, 512)
			for i := range 1000 {
				if _, err := be.Put(ctx, storage.Item{Key: fmt.Sprintf("/bench/%d", i), Value: value}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := be.Get(ctx, fmt.Sprintf("/bench/%d", i%1000)); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

func newBenchBackend(b *testing.B, mode string) *Backend {
	if mode == "memory" {
		return newTestBackend(b, Config{InMemory: true})
	}
	return newTestBackend(b, Config{Dir: b.TempDir()})
}
