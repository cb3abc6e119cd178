package export

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/audit/store"
)

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newEvent(i int) *sigilv1.AuditEvent {
	return &sigilv1.AuditEvent{
		Id:       fmt.Sprintf("ev-%06d", i),
		Time:     timestamppb.Now(),
		Type:     "user.login",
		Identity: &sigilv1.AuditIdentity{User: "alice@example.com", Kind: "human"},
		Success:  true,
		Details:  map[string]string{"i": strconv.Itoa(i)},
	}
}

// appendN appends n events durably, failing the test if any Append does
// not complete within a short deadline (the forwarder must never block
// emitters).
func appendN(t *testing.T, st store.Store, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := st.Append(ctx, newEvent(i), true)
		cancel()
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
}

// testLogger captures logs at every level.
type testLogger struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *testLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *testLogger) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *testLogger) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startForwarder runs a forwarder until the returned stop is called.
func startForwarder(t *testing.T, cfg ForwarderConfig) (*Forwarder, func()) {
	t.Helper()
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = time.Millisecond
		cfg.MaxBackoff = 20 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	f, err := NewForwarder(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("forwarder Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("forwarder did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return f, stop
}

func decodeLines(t *testing.T, r io.Reader) []*sigilv1.AuditEvent {
	t.Helper()
	var out []*sigilv1.AuditEvent
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		ev := &sigilv1.AuditEvent{}
		if err := protojson.Unmarshal(sc.Bytes(), ev); err != nil {
			t.Fatalf("bad line %q: %v", sc.Text(), err)
		}
		out = append(out, ev)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// assertSeqs checks that evs are exactly seqs from..to, in order, and that
// each is the event appended for it.
func assertSeqs(t *testing.T, evs []*sigilv1.AuditEvent, from, to uint64) {
	t.Helper()
	var got []uint64
	for _, ev := range evs {
		got = append(got, ev.GetSeq())
	}
	var want []uint64
	for s := from; s <= to; s++ {
		want = append(want, s)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("delivered seqs = %v, want %d..%d exactly once in order", got, from, to)
	}
	for _, ev := range evs {
		// Events are appended with i = seq-1 in every test.
		if want := fmt.Sprintf("ev-%06d", ev.GetSeq()-1); ev.GetId() != want {
			t.Fatalf("seq %d has id %q, want %q", ev.GetSeq(), ev.GetId(), want)
		}
	}
}

// readAllFiles returns the events in the rotated files (oldest first) and
// then the active file, and how many files there are.
func readAllFiles(t *testing.T, s *FileSink) ([]*sigilv1.AuditEvent, int) {
	t.Helper()
	rotated, err := s.RotatedFiles()
	if err != nil {
		t.Fatal(err)
	}
	var evs []*sigilv1.AuditEvent
	for _, p := range append(rotated, s.cfg.Path) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, decodeLines(t, bytes.NewReader(b))...)
	}
	return evs, len(rotated) + 1
}

func TestFileSinkDeliversInOrder(t *testing.T) {
	st := newTestStore(t)
	dir := t.TempDir()
	sink, err := NewFileSink(FileSinkConfig{Name: "local", Path: filepath.Join(dir, "siem", "events.jsonl")})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	cursor := filepath.Join(dir, "cursors", "local")
	f, _ := startForwarder(t, ForwarderConfig{Store: st, Sink: sink, CursorPath: cursor, BatchSize: 7})
	const n = 100
	appendN(t, st, 0, n)
	eventually(t, "all events delivered", func() bool { return f.Status().Cursor == n })
	evs, files := readAllFiles(t, sink)
	if files != 1 {
		t.Fatalf("got %d files, want 1 (no rotation at the default size)", files)
	}
	assertSeqs(t, evs, 1, n)
	if st := f.Status(); st.Lag != 0 || st.LastError != "" {
		t.Fatalf("status = %+v, want no lag and no error", st)
	}
	got, err := readCursor(cursor)
	if err != nil || got != n {
		t.Fatalf("cursor file = %d, %v; want %d", got, err, n)
	}
	for path, want := range map[string]os.FileMode{sink.cfg.Path: 0o600, filepath.Dir(sink.cfg.Path): 0o700 | os.ModeDir, cursor: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s mode = %v, want %v", path, fi.Mode(), want)
		}
	}
}

