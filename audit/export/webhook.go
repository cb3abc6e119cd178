package export

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gravitational/trace"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit"
)

// Webhook sink defaults and limits.
const (
	DefaultWebhookTimeout       = 10 * time.Second
	DefaultWebhookMaxBatchBytes = 4 << 20
	// maxErrorBody bounds how much of a failed response is quoted.
	maxErrorBody = 512
	// maxCAFileBytes bounds the CA bundle read.
	maxCAFileBytes = 1 << 20
)

// WebhookSinkConfig configures a webhook sink.
type WebhookSinkConfig struct {
	// Name identifies the sink (required in sigil.yaml, unique).
	Name string `yaml:"name"`
	// URL receives POSTs; it must be https unless the host is loopback.
	URL string `yaml:"url"`
	// Headers are added to every request, e.g. Authorization. Their
	// values are secrets: never logged.
	Headers map[string]string `yaml:"headers"`
	// Timeout bounds one POST (default 10s), and so also how long a
	// shutdown waits for a POST in flight.
	Timeout time.Duration `yaml:"timeout"`
	// CAFile is a PEM bundle trusted in addition to the system roots.
	CAFile string `yaml:"ca_file"`
	// MaxBatchBytes bounds one request body (default 4 MiB); a larger
	// batch is split into several requests.
	MaxBatchBytes int `yaml:"max_batch_bytes"`
	// Format is "jsonl" (default: NDJSON batches for SIEMs) or "slack":
	// one JSON message per event, {"text": "<one line summary>",
	// "event": {...}}, which Slack incoming webhooks and chat bridges
	// accept; use it with EventTypes for notifications.
	Format string `yaml:"format"`
	// EventTypes, when set, limits what the sink receives (e.g.
	// [request.created, request.reviewed]); other events are skipped.
	EventTypes []string `yaml:"event_types"`
}

// Webhook formats.
const (
	WebhookFormatJSONL = "jsonl"
	WebhookFormatSlack = "slack"
)

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *WebhookSinkConfig) CheckAndSetDefaults() error {
	return trace.Wrap(c.check(""))
}

// reservedHeaders are set by the sink itself.
var reservedHeaders = []string{"Content-Type", "Content-Length", "Idempotency-Key", "Host", "Transfer-Encoding"}

func (c *WebhookSinkConfig) check(prefix string) error {
	if c.Name == "" {
		c.Name = "webhook"
	}
	if err := checkName(c.Name); err != nil {
		return trace.BadParameter("%sname: %v", prefix, err)
	}
	if c.URL == "" {
		return trace.BadParameter("%surl: required, e.g. https://siem.example.com/ingest", prefix)
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return trace.BadParameter("%surl: not a valid URL", prefix)
	}
	if u.User != nil {
		return trace.BadParameter("%surl: must not contain credentials; put them in headers (e.g. Authorization) so they are never logged", prefix)
	}
	if u.Host == "" {
		return trace.BadParameter("%surl: %q has no host", prefix, u.Redacted())
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopback(u.Hostname()) {
			return trace.BadParameter("%surl: must use https (plain http is allowed only for loopback hosts), got %q", prefix, u.Redacted())
		}
	default:
		return trace.BadParameter("%surl: scheme must be https, got %q", prefix, u.Scheme)
	}
	for k := range c.Headers {
		if !validHeaderName(k) {
			return trace.BadParameter("%sheaders: %q is not a valid header name", prefix, k)
		}
		if !validHeaderValue(c.Headers[k]) {
			// Do not quote the value: it is likely a secret.
			return trace.BadParameter("%sheaders.%s: value contains invalid characters", prefix, k)
		}
		for _, r := range reservedHeaders {
			if strings.EqualFold(k, r) {
				return trace.BadParameter("%sheaders: %s is set by Sigil and cannot be configured", prefix, r)
			}
		}
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultWebhookTimeout
	}
	if c.Timeout < 0 {
		return trace.BadParameter("%stimeout: must be positive, got %v", prefix, c.Timeout)
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = DefaultWebhookMaxBatchBytes
	}
	if c.MaxBatchBytes < 0 {
		return trace.BadParameter("%smax_batch_bytes: must be positive, got %d", prefix, c.MaxBatchBytes)
	}
	switch c.Format {
	case "":
		c.Format = WebhookFormatJSONL
	case WebhookFormatJSONL, WebhookFormatSlack:
	default:
		return trace.BadParameter("%sformat: %q is not one of %s, %s", prefix, c.Format, WebhookFormatJSONL, WebhookFormatSlack)
	}
	for _, t := range c.EventTypes {
		if !audit.IsKnownEventType(t) {
			return trace.BadParameter("%sevent_types: %q is not an audit event type (%s)", prefix, t, strings.Join(audit.EventTypes(), ", "))
		}
	}
	return nil
}

