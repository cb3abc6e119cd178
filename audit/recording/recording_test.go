package recording

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

// fakeClock advances by step on every call, so events get distinct times.
type fakeClock struct {
	mu   sync.Mutex
	now  time.Time
	step time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(c.step)
	return c.now
}

func readAll(t *testing.T, path string) (Header, []*Event) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd, err := NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var evs []*Event
	for {
		ev, err := rd.Next()
		if err == io.EOF {
			return rd.Header, evs
		}
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
}

func TestRecordAndPlaySameBytes(t *testing.T) {
	dir := t.TempDir()
	id := uuid.NewString()
	clock := &fakeClock{now: time.Unix(1700000000, 0), step: time.Millisecond}
	r, err := New(Config{Dir: filepath.Join(dir, "recordings"), ID: id, Header: Header{Width: 120, Height: 40, Env: map[string]string{"TERM": "xterm"}}, Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	// Output with escapes, quotes, control bytes, and a multi-byte
	// character split across two writes.
	euro := []byte("€") // 3 bytes
	chunks := [][]byte{
		[]byte("$ echo \"hi\"\r\n\x1b[1mhi\x1b[0m\r\n"),
		append([]byte("price: 5"), euro[:2]...),
		append(euro[2:], []byte("\ttab \\ back\x07\x00\r\n")...),
		[]byte("line\u2028sep ✓\n"),
	}
	var want bytes.Buffer
	for i, c := range chunks {
		r.Output(c)
		want.Write(c)
		if i == 1 {
			r.Input([]byte("ls\r"))
			r.Resize(100, 30)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "recordings", id+".cast")
	h, evs := readAll(t, path)
	if h.Version != 2 || h.Width != 120 || h.Height != 40 || h.Env["TERM"] != "xterm" || h.Timestamp != 1700000000 {
		t.Errorf("header = %+v", h)
	}
	var codes []string
	var got strings.Builder
	last := -1.0
	for _, ev := range evs {
		codes = append(codes, ev.Code)
		if ev.Time < last {
			t.Errorf("event times go backwards: %v after %v", ev.Time, last)
		}
		last = ev.Time
		if ev.Code == CodeOutput {
			got.WriteString(ev.Data)
		}
	}
	if got.String() != want.String() {
		t.Errorf("output = %q, want %q", got.String(), want.String())
	}
	if got := strings.Join(codes, ""); got != "ooiroo" {
		t.Errorf("event codes = %q, want ooiroo", got)
	}

	// Play writes exactly the output bytes.
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var played bytes.Buffer
	var resized string
	if err := Play(context.Background(), &played, f, PlayOptions{Speed: -1, OnResize: func(w, h int) {
		resized = strconv.Itoa(w) + "x" + strconv.Itoa(h)
	}}); err != nil {
		t.Fatal(err)
	}
	if played.String() != want.String() {
		t.Errorf("played %q, want %q", played.String(), want.String())
	}
	if resized != "100x30" {
		t.Errorf("resize = %q, want 100x30", resized)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", st.Mode().Perm())
	}
}

func TestDropsWhenQueueFull(t *testing.T) {
	dir := t.TempDir()
	id := uuid.NewString()
	// A disk that blocks until the session has written everything.
	release := make(chan struct{})
	create := func(path string) (io.WriteCloser, error) {
		<-release
		return os.Create(path)
	}
	r, err := New(Config{Dir: dir, ID: id, MaxBuffer: 1024, CloseTimeout: 10 * time.Second, Create: create})
	if err != nil {
		t.Fatal(err)
	}
	// Writes must return at once whatever the disk does.
	start := time.Now()
	for range 1000 {
		r.Output(bytes.Repeat([]byte("x"), 100))
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("1000 writes took %v", d)
	}
	if r.Dropped() != 100000-1000 {
		t.Errorf("dropped %d bytes, want %d (all but the 1 KiB queue)", r.Dropped(), 100000-1000)
	}
	close(release)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	_, evs := readAll(t, filepath.Join(dir, id+".cast"))
	total := 0
	marker := false
	for _, ev := range evs {
		if ev.Code == CodeOutput {
			total += len(ev.Data)
		}
		if ev.Code == CodeMarker && strings.Contains(ev.Data, "not recorded") {
			marker = true
		}
	}
	if total+int(r.Dropped()) != 100000 {
		t.Errorf("recorded %d + dropped %d != 100000", total, r.Dropped())
	}
	if !marker {
		t.Error("bytes dropped but no marker says so")
	}
}

func TestCreateFailureReported(t *testing.T) {
	dir := t.TempDir()
	id := uuid.NewString()
	// The recording path exists as a directory: O_EXCL create fails.
	if err := os.Mkdir(filepath.Join(dir, id+".cast"), 0o700); err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Dir: dir, ID: id})
	if err != nil {
		t.Fatal(err)
	}
	r.Output([]byte("hello"))
	if err := r.Close(); err == nil {
		t.Error("Close = nil, want the create error")
	}
}

func TestCheckID(t *testing.T) {
	for _, id := range []string{uuid.NewString(), uuid.NewString() + "-2"} {
		if err := CheckID(id); err != nil {
			t.Errorf("CheckID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", "../etc/passwd", "abc", uuid.NewString() + "/x", strings.ToUpper(uuid.NewString()), uuid.NewString() + "-"} {
		if err := CheckID(id); err == nil {
			t.Errorf("CheckID(%q) = nil, want error", id)
		}
	}
}

func TestReaderRejectsBadInput(t *testing.T) {
	for name, in := range map[string]string{
		"empty":       "",
		"not json":    "hello\n",
		"version 1":   `{"version":1,"width":80,"height":24}` + "\n",
		"bad event":   `{"version":2,"width":80,"height":24}` + "\n[1, \"o\"]\n",
		"neg time":    `{"version":2,"width":80,"height":24}` + "\n[-1, \"o\", \"x\"]\n",
		"long line":   `{"version":2,"width":80,"height":24}` + "\n[1, \"o\", \"" + strings.Repeat("a", MaxLineBytes) + "\"]\n",
		"data number": `{"version":2,"width":80,"height":24}` + "\n[1, \"o\", 5]\n",
	} {
		t.Run(name, func(t *testing.T) {
			err := Play(context.Background(), io.Discard, strings.NewReader(in), PlayOptions{Speed: -1})
			if err == nil {
				t.Error("Play = nil, want error")
			}
		})
	}
}

func TestPlayTiming(t *testing.T) {
	in := `{"version":2,"width":80,"height":24}` + "\n" +
		`[0.0, "o", "a"]` + "\n" + `[0.2, "o", "b"]` + "\n" + `[100.0, "o", "c"]` + "\n"
	var out bytes.Buffer
	start := time.Now()
	if err := Play(context.Background(), &out, strings.NewReader(in), PlayOptions{Speed: 2, IdleLimit: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	if out.String() != "abc" {
		t.Errorf("out = %q", out.String())
	}
	// 0.2 s at speed 2 is 100 ms, capped to 50; the 99.8 s gap to 50 ms.
	if d < 90*time.Millisecond || d > 5*time.Second {
		t.Errorf("playback took %v, want about 100ms", d)
	}
}