func TestFileSinkRotation(t *testing.T) {
	line, err := marshalLine(func() *sigilv1.AuditEvent { ev := newEvent(0); ev.Seq = 10; return ev }())
	if err != nil {
		t.Fatal(err)
	}
	// About five events per file.
	maxBytes := int64(len(line)+1) * 5

	for _, tc := range []struct {
		name     string
		maxFiles int
	}{
		{name: "everything kept", maxFiles: 1000},
		{name: "oldest deleted", maxFiles: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newTestStore(t)
			dir := t.TempDir()
			sink, err := NewFileSink(FileSinkConfig{Path: filepath.Join(dir, "events.jsonl"), MaxBytes: maxBytes, MaxFiles: tc.maxFiles})
			if err != nil {
				t.Fatal(err)
			}
			defer sink.Close()
			f, _ := startForwarder(t, ForwarderConfig{Store: st, Sink: sink, CursorPath: filepath.Join(dir, "cursor"), BatchSize: 13})
			const n = 120
			appendN(t, st, 0, n)
			eventually(t, "all events delivered", func() bool { return f.Status().Cursor == n })
			evs, files := readAllFiles(t, sink)
			if tc.maxFiles >= 1000 {
				assertSeqs(t, evs, 1, n)
				if files < n/6 {
					t.Fatalf("only %d files for %d events at ~5 per file", files, n)
				}
			} else {
				if files != tc.maxFiles {
					t.Fatalf("got %d files, want MaxFiles=%d", files, tc.maxFiles)
				}
				// What is left is the newest events, contiguous.
				if len(evs) == 0 {
					t.Fatal("no events left")
				}
				assertSeqs(t, evs, evs[0].GetSeq(), n)
			}
			rotated, _ := sink.RotatedFiles()
			for _, p := range append(rotated, sink.cfg.Path) {
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Size() > maxBytes {
					t.Errorf("%s is %d bytes, over MaxBytes %d", p, fi.Size(), maxBytes)
				}
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("%s mode %v, want 0600", p, fi.Mode().Perm())
				}
			}
		})
	}
}

func TestFileSinkRestartContinuesWithoutDuplicates(t *testing.T) {
	st := newTestStore(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "events.jsonl")
	cursor := filepath.Join(dir, "cursor")

	sink1, err := NewFileSink(FileSinkConfig{Path: path, MaxBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	f1, stop1 := startForwarder(t, ForwarderConfig{Store: st, Sink: sink1, CursorPath: cursor, BatchSize: 10})
	appendN(t, st, 0, 50)
	eventually(t, "first run delivered", func() bool { return f1.Status().Cursor == 50 })
	stop1()
	if err := sink1.Close(); err != nil {
		t.Fatal(err)
	}

	// Events appended while no forwarder runs wait in the store.
	appendN(t, st, 50, 30)
	sink2, err := NewFileSink(FileSinkConfig{Path: path, MaxBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer sink2.Close()
	f2, _ := startForwarder(t, ForwarderConfig{Store: st, Sink: sink2, CursorPath: cursor, BatchSize: 10})
	appendN(t, st, 80, 20)
	eventually(t, "second run delivered", func() bool { return f2.Status().Cursor == 100 })
	evs, _ := readAllFiles(t, sink2)
	assertSeqs(t, evs, 1, 100)
}

// webhookTarget is an NDJSON receiver that fails while down.
type webhookTarget struct {
	t      *testing.T
	mu     sync.Mutex
	down   bool
	status int // answer while down
	failed int
	events []*sigilv1.AuditEvent
	keys   []string
	hdrs   []http.Header
}

func (w *webhookTarget) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.hdrs = append(w.hdrs, r.Header.Clone())
	if w.down {
		w.failed++
		// Echo the credentials the way a careless receiver might.
		http.Error(rw, "target is down; auth was "+r.Header.Get("Authorization"), w.status)
		return
	}
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-ndjson" {
		http.Error(rw, "want POST of application/x-ndjson", http.StatusUnsupportedMediaType)
		return
	}
	evs := decodeLines(w.t, bytes.NewReader(body))
	if want := fmt.Sprintf("%d-%d", evs[0].GetSeq(), evs[len(evs)-1].GetSeq()); r.Header.Get("Idempotency-Key") != want {
		http.Error(rw, "bad idempotency key "+r.Header.Get("Idempotency-Key")+" want "+want, http.StatusBadRequest)
		return
	}
	w.keys = append(w.keys, r.Header.Get("Idempotency-Key"))
	w.events = append(w.events, evs...)
	rw.WriteHeader(http.StatusAccepted)
}

func (w *webhookTarget) set(down bool, status int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.down, w.status = down, status
}

func (w *webhookTarget) failures() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failed
}

func (w *webhookTarget) received() []*sigilv1.AuditEvent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.events)
}

