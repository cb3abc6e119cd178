package badger

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/audit/store"
)

func newBenchStore(b *testing.B, dir string) *Store {
	b.Helper()
	_, priv := newKey(b)
	s, err := New(context.Background(), Config{Dir: dir, Signer: priv})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// benchEvent is a typical db.query event (~300 bytes encoded).
func benchEvent(user int, at time.Time) *sigilv1.AuditEvent {
	return &sigilv1.AuditEvent{
		Id:             fmt.Sprintf("%016x-%d", at.UnixNano(), user),
		Time:           timestamppb.New(at),
		Type:           audit.EventDBQuery,
		Identity:       &sigilv1.AuditIdentity{User: fmt.Sprintf("user%04d", user), Kind: "human", Roles: []string{"dba"}, CertSerial: "0123456789abcdef"},
		SessionId:      fmt.Sprintf("sess-%d-%d", user, at.Unix()/3600),
		Resource:       &sigilv1.AuditResource{Kind: "db", Name: fmt.Sprintf("db%02d", user%50), DbUser: "app", DbName: "orders"},
		ClientAddr:     "10.1.2.3:54321",
		Success:        true,
		Statement:      "SELECT id, total FROM orders WHERE customer_id = $1 AND created_at > $2",
		Parameters:     []string{"42", "2025-01-01"},
		Classification: audit.ClassificationRead,
	}
}

// processCPU is the CPU time (user and system) the process used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportRate reports events/s and the CPU µs the whole process spent per
// event. On a shared two-core machine events/s depends on what else runs;
// CPU per event does not, and it is what bounds ingest when cores are busy.
func reportRate(b *testing.B, elapsed, cpu time.Duration) {
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/event")
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

// BenchmarkAppendDurable: many emitters, each waiting for its own durable
// Append; group commit shares the fsyncs. Reports events/s.
func BenchmarkAppendDurable(b *testing.B) {
	s := newBenchStore(b, b.TempDir())
	defer s.Close()
	var n atomic.Int64
	now := time.Now()
	b.SetParallelism(128)
	b.ResetTimer()
	start, cpu := time.Now(), processCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			if err := s.Append(context.Background(), benchEvent(int(i%1000), now.Add(time.Duration(i))), true); err != nil {
				b.Error(err)
				return
			}
		}
	})
	elapsed, cpu := time.Since(start), processCPU(b)-cpu
	b.StopTimer()
	reportRate(b, elapsed, cpu)
}

// BenchmarkAppendGroupCommit: the gateway's query path. Emitters queue
// events without waiting (db.query is group-committed); the clock stops
// when a final Flush has made every one of them durable. Reports durable
// events/s.
func BenchmarkAppendGroupCommit(b *testing.B) {
	s := newBenchStore(b, b.TempDir())
	defer s.Close()
	var n atomic.Int64
	now := time.Now()
	b.SetParallelism(8)
	b.ResetTimer()
	start, cpu := time.Now(), processCPU(b)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			if err := s.Append(context.Background(), benchEvent(int(i%1000), now.Add(time.Duration(i))), false); err != nil {
				b.Error(err)
				return
			}
		}
	})
	if err := s.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
	elapsed, cpu := time.Since(start), processCPU(b)-cpu
	b.StopTimer()
	reportRate(b, elapsed, cpu)
}

// BenchmarkAppendLatency: one durable Append at a time (a session start)
// while a few goroutines stream non-durable queries. Reports p50/p99.
func BenchmarkAppendLatency(b *testing.B) {
	s := newBenchStore(b, b.TempDir())
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	now := time.Now()
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(200 * time.Microsecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if err := s.Append(ctx, benchEvent(g, now.Add(time.Duration(i))), false); err != nil && ctx.Err() == nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		ev := benchEvent(i%1000, now.Add(time.Duration(i)))
		ev.Type = audit.EventDBSessionStart
		t := time.Now()
		if err := s.Append(context.Background(), ev, true); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t))
	}
	b.StopTimer()
	cancel()
	wg.Wait()
	slices.Sort(lat)
	b.ReportMetric(float64(percentile(lat, 0.50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(percentile(lat, 0.99).Microseconds()), "p99-µs")
}

// BenchmarkSearch loads 1,000,000 events (1000 users, 30 days) once into an
// on-disk store, then times Search(user + one day, limit 100). Run with
// -benchtime=1000x for exactly 1000 queries.
func BenchmarkSearch(b *testing.B) {
	const (
		events = 1_000_000
		users  = 1000
		days   = 30
	)
	dir := b.TempDir()
	s := newBenchStore(b, dir)
	defer s.Close()
	end := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	start := end.Add(-days * 24 * time.Hour)
	loadStart := time.Now()
	var wg sync.WaitGroup
	const loaders = 16
	for g := range loaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := g; i < events; i += loaders {
				at := start.Add(time.Duration(r.Int64N(int64(end.Sub(start)))))
				if err := s.Append(context.Background(), benchEvent(r.IntN(users), at), false); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := s.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
	load := time.Since(loadStart)
	b.Logf("loaded %d events in %v (%.0f events/s)", s.LastSeq(), load, float64(s.LastSeq())/load.Seconds())

	b.Run("UserDay", func(b *testing.B) {
		r := rand.New(rand.NewPCG(7, 7))
		lat := make([]time.Duration, 0, b.N)
		found := 0
		b.ResetTimer()
		for range b.N {
			since := start.Add(time.Duration(r.IntN(days-1)) * 24 * time.Hour)
			q := store.Query{User: fmt.Sprintf("user%04d", r.IntN(users)), Since: since, Until: since.Add(24 * time.Hour), Limit: 100}
			t := time.Now()
			got, _, err := s.Search(context.Background(), q)
			if err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t))
			found += len(got)
		}
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(float64(percentile(lat, 0.50).Microseconds()), "p50-µs")
		b.ReportMetric(float64(percentile(lat, 0.95).Microseconds()), "p95-µs")
		b.ReportMetric(float64(found)/float64(b.N), "events/query")
	})
}