// validHeaderName accepts an RFC 9110 token.
func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for _, r := range k {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune("!#$%&'*+-.^_`|~", r):
		default:
			return false
		}
	}
	return true
}

// validHeaderValue rejects control characters (header injection).
func validHeaderValue(v string) bool {
	for _, r := range v {
		if (r < 0x20 && r != '\t') || r == 0x7f {
			return false
		}
	}
	return true
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// RejectedError is a delivery the destination refused in a way a retry
// is not expected to fix (4xx other than 408/429, or a redirect).
type RejectedError struct {
	// StatusCode is the HTTP status.
	StatusCode int
	// Message describes the refusal, including the start of the body.
	Message string
}

// Error implements error.
func (e *RejectedError) Error() string { return e.Message }

// IsRejected reports whether err is (or wraps) a RejectedError.
func IsRejected(err error) bool {
	var r *RejectedError
	return errors.As(trace.Unwrap(err), &r) || errors.As(err, &r)
}

// WebhookSink POSTs batches as NDJSON (application/x-ndjson). Each request
// carries Idempotency-Key "<first seq>-<last seq>" of its events. 2xx is
// success; anything else fails the batch, which the forwarder retries.
type WebhookSink struct {
	cfg    WebhookSinkConfig
	client *http.Client
	// target is the URL without query, safe to log.
	target string

	mu sync.Mutex
	// sent is the last seq this process delivered, so that when one part
	// of a split batch fails the retry does not re-send the parts already
	// accepted.
	sent uint64
}

// NewWebhookSink returns a webhook sink.
func NewWebhookSink(cfg WebhookSinkConfig) (*WebhookSink, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pool, err := loadCAFile(cfg.CAFile)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		tlsCfg.RootCAs = pool
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsCfg
	u, _ := url.Parse(cfg.URL)
	target := (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
	return &WebhookSink{
		cfg:    cfg,
		target: target,
		client: &http.Client{
			Transport: transport,
			Timeout:   cfg.Timeout,
			// A redirected POST loses its body and could carry the
			// headers elsewhere: treat it as a refusal instead.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

func loadCAFile(path string) (*x509.CertPool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	defer f.Close()
	pem, err := io.ReadAll(io.LimitReader(f, maxCAFileBytes+1))
	if err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	if len(pem) > maxCAFileBytes {
		return nil, trace.BadParameter("ca_file %s: larger than %d bytes", path, maxCAFileBytes)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, trace.BadParameter("ca_file %s: no PEM certificates found", path)
	}
	return pool, nil
}

// Name implements Sink.
func (s *WebhookSink) Name() string { return s.cfg.Name }

// Close releases idle connections.
func (s *WebhookSink) Close() error {
	s.client.CloseIdleConnections()
	return nil
}

// Write implements Sink, splitting batch into bodies of at most
// MaxBatchBytes (an event larger than that goes alone).
func (s *WebhookSink) Write(ctx context.Context, batch []*sigilv1.AuditEvent) error {
	s.mu.Lock()
	sent := s.sent
	s.mu.Unlock()
	if s.cfg.Format == WebhookFormatSlack {
		return s.writeEach(ctx, batch, sent)
	}
	var body bytes.Buffer
	var first, last uint64
	post := func() error {
		if body.Len() == 0 {
			return nil
		}
		// Do not start another request once stopping; one already in
		// flight is let finish (see post).
		if err := ctx.Err(); err != nil {
			return trace.Wrap(err)
		}
		if err := s.post(ctx, body.Bytes(), first, last); err != nil {
			return trace.Wrap(err)
		}
		s.mu.Lock()
		s.sent = max(s.sent, last)
		s.mu.Unlock()
		body.Reset()
		return nil
	}
	for _, ev := range batch {
		if ev.GetSeq() != 0 && ev.GetSeq() <= sent || !s.wants(ev) {
			continue
		}
		line, err := marshalLine(ev)
		if err != nil {
			return trace.Wrap(err)
		}
		if body.Len() > 0 && body.Len()+len(line)+1 > s.cfg.MaxBatchBytes {
			if err := post(); err != nil {
				return trace.Wrap(err)
			}
		}
		if body.Len() == 0 {
			first = ev.GetSeq()
		}
		last = ev.GetSeq()
		body.Write(line)
		body.WriteByte('\n')
	}
	return trace.Wrap(post())
}

// wants applies EventTypes.
func (s *WebhookSink) wants(ev *sigilv1.AuditEvent) bool {
	return len(s.cfg.EventTypes) == 0 || slices.Contains(s.cfg.EventTypes, ev.GetType())
}

// writeEach posts one Slack-style message per event, remembering each
// success so that a retried batch resumes after the last one delivered.
func (s *WebhookSink) writeEach(ctx context.Context, batch []*sigilv1.AuditEvent, sent uint64) error {
	for _, ev := range batch {
		if ev.GetSeq() != 0 && ev.GetSeq() <= sent || !s.wants(ev) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return trace.Wrap(err)
		}
		line, err := marshalLine(ev)
		if err != nil {
			return trace.Wrap(err)
		}
		text, err := json.Marshal(audit.Summary(ev))
		if err != nil {
			return trace.Wrap(err)
		}
		body := make([]byte, 0, len(line)+len(text)+20)
		body = append(append(append(append(body, `{"text":`...), text...), `,"event":`...), line...)
		body = append(body, '}')
		if err := s.post(ctx, body, ev.GetSeq(), ev.GetSeq()); err != nil {
			return trace.Wrap(err)
		}
		s.mu.Lock()
		s.sent = max(s.sent, ev.GetSeq())
		s.mu.Unlock()
	}
	return nil
}

func (s *WebhookSink) post(ctx context.Context, body []byte, first, last uint64) error {
	// A request aborted by shutdown has an unknown outcome: the receiver
	// may already have ingested it, and the forwarder, which never learns
	// that it did, re-sends it after the restart: a duplicate. Letting the
	// request finish (bounded by the client Timeout) makes a graceful stop
	// end with a known outcome and a saved cursor.
	ctx = context.WithoutCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return trace.BadParameter("webhook %s: building request failed", s.target)
	}
	for k, v := range s.cfg.Headers {
		req.Header.Set(k, v)
	}
	if s.cfg.Format == WebhookFormatSlack {
		req.Header.Set("Content-Type", "application/json")
	} else {
		req.Header.Set("Content-Type", "application/x-ndjson")
	}
	req.Header.Set("Idempotency-Key", fmt.Sprintf("%d-%d", first, last))
	resp, err := s.client.Do(req)
	if err != nil {
		// url.Error quotes the full URL, which may hold a token in its
		// query: report the inner error against the redacted target.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return trace.ConnectionProblem(err, "webhook %s: %v", s.target, err)
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	// Drain a little more so the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	msg := fmt.Sprintf("webhook %s answered %s", s.target, resp.Status)
	if t := strings.TrimSpace(strings.ToValidUTF8(string(snippet), "?")); t != "" {
		// A receiver may echo the request back; keep header secrets out
		// of the error, which is logged.
		for _, v := range s.cfg.Headers {
			if len(v) >= 4 {
				t = strings.ReplaceAll(t, v, "[redacted]")
			}
		}
		msg += ": " + t
	}
	switch {
	case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode >= 500:
		return trace.ConnectionProblem(nil, "%s", msg)
	default:
		return &RejectedError{StatusCode: resp.StatusCode, Message: msg}
	}
}