func newTarget(t *testing.T) (*webhookTarget, *httptest.Server) {
	w := &webhookTarget{t: t}
	srv := httptest.NewServer(w)
	t.Cleanup(srv.Close)
	return w, srv
}

func TestWebhookOutageThenRecovery(t *testing.T) {
	st := newTestStore(t)
	target, srv := newTarget(t)
	target.set(true, http.StatusServiceUnavailable)
	sink, err := NewWebhookSink(WebhookSinkConfig{URL: srv.URL + "/ingest", MaxBatchBytes: 2048})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := startForwarder(t, ForwarderConfig{Store: st, Sink: sink, CursorPath: filepath.Join(t.TempDir(), "cursor"), BatchSize: 25})

	appendN(t, st, 0, 40)
	const k = 5
	eventually(t, "the forwarder to hit the outage", func() bool { return target.failures() >= k })
	// Appends keep completing while the target is down: appendN fails the
	// test if one does not return promptly.
	appendN(t, st, 40, 60)
	if got := target.received(); len(got) != 0 {
		t.Fatalf("target received %d events while down", len(got))
	}
	status := f.Status()
	if status.Attempts < 1 || !strings.Contains(status.LastError, "503") || status.Rejected {
		t.Fatalf("status during outage = %+v, want attempts, a 503 error, not rejected", status)
	}
	if status.Lag != 100 {
		t.Fatalf("lag during outage = %d, want 100", status.Lag)
	}

	target.set(false, 0)
	eventually(t, "every event delivered", func() bool { return len(target.received()) >= 100 && f.Status().Cursor == 100 })
	appendN(t, st, 100, 10)
	eventually(t, "later events delivered", func() bool { return f.Status().Cursor == 110 })
	assertSeqs(t, target.received(), 1, 110)
	if s := f.Status(); s.LastError != "" || s.Attempts != 0 || s.Lag != 0 {
		t.Fatalf("status after recovery = %+v", s)
	}
}

func TestWebhookDownUntilRestart(t *testing.T) {
	st := newTestStore(t)
	target, srv := newTarget(t)
	target.set(true, http.StatusBadGateway)
	cursor := filepath.Join(t.TempDir(), "cursor")
	newSink := func() *WebhookSink {
		s, err := NewWebhookSink(WebhookSinkConfig{URL: srv.URL, MaxBatchBytes: 1500})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	_, stop := startForwarder(t, ForwarderConfig{Store: st, Sink: newSink(), CursorPath: cursor, BatchSize: 8})
	appendN(t, st, 0, 30)
	eventually(t, "failed attempts", func() bool { return target.failures() >= 3 })
	appendN(t, st, 30, 20)
	stop()
	if c, err := readCursor(cursor); err != nil || c != 0 {
		t.Fatalf("cursor after outage = %d, %v; want 0", c, err)
	}

	target.set(false, 0)
	f2, _ := startForwarder(t, ForwarderConfig{Store: st, Sink: newSink(), CursorPath: cursor, BatchSize: 8})
	eventually(t, "delivery after restart", func() bool { return f2.Status().Cursor == 50 })
	assertSeqs(t, target.received(), 1, 50)
}

// A graceful stop must not abandon a POST in flight: its outcome would be
// unknown, the cursor would not move, and the receiver, which may have
// ingested it, would get it again after the restart.
func TestWebhookStopLetsPostInFlightFinish(t *testing.T) {
	st := newTestStore(t)
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	var mu sync.Mutex
	var got []*sigilv1.AuditEvent
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case arrived <- struct{}{}:
		default:
		}
		<-release
		// Like a real receiver, ingest what arrived even if the client
		// has gone away meanwhile.
		mu.Lock()
		got = append(got, decodeLines(t, bytes.NewReader(body))...)
		mu.Unlock()
		rw.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	cursor := filepath.Join(t.TempDir(), "cursor")
	newSink := func() *WebhookSink {
		s, err := NewWebhookSink(WebhookSinkConfig{URL: srv.URL})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	f1, err := NewForwarder(ForwarderConfig{Store: st, Sink: newSink(), CursorPath: cursor, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f1.Run(ctx) }()
	appendN(t, st, 0, 1)
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the first POST never arrived")
	}
	cancel()
	releaseOnce.Do(func() { close(release) })
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the forwarder did not stop")
	}
	if c, err := readCursor(cursor); err != nil || c != 1 {
		t.Fatalf("cursor after stopping with a POST in flight = %d, %v; want 1 (the answered POST is recorded)", c, err)
	}

	f2, _ := startForwarder(t, ForwarderConfig{Store: st, Sink: newSink(), CursorPath: cursor})
	appendN(t, st, 1, 1)
	eventually(t, "delivery after restart", func() bool { return f2.Status().Cursor == 2 })
	mu.Lock()
	defer mu.Unlock()
	assertSeqs(t, got, 1, 2)
}

