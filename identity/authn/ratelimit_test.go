package authn

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gravitational/trace"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newTestLimiter(t *testing.T, maxKeys int) (*RateLimiter, *fakeClock) {
	t.Helper()
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	rl, err := NewRateLimiter(RateLimiterConfig{
		PerUser: Limit{Attempts: 5, Per: time.Minute, Burst: 5},
		PerAddr: Limit{Attempts: 10, Per: time.Minute, Burst: 10},
		MaxKeys: maxKeys,
		Clock:   clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return rl, clock
}

func requireLimited(t *testing.T, err error, msg string) {
	t.Helper()
	if !trace.IsLimitExceeded(err) {
		t.Fatalf("want LimitExceeded, got %v", err)
	}
	if !strings.Contains(err.Error(), msg) {
		t.Fatalf("error %q does not contain %q", err.Error(), msg)
	}
}

func TestRateLimiterPerUser(t *testing.T) {
	rl, clock := newTestLimiter(t, 0)
	// Five attempts for alice from five addresses: the address limits are
	// untouched, so only the user limit can trip.
	for i := range 5 {
		if err := rl.Allow("alice", fmt.Sprintf("10.0.0.%d:1234", i)); err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	err := rl.Allow("alice", "10.0.0.99:1234")
	requireLimited(t, err, `too many login attempts for user "alice"; try again in 12s`)
	// Other users from the same addresses are unaffected.
	if err := rl.Allow("bob", "10.0.0.1:1234"); err != nil {
		t.Fatalf("bob: %v", err)
	}
	// One token refills every 12 s.
	clock.Advance(11 * time.Second)
	requireLimited(t, rl.Allow("alice", "10.0.0.99"), "try again in 1s")
	clock.Advance(time.Second)
	if err := rl.Allow("alice", "10.0.0.99"); err != nil {
		t.Fatalf("after refill: %v", err)
	}
	requireLimited(t, rl.Allow("alice", "10.0.0.99"), `for user "alice"`)
	// A full minute refills the whole burst.
	clock.Advance(time.Minute)
	for i := range 5 {
		if err := rl.Allow("alice", "10.0.1.1"); err != nil {
			t.Fatalf("after full refill, attempt %d: %v", i, err)
		}
	}
}

func TestRateLimiterPerAddr(t *testing.T) {
	rl, clock := newTestLimiter(t, 0)
	for i := range 10 {
		if err := rl.Allow(fmt.Sprintf("user%d", i), "192.0.2.7:5000"); err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	// Port is ignored: a new source port is the same client.
	err := rl.Allow("user99", "192.0.2.7:6000")
	requireLimited(t, err, `too many login attempts from address "192.0.2.7"; try again in 6s`)
	// A refused attempt must not have consumed user99's budget.
	for i := range 5 {
		if err := rl.Allow("user99", fmt.Sprintf("198.51.100.%d", i)); err != nil {
			t.Fatalf("user99 from elsewhere, attempt %d: %v", i, err)
		}
	}
	// Another address is independent.
	if err := rl.Allow("user0", "192.0.2.8"); err != nil {
		t.Fatalf("other address: %v", err)
	}
	clock.Advance(6 * time.Second)
	if err := rl.Allow("user50", "192.0.2.7"); err != nil {
		t.Fatalf("after refill: %v", err)
	}
}

func TestRateLimiterIPv6Grouping(t *testing.T) {
	rl, _ := newTestLimiter(t, 0)
	for i := range 10 {
		if err := rl.Allow("", fmt.Sprintf("[2001:db8::%x]:443", i+1)); err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	requireLimited(t, rl.Allow("", "[2001:db8::ffff]:443"), `address "2001:db8::/64"`)
	if err := rl.Allow("", "[2001:db8:0:1::1]:443"); err != nil {
		t.Fatalf("other /64: %v", err)
	}
}

func TestRateLimiterBounded(t *testing.T) {
	rl, _ := newTestLimiter(t, 100)
	for i := range 1000 {
		if err := rl.Allow(fmt.Sprintf("user%d", i), fmt.Sprintf("10.1.%d.%d", i/256, i%256)); err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
		if n := rl.Len(); n > 100 {
			t.Fatalf("limiter grew to %d keys with MaxKeys 100", n)
		}
	}
	// Idle buckets are evicted first: exhaust one user, then let everyone
	// else go idle; the exhausted user must still be limited after churn.
	rl2, clock2 := newTestLimiter(t, 100)
	for range 5 {
		if err := rl2.Allow("victim", ""); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 40 {
		if err := rl2.Allow(fmt.Sprintf("idle%d", i), ""); err != nil {
			t.Fatal(err)
		}
	}
	clock2.Advance(time.Second)
	for i := range 40 {
		if err := rl2.Allow(fmt.Sprintf("u%d", i), "10.9.9.9"); err != nil && !trace.IsLimitExceeded(err) {
			t.Fatal(err)
		}
	}
	requireLimited(t, rl2.Allow("victim", ""), `for user "victim"`)
}

func TestRateLimiterConfig(t *testing.T) {
	if _, err := NewRateLimiter(RateLimiterConfig{PerUser: Limit{Attempts: -1, Per: time.Minute}}); !trace.IsBadParameter(err) {
		t.Fatalf("want BadParameter, got %v", err)
	}
	rl, err := NewRateLimiter(RateLimiterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if rl.cfg.PerUser != (Limit{Attempts: 5, Per: time.Minute, Burst: 5}) || rl.cfg.MaxKeys != 100_000 {
		t.Fatalf("unexpected defaults %+v", rl.cfg)
	}
}

func TestRateLimiterConcurrent(t *testing.T) {
	rl, _ := newTestLimiter(t, 0)
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				if rl.Allow("alice", "") == nil {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if allowed != 5 {
		t.Fatalf("want exactly the burst of 5 allowed under concurrency, got %d", allowed)
	}
}
