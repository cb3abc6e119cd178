package export

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/gravitational/trace"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit/store"
)

// Forwarder defaults.
const (
	DefaultBatchSize    = 500
	DefaultMinBackoff   = 500 * time.Millisecond
	DefaultMaxBackoff   = 30 * time.Second
	DefaultPollInterval = 5 * time.Second
	// MaxBatchSize bounds one Range read and thus forwarder memory.
	MaxBatchSize = 10000
)

// Clock is the time source of a Forwarder; tests may replace it.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// ForwarderConfig configures a Forwarder.
type ForwarderConfig struct {
	// Store is the audit log read from.
	Store store.Store
	// Sink receives the events.
	Sink Sink
	// CursorPath is the file holding the seq of the last delivered event.
	CursorPath string
	// BatchSize is the most events passed to one Sink.Write (default 500).
	BatchSize int
	// MinBackoff and MaxBackoff bound the exponential, jittered delay
	// between attempts to deliver a failing batch (defaults 500ms / 30s).
	MinBackoff, MaxBackoff time.Duration
	// PollInterval re-reads the store when no commit notification arrives,
	// as a fallback (default 5s).
	PollInterval time.Duration
	// Logger defaults to slog.Default.
	Logger *slog.Logger
	// Clock defaults to the real clock.
	Clock Clock
}

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *ForwarderConfig) CheckAndSetDefaults() error {
	if c.Store == nil {
		return trace.BadParameter("forwarder: missing Store")
	}
	if c.Sink == nil {
		return trace.BadParameter("forwarder: missing Sink")
	}
	if c.CursorPath == "" {
		return trace.BadParameter("forwarder: missing CursorPath")
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.BatchSize < 0 || c.BatchSize > MaxBatchSize {
		return trace.BadParameter("forwarder: BatchSize must be between 1 and %d, got %d", MaxBatchSize, c.BatchSize)
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.MinBackoff < 0 || c.MaxBackoff < c.MinBackoff {
		return trace.BadParameter("forwarder: need 0 < MinBackoff <= MaxBackoff, got %v and %v", c.MinBackoff, c.MaxBackoff)
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.PollInterval < 0 {
		return trace.BadParameter("forwarder: PollInterval must be positive, got %v", c.PollInterval)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	return nil
}

// Status is a forwarder's progress, for metrics and the CLI.
type Status struct {
	// Sink is the sink name.
	Sink string
	// Cursor is the seq of the last event delivered; the cursor file is
	// written before Cursor moves.
	Cursor uint64
	// LastSeq is the newest durable seq in the store.
	LastSeq uint64
	// Lag is LastSeq - Cursor: events waiting for delivery.
	Lag uint64
	// LastError is the most recent failure ("" once a delivery succeeds).
	LastError string
	// LastErrorTime is when LastError happened.
	LastErrorTime time.Time
	// Attempts counts consecutive failed attempts on the current batch.
	Attempts int
	// Rejected is true while the destination permanently rejects the
	// current batch (e.g. HTTP 400): retries continue but an operator must
	// act.
	Rejected bool
	// LostEvents counts events retention pruned before delivery, since
	// the forwarder started.
	LostEvents uint64
	// LastDelivery is when a batch was last delivered.
	LastDelivery time.Time
}

// Forwarder tails the audit store and delivers every event to one sink in
// seq order, retrying a failing batch forever (with backoff) rather than
// skipping it.
type Forwarder struct {
	cfg ForwarderConfig
	log *slog.Logger

	mu     sync.Mutex
	status Status
}

// NewForwarder returns a forwarder; call Run to start it.
func NewForwarder(cfg ForwarderConfig) (*Forwarder, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return &Forwarder{
		cfg:    cfg,
		log:    cfg.Logger.With("sink", cfg.Sink.Name()),
		status: Status{Sink: cfg.Sink.Name()},
	}, nil
}

// Status returns the forwarder's current progress.
func (f *Forwarder) Status() Status {
	f.mu.Lock()
	s := f.status
	f.mu.Unlock()
	s.LastSeq = f.cfg.Store.LastSeq()
	if s.LastSeq > s.Cursor {
		s.Lag = s.LastSeq - s.Cursor
	}
	return s
}

// Run delivers events until ctx ends, then returns nil. It returns an
// error only when it cannot start (unreadable cursor).
func (f *Forwarder) Run(ctx context.Context) error {
	cursor, err := readCursor(f.cfg.CursorPath)
	if err != nil {
		return trace.Wrap(err)
	}
	f.mu.Lock()
	f.status.Cursor = cursor
	f.mu.Unlock()

	notifyCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	notify := f.cfg.Store.Notify(notifyCtx)
	readAttempts := 0
	warnedAhead := false
	for ctx.Err() == nil {
		batch, err := f.cfg.Store.Range(ctx, cursor+1, f.cfg.BatchSize)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			readAttempts++
			f.failed(err, readAttempts, false)
			f.log.WarnContext(ctx, "Reading the audit store for export failed, retrying.", "attempt", readAttempts, "error", err)
			if !f.sleep(ctx, readAttempts) {
				break
			}
			continue
		}
		readAttempts = 0
		if len(batch) == 0 {
			if last := f.cfg.Store.LastSeq(); last < cursor && !warnedAhead {
				// The store holds fewer events than were delivered: it
				// was replaced. Waiting (rather than rewinding) avoids
				// re-sending or mixing two histories; the operator
				// decides by deleting the cursor.
				warnedAhead = true
				msg := "export cursor is ahead of the audit store (store replaced?); delete the cursor file to export the new store from the start"
				f.log.ErrorContext(ctx, msg, "cursor", cursor, "last_seq", last, "cursor_path", f.cfg.CursorPath)
				f.failed(errors.New(msg), 0, false)
			}
			if notify, err = f.wait(ctx, notify); err != nil {
				break
			}
			continue
		}
		if err := checkBatch(batch, cursor); err != nil {
			// A store bug; retrying the read is all we can do.
			readAttempts++
			f.failed(err, readAttempts, false)
			f.log.ErrorContext(ctx, "Audit store returned events out of order, not exporting them.", "error", err)
			if !f.sleep(ctx, readAttempts) {
				break
			}
			continue
		}
		if first := batch[0].GetSeq(); first > cursor+1 {
			lost := first - cursor - 1
			f.log.ErrorContext(ctx, "Audit retention pruned events before they were exported; they are lost for this sink.",
				"lost_from_seq", cursor+1, "lost_to_seq", first-1, "lost_events", lost)
			f.mu.Lock()
			f.status.LostEvents += lost
			f.mu.Unlock()
		}
		if !f.deliver(ctx, batch) {
			break
		}
		cursor = batch[len(batch)-1].GetSeq()
		// Saved before Status shows it, so that a reported cursor is one a
		// restart resumes from (unless saving failed, which is reported).
		if err := writeCursor(f.cfg.CursorPath, cursor); err != nil {
			// The in-memory cursor still advances, so this process does
			// not re-deliver; after a restart the batches since the last
			// saved cursor may be delivered again.
			f.log.ErrorContext(ctx, "Saving the export cursor failed; events may be re-delivered after a restart.",
				"cursor_path", f.cfg.CursorPath, "error", err)
			f.failed(trace.Wrap(err, "saving export cursor"), 0, false)
		}
		f.mu.Lock()
		f.status.Cursor = cursor
		f.mu.Unlock()
	}
	return nil
}

// deliver writes batch until it succeeds or ctx ends (false).
func (f *Forwarder) deliver(ctx context.Context, batch []*sigilv1.AuditEvent) bool {
	first, last := batch[0].GetSeq(), batch[len(batch)-1].GetSeq()
	for attempt := 1; ; attempt++ {
		err := f.cfg.Sink.Write(ctx, batch)
		if err == nil {
			f.mu.Lock()
			f.status.LastError = ""
			f.status.Attempts = 0
			f.status.Rejected = false
			f.status.LastDelivery = f.cfg.Clock.Now()
			f.mu.Unlock()
			if attempt > 1 {
				f.log.InfoContext(ctx, "Audit export recovered.", "attempts", attempt, "first_seq", first, "last_seq", last)
			}
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		rejected := IsRejected(err)
		f.failed(err, attempt, rejected)
		if rejected {
			// Retried anyway: dropping the batch would lose audit events
			// silently, while retrying keeps the problem visible until
			// the destination is fixed.
			f.log.ErrorContext(ctx, "Audit export destination rejected a batch; retrying until it accepts it.",
				"attempt", attempt, "first_seq", first, "last_seq", last, "error", err)
		} else {
			f.log.WarnContext(ctx, "Audit export failed, retrying.",
				"attempt", attempt, "first_seq", first, "last_seq", last, "error", err)
		}
		if !f.sleep(ctx, attempt) {
			return false
		}
	}
}

func (f *Forwarder) failed(err error, attempts int, rejected bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.status.LastError = err.Error()
	f.status.LastErrorTime = f.cfg.Clock.Now()
	f.status.Attempts = attempts
	f.status.Rejected = rejected
}

// wait blocks until the store reports a commit, the poll interval passes
// or ctx ends (error). A closed notify channel (store closing) falls back
// to polling.
func (f *Forwarder) wait(ctx context.Context, notify <-chan uint64) (<-chan uint64, error) {
	select {
	case <-ctx.Done():
		return notify, ctx.Err()
	case _, ok := <-notify:
		if !ok {
			notify = nil
		}
	case <-f.cfg.Clock.After(f.cfg.PollInterval):
	}
	return notify, nil
}

// sleep waits the backoff for attempt; false when ctx ended first.
func (f *Forwarder) sleep(ctx context.Context, attempt int) bool {
	select {
	case <-ctx.Done():
		return false
	case <-f.cfg.Clock.After(backoff(f.cfg.MinBackoff, f.cfg.MaxBackoff, attempt)):
		return true
	}
}

// backoff is min*2^(attempt-1) capped at max, jittered down by up to half
// so that many gateways do not retry a recovering SIEM in lockstep.
func backoff(minD, maxD time.Duration, attempt int) time.Duration {
	d := minD
	for i := 1; i < attempt && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	half := d / 2
	if half <= 0 {
		return d
	}
	return half + rand.N(half+1)
}

// checkBatch verifies that batch is strictly increasing and after cursor,
// so a misbehaving store cannot make the forwarder move backwards.
func checkBatch(batch []*sigilv1.AuditEvent, cursor uint64) error {
	prev := cursor
	for _, ev := range batch {
		if ev.GetSeq() <= prev {
			return trace.BadParameter("audit store returned seq %d after %d", ev.GetSeq(), prev)
		}
		prev = ev.GetSeq()
	}
	return nil
}