func TestWebhookSplitBatchRetryDoesNotDuplicate(t *testing.T) {
	st := newTestStore(t)
	var mu sync.Mutex
	var got []*sigilv1.AuditEvent
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		requests++
		// Fail every third request so that some batches fail after an
		// earlier part of them was accepted.
		if requests%3 == 0 {
			rw.WriteHeader(http.StatusInternalServerError)
			return
		}
		got = append(got, decodeLines(t, bytes.NewReader(body))...)
	}))
	defer srv.Close()
	sink, err := NewWebhookSink(WebhookSinkConfig{URL: srv.URL, MaxBatchBytes: 800})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := startForwarder(t, ForwarderConfig{Store: st, Sink: sink, CursorPath: filepath.Join(t.TempDir(), "c"), BatchSize: 20})
	appendN(t, st, 0, 60)
	eventually(t, "delivery", func() bool { return f.Status().Cursor == 60 })
	mu.Lock()
	defer mu.Unlock()
	assertSeqs(t, got, 1, 60)
}

func TestWebhookHeadersAndSecretsNotLogged(t *testing.T) {
	const secret = "Bearer s3cr3t-t0ken-value"
	const querySecret = "q-s3cr3t"
	st := newTestStore(t)
	target, srv := newTarget(t)
	target.set(true, http.StatusServiceUnavailable)
	logs := &testLogger{}
	sink, err := NewWebhookSink(WebhookSinkConfig{
		URL:     srv.URL + "/ingest?token=" + querySecret,
		Headers: map[string]string{"Authorization": secret, "X-Tenant": "acme"},
	})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := startForwarder(t, ForwarderConfig{Store: st, Sink: sink, CursorPath: filepath.Join(t.TempDir(), "c"), Logger: logs.logger()})
	appendN(t, st, 0, 5)
	eventually(t, "failures", func() bool { return target.failures() >= 3 })

	// A permanent refusal is retried (not dropped) and flagged.
	target.set(true, http.StatusBadRequest)
	eventually(t, "rejected status", func() bool { return f.Status().Rejected })
	if s := f.Status(); !strings.Contains(s.LastError, "400") || !strings.Contains(s.LastError, "target is down") {
		t.Fatalf("rejected status = %+v, want the 400 and the body in LastError", s)
	}
	eventually(t, "rejection logged at error", func() bool {
		return strings.Contains(logs.String(), "level=ERROR") && strings.Contains(logs.String(), "rejected")
	})

	target.set(false, 0)
	eventually(t, "delivery", func() bool { return f.Status().Cursor == 5 })
	assertSeqs(t, target.received(), 1, 5)

	target.mu.Lock()
	for _, h := range target.hdrs {
		if h.Get("Authorization") != secret || h.Get("X-Tenant") != "acme" {
			t.Errorf("request headers = %v, want the configured ones", h)
		}
	}
	target.mu.Unlock()
	out := logs.String()
	if !strings.Contains(out, "level=WARN") || !strings.Contains(out, "attempt=") {
		t.Fatalf("expected warn logs with the attempt count, got:\n%s", out)
	}
	for _, s := range []string{secret, "s3cr3t", querySecret} {
		if strings.Contains(out, s) {
			t.Fatalf("logs contain secret %q:\n%s", s, out)
		}
	}
	if s := f.Status(); strings.Contains(s.LastError, querySecret) {
		t.Fatalf("status leaks query secret: %+v", s)
	}
}

