package recording

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gravitational/trace"
)

// Event codes of asciicast v2.
const (
	CodeOutput = "o"
	CodeInput  = "i"
	CodeResize = "r"
	CodeMarker = "m"
)

// Ext is the file name extension of recordings.
const Ext = ".cast"

const (
	// DefaultMaxBuffer bounds the bytes queued for the disk; past it new
	// events are dropped (and a marker says how much) rather than making
	// the session wait for the disk.
	DefaultMaxBuffer = 4 << 20
	// DefaultCloseTimeout bounds how long Close waits for the queue to
	// reach the disk; the writer goes on in the background afterwards.
	DefaultCloseTimeout = 5 * time.Second
)

// idRe is a session UUID, optionally followed by -N for the second and
// later interactive channels of one session. Only such names become
// paths, so an ID can never escape the recordings directory.
var idRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(-[0-9]{1,4})?$`)

// CheckID validates a recording ID.
func CheckID(id string) error {
	if !idRe.MatchString(id) {
		return trace.BadParameter("%q is not a session ID (a UUID such as 0f8fad5b-d9cb-469f-a165-70867728950e)", truncate(id, 60))
	}
	return nil
}

// Path returns the file of recording id under dir.
func Path(dir, id string) (string, error) {
	if err := CheckID(id); err != nil {
		return "", trace.Wrap(err)
	}
	return filepath.Join(dir, id+Ext), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Header is the first line of an asciicast v2 file.
type Header struct {
	Version   int               `json:"version"`
	Width     int               `json:"width"`
	Height    int               `json:"height"`
	Timestamp int64             `json:"timestamp,omitempty"`
	Title     string            `json:"title,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
}

// Config configures a Recorder.
type Config struct {
	// Dir holds the recordings; it is created (0700) when missing.
	Dir string
	// ID names the file: Dir/ID.cast. See CheckID.
	ID string
	// Header is written first; Version and Timestamp are filled in.
	Header Header
	// MaxBuffer defaults to DefaultMaxBuffer.
	MaxBuffer int
	// CloseTimeout defaults to DefaultCloseTimeout.
	CloseTimeout time.Duration
	// Clock defaults to time.Now.
	Clock  func() time.Time
	Logger *slog.Logger
	// Create opens the recording file; it defaults to creating path (mode
	// 0600, failing if it exists). Tests use it to simulate a slow disk.
	Create func(path string) (io.WriteCloser, error)
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Dir == "" {
		return trace.BadParameter("recording: missing Dir")
	}
	if err := CheckID(c.ID); err != nil {
		return trace.Wrap(err)
	}
	if c.MaxBuffer < 0 || c.CloseTimeout < 0 {
		return trace.BadParameter("recording: limits must not be negative")
	}
	if c.MaxBuffer == 0 {
		c.MaxBuffer = DefaultMaxBuffer
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = DefaultCloseTimeout
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Create == nil {
		dir := c.Dir
		c.Create = func(path string) (io.WriteCloser, error) {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, trace.ConvertSystemError(err)
			}
			f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return nil, trace.ConvertSystemError(err)
			}
			return f, nil
		}
	}
	if c.Header.Width <= 0 {
		c.Header.Width = 80
	}
	if c.Header.Height <= 0 {
		c.Header.Height = 24
	}
	c.Header.Version = 2
	return nil
}

// event is one queued line.
type event struct {
	at   time.Duration
	code string
	data []byte
}

// Recorder appends events to one recording. Its methods never wait for
// the disk: events go to a bounded queue a goroutine writes out. Output,
// Input and Resize may be called from different goroutines.
type Recorder struct {
	cfg   Config
	path  string
	start time.Time

	mu      sync.Mutex
	queue   []event
	queued  int
	dropped int64
	closed  bool
	// partial holds an incomplete UTF-8 sequence at the end of the last
	// chunk of a stream, so that a character split over two reads is
	// recorded whole (JSON strings cannot carry half a character).
	partial map[string][]byte
	wake    chan struct{}
	done    chan struct{}
	err     error
}

// New starts a recording. The file is created by the writer goroutine,
// so a slow or full disk never delays the session; failures are logged
// and reported by Close.
func New(cfg Config) (*Recorder, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	path, err := Path(cfg.Dir, cfg.ID)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	r := &Recorder{
		cfg:     cfg,
		path:    path,
		start:   cfg.Clock(),
		partial: map[string][]byte{},
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	if r.cfg.Header.Timestamp == 0 {
		r.cfg.Header.Timestamp = r.start.Unix()
	}
	go r.writeLoop()
	return r, nil
}

// Path is the file the recording goes to.
func (r *Recorder) Path() string { return r.path }

// Output records bytes the terminal showed.
func (r *Recorder) Output(p []byte) { r.add(CodeOutput, p) }

// Input records bytes the user typed.
func (r *Recorder) Input(p []byte) { r.add(CodeInput, p) }

// Resize records a terminal size change.
func (r *Recorder) Resize(width, height int) {
	r.add(CodeResize, []byte(strconv.Itoa(width)+"x"+strconv.Itoa(height)))
}

// Dropped is how many bytes were not recorded because the queue was full.
func (r *Recorder) Dropped() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dropped
}

