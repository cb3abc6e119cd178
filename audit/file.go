package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gravitational/trace"
)

// FileConfig configures a FileEmitter.
type FileConfig struct {
	// Path is the JSON-lines file; it is created if missing and appended to.
	Path string
	// Clock returns the current time; defaults to time.Now.
	Clock func() time.Time
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *FileConfig) CheckAndSetDefaults() error {
	if c.Path == "" {
		return trace.BadParameter("audit file path is required")
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	return nil
}

// FileEmitter appends events to a JSON-lines file, one event per line,
// fsyncing after each so an acknowledged event survives a crash. Values of
// secret-looking Details keys are redacted and oversized fields truncated
// before writing; the caller's Event is not modified beyond ID and Time.
type FileEmitter struct {
	cfg    FileConfig
	mu     sync.Mutex
	f      *os.File
	closed bool
}

// NewFileEmitter opens (or creates) cfg.Path for appending with mode 0600.
func NewFileEmitter(cfg FileConfig) (*FileEmitter, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	f, err := os.OpenFile(cfg.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	// An existing file may have been created with a looser mode; audit
	// records name users and resources, so tighten it.
	if fi, err := f.Stat(); err != nil {
		f.Close()
		return nil, trace.ConvertSystemError(err)
	} else if fi.Mode().Perm()&0o077 != 0 {
		if err := f.Chmod(0o600); err != nil {
			f.Close()
			return nil, trace.ConvertSystemError(err)
		}
	}
	return &FileEmitter{cfg: cfg, f: f}, nil
}

// Emit writes ev as one line and fsyncs.
func (e *FileEmitter) Emit(ctx context.Context, ev *Event) error {
	if err := ctx.Err(); err != nil {
		return trace.Wrap(err)
	}
	if err := ev.SetDefaults(e.cfg.Clock()); err != nil {
		return trace.Wrap(err)
	}
	out := ev.Clone()
	out.Redact()
	out.Bound()
	line, err := json.Marshal(out)
	if err != nil {
		return trace.Wrap(err, "encoding audit event")
	}
	if len(line) >= MaxEventBytes {
		return trace.LimitExceeded("audit event %s is %d bytes, over the %d byte limit", ev.ID, len(line), MaxEventBytes)
	}
	line = append(line, '\n')

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return trace.ConnectionProblem(nil, "audit file emitter for %s is closed", e.cfg.Path)
	}
	// One Write per line: with O_APPEND the line lands contiguously even if
	// another process appends to the same file.
	if _, err := e.f.Write(line); err != nil {
		return trace.ConvertSystemError(err)
	}
	if err := e.f.Sync(); err != nil {
		return trace.ConvertSystemError(err)
	}
	return nil
}

// Close syncs and closes the file. Later Emit calls fail.
func (e *FileEmitter) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	syncErr := e.f.Sync()
	closeErr := e.f.Close()
	return trace.NewAggregate(trace.ConvertSystemError(syncErr), trace.ConvertSystemError(closeErr))
}

// ReadFile parses a JSON-lines audit file written by FileEmitter. Blank lines
// are skipped; a malformed or oversized line is an error naming its number.
func ReadFile(path string) ([]Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	defer f.Close()
	events, err := Read(f)
	return events, trace.Wrap(err, "reading %s", path)
}

// Read parses JSON-lines audit events from r.
func Read(r io.Reader) ([]Event, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), MaxEventBytes+1)
	var events []Event
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var ev Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return nil, trace.BadParameter("malformed audit event on line %d: %v", n, err)
		}
		events = append(events, ev)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, trace.LimitExceeded("audit event line exceeds %d bytes", MaxEventBytes)
		}
		return nil, trace.Wrap(err)
	}
	return events, nil
}