func TestWebhookConnectionRefusedDoesNotLeakURLSecrets(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL + "/x?token=q-s3cr3t"
	srv.Close()
	sink, err := NewWebhookSink(WebhookSinkConfig{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	ev := newEvent(0)
	ev.Seq = 1
	err = sink.Write(context.Background(), []*sigilv1.AuditEvent{ev})
	if err == nil {
		t.Fatal("write to a closed server succeeded")
	}
	if strings.Contains(err.Error(), "q-s3cr3t") {
		t.Fatalf("error leaks the query secret: %v", err)
	}
	if IsRejected(err) {
		t.Fatalf("connection failure classified as rejection: %v", err)
	}
}

func TestForwarderReportsPrunedGap(t *testing.T) {
	st := newTestStore(t)
	old := time.Now().Add(-48 * time.Hour)
	for i := range 10 {
		ev := newEvent(i)
		ev.Time = timestamppb.New(old.Add(time.Duration(i) * time.Second))
		if err := st.Append(context.Background(), ev, true); err != nil {
			t.Fatal(err)
		}
	}
	appendN(t, st, 10, 5)
	n, err := st.Prune(context.Background(), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if n != 10 {
		t.Fatalf("pruned %d, want 10", n)
	}
	dir := t.TempDir()
	sink, err := NewFileSink(FileSinkConfig{Path: filepath.Join(dir, "events.jsonl")})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	logs := &testLogger{}
	f, _ := startForwarder(t, ForwarderConfig{Store: st, Sink: sink, CursorPath: filepath.Join(dir, "c"), Logger: logs.logger()})
	eventually(t, "delivery", func() bool { return f.Status().Cursor == 15 })
	if got := f.Status().LostEvents; got != 10 {
		t.Fatalf("LostEvents = %d, want 10", got)
	}
	out := logs.String()
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "lost_from_seq=1") || !strings.Contains(out, "lost_to_seq=10") {
		t.Fatalf("gap not logged as an error with its range:\n%s", out)
	}
	evs, _ := readAllFiles(t, sink)
	assertSeqs(t, evs, 11, 15)
}

func TestCursorFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "cursor")
	if c, err := readCursor(p); err != nil || c != 0 {
		t.Fatalf("missing cursor = %d, %v; want 0, nil", c, err)
	}
	if err := writeCursor(p, 42); err != nil {
		t.Fatal(err)
	}
	if c, err := readCursor(p); err != nil || c != 42 {
		t.Fatalf("cursor = %d, %v; want 42", c, err)
	}
	if err := os.WriteFile(p, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readCursor(p); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt cursor error = %v", err)
	}
	// A forwarder refuses to start on a corrupt cursor rather than
	// re-delivering everything.
	f, err := NewForwarder(ForwarderConfig{Store: newTestStore(t), Sink: &FileSink{cfg: FileSinkConfig{Name: "x"}}, CursorPath: p})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("Run with corrupt cursor = %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Fatalf("temp files left behind: %v", entries)
	}
}

func TestBackoff(t *testing.T) {
	minD, maxD := 100*time.Millisecond, time.Second
	for attempt, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 5: time.Second, 50: time.Second} {
		for range 20 {
			got := backoff(minD, maxD, attempt)
			if got < want/2 || got > want {
				t.Fatalf("backoff(attempt %d) = %v, want in [%v, %v]", attempt, got, want/2, want)
			}
		}
	}
}

