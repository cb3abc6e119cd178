package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/gravitational/trace"
)

// StaticCert is a CertSource that never renews.
type StaticCert struct {
	Cert *tls.Certificate
}

// Current returns the certificate.
func (s StaticCert) Current() (*tls.Certificate, error) {
	if s.Cert == nil {
		return nil, trace.NotFound("no client certificate")
	}
	return s.Cert, nil
}

// Renew waits for ctx to end.
func (StaticCert) Renew(ctx context.Context) { <-ctx.Done() }

// IssueFunc obtains a fresh certificate (with its key).
type IssueFunc func(ctx context.Context) (*tls.Certificate, error)

// RenewingCertsConfig configures RenewingCerts.
type RenewingCertsConfig struct {
	// Initial is the first certificate; its Leaf is filled in if nil.
	Initial *tls.Certificate
	// Issue gets a replacement.
	Issue IssueFunc
	// RetryInterval is the wait after a failed renewal; default 10s. A
	// failure is not fatal: open connections do not need the certificate,
	// and a later attempt may succeed (for example after "sigil login").
	RetryInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Clock defaults to time.Now.
	Clock func() time.Time
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *RenewingCertsConfig) CheckAndSetDefaults() error {
	if c.Initial == nil {
		return trace.BadParameter("missing initial certificate")
	}
	if c.Issue == nil {
		return trace.BadParameter("missing issue function")
	}
	if c.RetryInterval <= 0 {
		c.RetryInterval = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return nil
}

// RenewingCerts is a CertSource that replaces its certificate once less
// than a third of its lifetime is left.
type RenewingCerts struct {
	cfg     RenewingCertsConfig
	current atomic.Pointer[issued]
	renewed chan struct{}
}

type issued struct {
	cert *tls.Certificate
	// from is when the lifetime started for scheduling: the later of
	// NotBefore and when we got it, because CAs backdate NotBefore for
	// clock skew and that would make short certificates look older.
	from time.Time
}

// NewRenewingCerts returns a RenewingCerts holding cfg.Initial.
func NewRenewingCerts(cfg RenewingCertsConfig) (*RenewingCerts, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	r := &RenewingCerts{cfg: cfg, renewed: make(chan struct{}, 1)}
	is, err := r.wrap(cfg.Initial)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	r.current.Store(is)
	return r, nil
}

func (r *RenewingCerts) wrap(cert *tls.Certificate) (*issued, error) {
	if cert == nil || len(cert.Certificate) == 0 {
		return nil, trace.BadParameter("empty certificate")
	}
	if cert.Leaf == nil {
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return nil, trace.BadParameter("invalid certificate: %v", err)
		}
		c := *cert
		c.Leaf = leaf
		cert = &c
	}
	from := r.cfg.Clock()
	if cert.Leaf.NotBefore.After(from) {
		from = cert.Leaf.NotBefore
	}
	return &issued{cert: cert, from: from}, nil
}

// Current returns the newest certificate, or an error once it expired.
func (r *RenewingCerts) Current() (*tls.Certificate, error) {
	is := r.current.Load()
	if now := r.cfg.Clock(); !now.Before(is.cert.Leaf.NotAfter) {
		return nil, trace.AccessDenied("the database certificate expired at %s and could not be renewed (see the tunnel's log)", is.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return is.cert, nil
}

// Renewed is signalled (without blocking) after each successful renewal;
// tests and callers may wait on it.
func (r *RenewingCerts) Renewed() <-chan struct{} { return r.renewed }

// renewAt is when a third of the lifetime is left.
func (is *issued) renewAt() time.Time {
	life := is.cert.Leaf.NotAfter.Sub(is.from)
	return is.cert.Leaf.NotAfter.Add(-life / 3)
}

// Renew runs the renewal loop until ctx ends.
func (r *RenewingCerts) Renew(ctx context.Context) {
	log := r.cfg.Logger
	for {
		wait := r.current.Load().renewAt().Sub(r.cfg.Clock())
		if !Sleep(ctx, wait) {
			return
		}
		cert, err := r.cfg.Issue(ctx)
		if err == nil {
			var is *issued
			if is, err = r.wrap(cert); err == nil && !is.cert.Leaf.NotAfter.After(r.cfg.Clock()) {
				err = trace.BadParameter("the new certificate is already expired (not after %s)", is.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
			}
			if err == nil {
				old := r.current.Swap(is)
				log.InfoContext(ctx, "Renewed the database certificate; new connections use it, open ones are not affected.",
					"old_expires", old.cert.Leaf.NotAfter.UTC().Format(time.RFC3339),
					"new_expires", is.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
				select {
				case r.renewed <- struct{}{}:
				default:
				}
				continue
			}
		}
		if ctx.Err() != nil {
			return
		}
		cur := r.current.Load().cert.Leaf.NotAfter
		log.ErrorContext(ctx, "Cannot renew the database certificate; open connections keep working, new ones fail once it expires.",
			"error", trace.UserMessage(err), "expires", cur.UTC().Format(time.RFC3339), "retry_in", r.cfg.RetryInterval.String())
		if !Sleep(ctx, r.cfg.RetryInterval) {
			return
		}
	}
}

// Sleep waits d (returning at once if d <= 0); false means ctx ended.
// Renewal loops (here and in "sigil bot start") wait with it.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
