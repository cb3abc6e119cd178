package export

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/audit/store"
)

// Config is the audit.export section of sigil.yaml:
//
//	audit:
//	  export:
//	    files:
//	      - name: local
//	        path: /var/log/sigil/events.jsonl
//	        max_bytes: 104857600
//	        max_files: 10
//	    webhooks:
//	      - name: splunk
//	        url: https://siem.example.com/ingest
//	        headers: {Authorization: "Splunk ..."}
//	        timeout: 10s
//	        ca_file: /etc/sigil/siem-ca.pem
type Config struct {
	Files    []FileSinkConfig    `yaml:"files"`
	Webhooks []WebhookSinkConfig `yaml:"webhooks"`
}

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// checkName keeps names safe as cursor file names.
func checkName(name string) error {
	if !namePattern.MatchString(name) {
		return trace.BadParameter("%q must be 1-63 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// CheckAndSetDefaults validates every sink; names are required and unique
// because they name the cursor files.
func (c *Config) CheckAndSetDefaults() error {
	seen := map[string]string{}
	unique := func(name, field string) error {
		if prev, ok := seen[name]; ok {
			return trace.BadParameter("%s.name: %q is already used by %s", field, name, prev)
		}
		seen[name] = field
		return nil
	}
	for i := range c.Files {
		field := "audit.export.files[" + strconv.Itoa(i) + "]"
		if c.Files[i].Name == "" {
			return trace.BadParameter("%s.name: required (it names the delivery cursor, keep it stable)", field)
		}
		if err := c.Files[i].check(field + "."); err != nil {
			return trace.Wrap(err)
		}
		if err := unique(c.Files[i].Name, field); err != nil {
			return trace.Wrap(err)
		}
	}
	for i := range c.Webhooks {
		field := "audit.export.webhooks[" + strconv.Itoa(i) + "]"
		if c.Webhooks[i].Name == "" {
			return trace.BadParameter("%s.name: required (it names the delivery cursor, keep it stable)", field)
		}
		if err := c.Webhooks[i].check(field + "."); err != nil {
			return trace.Wrap(err)
		}
		if err := unique(c.Webhooks[i].Name, field); err != nil {
			return trace.Wrap(err)
		}
	}
	return nil
}

// CursorDir is where forwarder cursors live under the data directory.
func CursorDir(dataDir string) string {
	return filepath.Join(dataDir, "audit", "cursors")
}

// Exporter runs one Forwarder per configured sink.
type Exporter struct {
	forwarders []*Forwarder
	sinks      []Sink
	logger     *slog.Logger

	mu     sync.Mutex
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewExporter validates cfg and builds the sinks and forwarders without
// starting them. Cursors are kept in CursorDir(dataDir)/<sink name>.
func NewExporter(cfg Config, st store.Store, dataDir string, logger *slog.Logger) (*Exporter, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	if st == nil {
		return nil, trace.BadParameter("audit export: missing store")
	}
	if dataDir == "" {
		return nil, trace.BadParameter("audit export: missing data directory")
	}
	if logger == nil {
		logger = slog.Default()
	}
	e := &Exporter{logger: logger}
	var sinks []Sink
	for _, fc := range cfg.Files {
		s, err := NewFileSink(fc)
		if err != nil {
			e.closeSinks(sinks)
			return nil, trace.Wrap(err, "audit.export.files %s", fc.Name)
		}
		sinks = append(sinks, s)
	}
	for _, wc := range cfg.Webhooks {
		s, err := NewWebhookSink(wc)
		if err != nil {
			e.closeSinks(sinks)
			return nil, trace.Wrap(err, "audit.export.webhooks %s", wc.Name)
		}
		sinks = append(sinks, s)
	}
	for _, s := range sinks {
		f, err := NewForwarder(ForwarderConfig{
			Store:      st,
			Sink:       s,
			CursorPath: filepath.Join(CursorDir(dataDir), s.Name()),
			Logger:     logger.With("component", "audit-export"),
		})
		if err != nil {
			e.closeSinks(sinks)
			return nil, trace.Wrap(err)
		}
		e.forwarders = append(e.forwarders, f)
	}
	e.sinks = sinks
	return e, nil
}

// Start runs every forwarder in the background until Stop or ctx ends.
func (e *Exporter) Start(ctx context.Context) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cancel != nil {
		return
	}
	ctx, e.cancel = context.WithCancel(ctx)
	for _, f := range e.forwarders {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			if err := f.Run(ctx); err != nil {
				e.logger.ErrorContext(ctx, "Audit export stopped.", "sink", f.cfg.Sink.Name(), "error", err)
			}
		}()
	}
}

// Stop stops the forwarders, waits for them and closes the sinks.
func (e *Exporter) Stop() {
	e.mu.Lock()
	if e.cancel != nil {
		e.cancel()
	}
	e.mu.Unlock()
	e.wg.Wait()
	e.closeSinks(e.sinks)
	e.sinks = nil
}

// Statuses returns each forwarder's status, in configuration order.
func (e *Exporter) Statuses() []Status {
	out := make([]Status, 0, len(e.forwarders))
	for _, f := range e.forwarders {
		out = append(out, f.Status())
	}
	return out
}

func (e *Exporter) closeSinks(sinks []Sink) {
	for _, s := range sinks {
		if c, ok := s.(io.Closer); ok {
			if err := c.Close(); err != nil {
				e.logger.Warn("Closing audit export sink failed.", "sink", s.Name(), "error", err)
			}
		}
	}
}

// Start builds and starts the exporters for c; stop ends them and waits.
func (c Config) Start(ctx context.Context, st store.Store, dataDir string, logger *slog.Logger) (stop func(), err error) {
	e, err := NewExporter(c, st, dataDir, logger)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	e.Start(ctx)
	return e.Stop, nil
}