func TestConfigCheckAndSetDefaults(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "empty", cfg: Config{}},
		{name: "ok", cfg: Config{
			Files:    []FileSinkConfig{{Name: "local", Path: "/var/log/sigil/events.jsonl"}},
			Webhooks: []WebhookSinkConfig{{Name: "siem", URL: "https://siem.example.com/in", Headers: map[string]string{"Authorization": "x"}}, {Name: "dev", URL: "http://127.0.0.1:8080/"}, {Name: "dev6", URL: "http://[::1]:8080/"}, {Name: "devl", URL: "http://localhost/"}},
		}},
		{name: "missing file name", cfg: Config{Files: []FileSinkConfig{{Path: "/x.jsonl"}}}, wantErr: "audit.export.files[0].name: required"},
		{name: "missing path", cfg: Config{Files: []FileSinkConfig{{Name: "a"}}}, wantErr: "audit.export.files[0].path: required"},
		{name: "bad name", cfg: Config{Files: []FileSinkConfig{{Name: "../etc", Path: "/x.jsonl"}}}, wantErr: "audit.export.files[0].name:"},
		{name: "negative max files", cfg: Config{Files: []FileSinkConfig{{Name: "a", Path: "/x.jsonl", MaxFiles: -1}}}, wantErr: "audit.export.files[0].max_files"},
		{name: "duplicate name", cfg: Config{Files: []FileSinkConfig{{Name: "a", Path: "/x.jsonl"}}, Webhooks: []WebhookSinkConfig{{Name: "a", URL: "https://h/"}}}, wantErr: `audit.export.webhooks[0].name: "a" is already used by audit.export.files[0]`},
		{name: "plain http remote", cfg: Config{Webhooks: []WebhookSinkConfig{{Name: "ok", URL: "https://h/"}, {Name: "w", URL: "http://siem.example.com/"}}}, wantErr: "audit.export.webhooks[1].url: must use https"},
		{name: "credentials in url", cfg: Config{Webhooks: []WebhookSinkConfig{{Name: "w", URL: "https://u:pw@h/"}}}, wantErr: "audit.export.webhooks[0].url: must not contain credentials"},
		{name: "bad scheme", cfg: Config{Webhooks: []WebhookSinkConfig{{Name: "w", URL: "ftp://h/"}}}, wantErr: "audit.export.webhooks[0].url: scheme must be https"},
		{name: "missing url", cfg: Config{Webhooks: []WebhookSinkConfig{{Name: "w"}}}, wantErr: "audit.export.webhooks[0].url: required"},
		{name: "header injection", cfg: Config{Webhooks: []WebhookSinkConfig{{Name: "w", URL: "https://h/", Headers: map[string]string{"Authorization": "a\r\nX-Evil: 1"}}}}, wantErr: "audit.export.webhooks[0].headers.Authorization: value contains invalid characters"},
		{name: "reserved header", cfg: Config{Webhooks: []WebhookSinkConfig{{Name: "w", URL: "https://h/", Headers: map[string]string{"idempotency-key": "x"}}}}, wantErr: "Idempotency-Key is set by Sigil"},
		{name: "negative timeout", cfg: Config{Webhooks: []WebhookSinkConfig{{Name: "w", URL: "https://h/", Timeout: -time.Second}}}, wantErr: "audit.export.webhooks[0].timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.CheckAndSetDefaults()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "X-Evil") || strings.Contains(err.Error(), ":pw@") {
				t.Fatalf("error quotes a secret: %v", err)
			}
		})
	}
	cfg := Config{Files: []FileSinkConfig{{Name: "a", Path: "/x.jsonl"}}, Webhooks: []WebhookSinkConfig{{Name: "w", URL: "https://h/"}}}
	if err := cfg.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	if cfg.Files[0].MaxBytes != DefaultFileMaxBytes || cfg.Files[0].MaxFiles != DefaultFileMaxFiles ||
		cfg.Webhooks[0].Timeout != DefaultWebhookTimeout || cfg.Webhooks[0].MaxBatchBytes != DefaultWebhookMaxBatchBytes {
		t.Fatalf("defaults not set: %+v", cfg)
	}
}