func (r *Recorder) add(code string, p []byte) {
	if len(p) == 0 {
		return
	}
	at := r.cfg.Clock().Sub(r.start)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	data := p
	if code == CodeOutput || code == CodeInput {
		prev := r.partial[code]
		data = make([]byte, 0, len(prev)+len(p))
		data = append(append(data, prev...), p...)
		cut := completeUTF8(data)
		r.partial[code] = append(r.partial[code][:0], data[cut:]...)
		data = data[:cut]
		if len(data) == 0 {
			return
		}
	} else {
		data = bytes.Clone(p)
	}
	if r.queued+len(data) > r.cfg.MaxBuffer {
		r.dropped += int64(len(data))
		return
	}
	r.queue = append(r.queue, event{at: at, code: code, data: data})
	r.queued += len(data)
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// completeUTF8 returns the length of p without a trailing incomplete
// UTF-8 sequence (at most 3 bytes are held back; invalid bytes are not).
func completeUTF8(p []byte) int {
	for i := 1; i < utf8.UTFMax && i <= len(p); i++ {
		b := p[len(p)-i]
		if b < utf8.RuneSelf {
			return len(p)
		}
		if utf8.RuneStart(b) {
			if !utf8.FullRune(p[len(p)-i:]) {
				return len(p) - i
			}
			return len(p)
		}
	}
	return len(p)
}

// Close flushes what is queued (waiting at most CloseTimeout) and closes
// the file. It returns the first write error, if any.
func (r *Recorder) Close() error {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		// A stream that ended mid-character keeps its bytes.
		for _, code := range []string{CodeOutput, CodeInput} {
			if p := r.partial[code]; len(p) > 0 {
				r.queue = append(r.queue, event{at: r.cfg.Clock().Sub(r.start), code: code, data: bytes.Clone(p)})
			}
		}
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
	r.mu.Unlock()
	t := time.NewTimer(r.cfg.CloseTimeout)
	defer t.Stop()
	select {
	case <-r.done:
	case <-t.C:
		r.cfg.Logger.Warn("Recording still being written after the session ended.", "path", r.path)
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Wait blocks until the writer has finished (after Close).
func (r *Recorder) Wait() { <-r.done }

func (r *Recorder) setErr(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
}

func (r *Recorder) writeLoop() {
	defer close(r.done)
	f, err := r.cfg.Create(r.path)
	if err != nil {
		r.cfg.Logger.Error("Cannot create the session recording.", "path", r.path, "error", err)
		r.setErr(err)
		// Keep draining so the queue does not hold memory.
		r.drain(nil)
		return
	}
	w := bufio.NewWriterSize(f, 64<<10)
	if err := writeHeader(w, r.cfg.Header); err != nil {
		r.setErr(err)
	}
	r.drain(w)
	if err := w.Flush(); err != nil {
		r.setErr(trace.ConvertSystemError(err))
	}
	if err := f.Close(); err != nil {
		r.setErr(trace.ConvertSystemError(err))
	}
}

// drain writes queued events until the recorder is closed and the queue
// empty; w nil discards them.
func (r *Recorder) drain(w *bufio.Writer) {
	var reported int64
	line := make([]byte, 0, 4096)
	for {
		r.mu.Lock()
		batch := r.queue
		r.queue = nil
		r.queued = 0
		closed := r.closed
		dropped := r.dropped
		r.mu.Unlock()
		if w != nil {
			for _, ev := range batch {
				line = appendEvent(line[:0], ev)
				if _, err := w.Write(line); err != nil {
					r.setErr(trace.ConvertSystemError(err))
					w = nil
					break
				}
			}
			if w != nil && dropped > reported {
				msg := fmt.Sprintf("sigil: %d bytes of this session were not recorded (the disk was too slow)", dropped-reported)
				reported = dropped
				line = appendEvent(line[:0], event{at: r.cfg.Clock().Sub(r.start), code: CodeMarker, data: []byte(msg)})
				_, _ = w.Write(line)
			}
			if w != nil && len(batch) > 0 {
				// Flushed per batch so that a live session's recording is
				// on disk within a moment of the output.
				if err := w.Flush(); err != nil {
					r.setErr(trace.ConvertSystemError(err))
					w = nil
				}
			}
		}
		if closed && len(batch) == 0 {
			return
		}
		if !closed {
			<-r.wake
		}
	}
}

func writeHeader(w *bufio.Writer, h Header) error {
	b, err := json.Marshal(h)
	if err != nil {
		return trace.Wrap(err)
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return trace.ConvertSystemError(err)
}

// appendEvent encodes one [time, code, data] line.
func appendEvent(dst []byte, ev event) []byte {
	dst = append(dst, '[')
	dst = strconv.AppendFloat(dst, ev.at.Seconds(), 'f', 6, 64)
	dst = append(dst, `, "`...)
	dst = append(dst, ev.code...)
	dst = append(dst, `", `...)
	dst = appendJSONString(dst, ev.data)
	return append(dst, "]\n"...)
}

// appendJSONString quotes p as a JSON string. Invalid UTF-8 becomes
// U+FFFD, as in every asciicast writer: the format has no way to carry
// raw bytes.
func appendJSONString(dst, p []byte) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(p); {
		c := p[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				dst = append(dst, '\\', c)
			case c == '\n':
				dst = append(dst, '\\', 'n')
			case c == '\r':
				dst = append(dst, '\\', 'r')
			case c == '\t':
				dst = append(dst, '\\', 't')
			case c < 0x20 || c == 0x7f:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				dst = append(dst, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(p[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, `\ufffd`...)
			i++
			continue
		}
		// U+2028 and U+2029 are valid JSON but break JavaScript readers.
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			continue
		}
		dst = append(dst, p[i:i+size]...)
		i += size
	}
	return append(dst, '"')
}
