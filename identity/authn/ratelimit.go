package authn

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/gravitational/trace"
)

// Limit is a token bucket: Attempts per Per, with up to Burst attempts at once.
type Limit struct {
	Attempts int
	Per      time.Duration
	Burst    int
}

func (l *Limit) checkAndSetDefaults(name string, def Limit) error {
	if *l == (Limit{}) {
		*l = def
		return nil
	}
	if l.Attempts <= 0 || l.Per <= 0 {
		return trace.BadParameter("%s: Attempts and Per must be positive", name)
	}
	if l.Burst == 0 {
		l.Burst = l.Attempts
	}
	if l.Burst < 0 {
		return trace.BadParameter("%s: Burst must not be negative", name)
	}
	return nil
}

// perSecond is the refill rate in tokens per second.
func (l Limit) perSecond() float64 {
	return float64(l.Attempts) / l.Per.Seconds()
}

// RateLimiterConfig configures a RateLimiter.
type RateLimiterConfig struct {
	// PerUser limits attempts against one account from anywhere; defaults
	// to 5 per minute, burst 5.
	PerUser Limit
	// PerAddr limits attempts from one client address against any account;
	// defaults to 20 per minute, burst 20, since many users can share a NAT.
	PerAddr Limit
	// MaxKeys bounds the number of tracked users plus addresses; defaults
	// to 100000.
	MaxKeys int
	// Clock returns the current time; defaults to time.Now.
	Clock func() time.Time
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *RateLimiterConfig) CheckAndSetDefaults() error {
	if err := c.PerUser.checkAndSetDefaults("PerUser", Limit{Attempts: 5, Per: time.Minute, Burst: 5}); err != nil {
		return trace.Wrap(err)
	}
	if err := c.PerAddr.checkAndSetDefaults("PerAddr", Limit{Attempts: 20, Per: time.Minute, Burst: 20}); err != nil {
		return trace.Wrap(err)
	}
	if c.MaxKeys == 0 {
		c.MaxKeys = 100_000
	}
	if c.MaxKeys < 2 {
		return trace.BadParameter("MaxKeys must be at least 2 (one user and one address)")
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return nil
}

// RateLimiter throttles login attempts per user and per client address.
// Both buckets must have a token for an attempt to be allowed, and a refused
// attempt consumes nothing, so a throttled client gets back in as soon as
// the hint says. Note the per-user limit lets anyone slow down logins for a
// known user name; that is the accepted price of stopping online guessing
// spread across many addresses.
type RateLimiter struct {
	cfg     RateLimiterConfig
	mu      sync.Mutex
	buckets map[bucketKey]*bucket
}

type bucketKey struct {
	addr bool
	name string
}

type bucket struct {
	tokens float64
	last   time.Time
}

// NewRateLimiter creates a RateLimiter.
func NewRateLimiter(cfg RateLimiterConfig) (*RateLimiter, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return &RateLimiter{cfg: cfg, buckets: make(map[bucketKey]*bucket)}, nil
}

// Allow records one login attempt by user from addr, returning LimitExceeded
// if either is over its limit. An empty user or addr skips that check. addr
// may include a port, which is ignored; IPv6 addresses are grouped by /64
// because a single client usually controls a whole /64.
func (r *RateLimiter) Allow(user, addr string) error {
	now := r.cfg.Clock()
	addr = normalizeAddr(addr)

	r.mu.Lock()
	defer r.mu.Unlock()

	// Evict up front, never between fetching the two buckets, so neither
	// bucket can be dropped while we hold it.
	if len(r.buckets)+2 > r.cfg.MaxKeys {
		r.evictLocked(now)
	}
	var ub, ab *bucket
	if user != "" {
		ub = r.bucketLocked(bucketKey{name: user}, r.cfg.PerUser, now)
		if wait := ub.wait(r.cfg.PerUser); wait > 0 {
			return trace.LimitExceeded("too many login attempts for user %q; try again in %s", user, retryHint(wait))
		}
	}
	if addr != "" {
		ab = r.bucketLocked(bucketKey{addr: true, name: addr}, r.cfg.PerAddr, now)
		if wait := ab.wait(r.cfg.PerAddr); wait > 0 {
			return trace.LimitExceeded("too many login attempts from address %q; try again in %s", addr, retryHint(wait))
		}
	}
	if ub != nil {
		ub.tokens--
	}
	if ab != nil {
		ab.tokens--
	}
	return nil
}

// Len returns the number of tracked keys.
func (r *RateLimiter) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buckets)
}

// bucketLocked returns the bucket for k refilled up to now, creating it full.
func (r *RateLimiter) bucketLocked(k bucketKey, l Limit, now time.Time) *bucket {
	b, ok := r.buckets[k]
	if !ok {
		b = &bucket{tokens: float64(l.Burst), last: now}
		r.buckets[k] = b
		return b
	}
	if elapsed := now.Sub(b.last); elapsed > 0 {
		b.tokens = math.Min(float64(l.Burst), b.tokens+elapsed.Seconds()*l.perSecond())
		b.last = now
	}
	return b
}

// evictLocked first drops buckets that have refilled completely, since
// forgetting them changes nothing. If that is not enough it drops arbitrary
// buckets down to 90% of the cap: briefly forgetting some clients is
// preferable to unbounded memory or refusing every new client.
func (r *RateLimiter) evictLocked(now time.Time) {
	for k, b := range r.buckets {
		l := r.cfg.PerUser
		if k.addr {
			l = r.cfg.PerAddr
		}
		if b.tokens+now.Sub(b.last).Seconds()*l.perSecond() >= float64(l.Burst) {
			delete(r.buckets, k)
		}
	}
	for k := range r.buckets {
		if len(r.buckets)+2 <= r.cfg.MaxKeys*9/10 {
			break
		}
		delete(r.buckets, k)
	}
}

// wait returns how long until the bucket holds a whole token.
func (b *bucket) wait(l Limit) time.Duration {
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) / l.perSecond() * float64(time.Second))
}

// retryHint rounds up to whole seconds so the hint is never too optimistic.
func retryHint(d time.Duration) string {
	s := int64(math.Ceil(d.Seconds()))
	if s < 1 {
		s = 1
	}
	return fmt.Sprintf("%ds", s)
}

func normalizeAddr(addr string) string {
	if addr == "" {
		return ""
	}
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		return netip.PrefixFrom(ip, 64).Masked().String()
	}
	return ip.String()
}