func TestConfigStart(t *testing.T) {
	st := newTestStore(t)
	target, srv := newTarget(t)
	dataDir := t.TempDir()
	out := filepath.Join(t.TempDir(), "events.jsonl")
	cfg := Config{
		Files:    []FileSinkConfig{{Name: "local", Path: out}},
		Webhooks: []WebhookSinkConfig{{Name: "siem", URL: srv.URL}},
	}
	e, err := NewExporter(cfg, st, dataDir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	e.Start(context.Background())
	appendN(t, st, 0, 20)
	eventually(t, "both sinks delivered", func() bool {
		s := e.Statuses()
		return len(s) == 2 && s[0].Cursor == 20 && s[1].Cursor == 20
	})
	e.Stop()
	assertSeqs(t, target.received(), 1, 20)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	assertSeqs(t, decodeLines(t, bytes.NewReader(b)), 1, 20)
	for _, name := range []string{"local", "siem"} {
		if c, err := readCursor(filepath.Join(CursorDir(dataDir), name)); err != nil || c != 20 {
			t.Fatalf("cursor %s = %d, %v; want 20", name, c, err)
		}
	}

	stop, err := cfg.Start(context.Background(), st, dataDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, st, 20, 5)
	eventually(t, "delivery after restart", func() bool { return len(target.received()) == 25 })
	stop()
	assertSeqs(t, target.received(), 1, 25)

	bad := Config{Webhooks: []WebhookSinkConfig{{URL: srv.URL}}}
	if _, err := bad.Start(context.Background(), st, dataDir, nil); err == nil || !strings.Contains(err.Error(), "audit.export.webhooks[0].name: required") {
		t.Fatalf("Start with bad config = %v", err)
	}
}

// The slack format posts one {"text", "event"} message per event of the
// listed types only; a failed post is retried without re-sending the
// messages already accepted.
func TestWebhookSlackFormat(t *testing.T) {
	st := newTestStore(t)
	var mu sync.Mutex
	var texts []string
	requests := 0
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var msg struct {
			Text  string          `json:"text"`
			Event json.RawMessage `json:"event"`
		}
		if r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&msg) != nil || len(msg.Event) == 0 {
			rw.WriteHeader(http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		requests++
		if requests == 2 {
			rw.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		texts = append(texts, msg.Text)
	}))
	defer srv.Close()
	if _, err := NewWebhookSink(WebhookSinkConfig{URL: srv.URL, Format: "teams"}); err == nil || !strings.Contains(err.Error(), "format") {
		t.Fatalf("unknown format accepted: %v", err)
	}
	if _, err := NewWebhookSink(WebhookSinkConfig{URL: srv.URL, EventTypes: []string{"request.made"}}); err == nil || !strings.Contains(err.Error(), `"request.made" is not an audit event type`) {
		t.Fatalf("unknown event type accepted: %v", err)
	}
	sink, err := NewWebhookSink(WebhookSinkConfig{URL: srv.URL, Format: WebhookFormatSlack, EventTypes: []string{audit.EventRequestCreated, audit.EventRequestReviewed}})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := startForwarder(t, ForwarderConfig{Store: st, Sink: sink, CursorPath: filepath.Join(t.TempDir(), "c"), BatchSize: 20})
	ctx := context.Background()
	for i, ev := range []*sigilv1.AuditEvent{
		{Type: audit.EventDBQuery, Identity: &sigilv1.AuditIdentity{User: "alice"}, Statement: "SELECT 1"},
		{Type: audit.EventRequestCreated, Identity: &sigilv1.AuditIdentity{User: "alice"}, Success: true,
			Details: map[string]string{"request_id": "r1", "roles": "dba", "reason": "ticket 42", "expires": "2026-11-23T15:00:00Z"}},
		{Type: audit.EventRequestReviewed, Identity: &sigilv1.AuditIdentity{User: "bob"}, Success: true,
			Details: map[string]string{"request_id": "r1", "roles": "dba", "decision": "approved", "requester": "alice", "state": "approved"}},
		{Type: audit.EventRequestReviewed, Identity: &sigilv1.AuditIdentity{User: "carol"}, Success: true,
			Details: map[string]string{"request_id": "r2", "roles": "dba", "decision": "denied", "requester": "alice", "state": "denied"}},
	} {
		if err := st.Append(ctx, ev, true); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	eventually(t, "delivery", func() bool { return f.Status().Cursor == 4 })
	mu.Lock()
	defer mu.Unlock()
	want := []string{
		"alice requests role(s) dba until 2026-11-23T15:00:00Z (access request r1): ticket 42",
		"bob approved alice's access request r1 for role(s) dba; it is now approved",
		"carol denied alice's access request r2 for role(s) dba; it is now denied",
	}
	if !slices.Equal(texts, want) {
		t.Fatalf("messages:\n%q\nwant\n%q", texts, want)
	}
}
