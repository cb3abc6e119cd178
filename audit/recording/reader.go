package recording

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/gravitational/trace"
)

// MaxLineBytes bounds one line of a recording. The gateway writes one
// event per read of at most 32 KiB, which JSON escaping can grow six-fold.
const MaxLineBytes = 1 << 20

// Event is one recorded event.
type Event struct {
	// Time is seconds since the start of the recording.
	Time float64
	Code string
	Data string
}

// Reader reads a recording event by event.
type Reader struct {
	sc     *bufio.Scanner
	line   int
	Header Header
}

// NewReader reads and checks the header line.
func NewReader(r io.Reader) (*Reader, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), MaxLineBytes)
	rd := &Reader{sc: sc}
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return nil, trace.BadParameter("reading the recording header: %v", err)
		}
		return nil, trace.BadParameter("the recording is empty")
	}
	rd.line = 1
	if err := json.Unmarshal(sc.Bytes(), &rd.Header); err != nil {
		return nil, trace.BadParameter("line 1: not an asciicast header: %v", err)
	}
	if rd.Header.Version != 2 {
		return nil, trace.BadParameter("line 1: asciicast version %d, only version 2 is supported", rd.Header.Version)
	}
	return rd, nil
}

// Next returns the next event, or io.EOF after the last one.
func (r *Reader) Next() (*Event, error) {
	for r.sc.Scan() {
		r.line++
		b := r.sc.Bytes()
		if len(b) == 0 {
			continue
		}
		var parts []json.RawMessage
		if err := json.Unmarshal(b, &parts); err != nil || len(parts) != 3 {
			return nil, trace.BadParameter("line %d: not an asciicast event [time, code, data]", r.line)
		}
		ev := &Event{}
		if err := json.Unmarshal(parts[0], &ev.Time); err != nil || ev.Time < 0 {
			return nil, trace.BadParameter("line %d: bad event time", r.line)
		}
		if err := json.Unmarshal(parts[1], &ev.Code); err != nil {
			return nil, trace.BadParameter("line %d: bad event code", r.line)
		}
		if err := json.Unmarshal(parts[2], &ev.Data); err != nil {
			return nil, trace.BadParameter("line %d: bad event data", r.line)
		}
		return ev, nil
	}
	if err := r.sc.Err(); err != nil {
		return nil, trace.BadParameter("line %d: %v", r.line+1, err)
	}
	return nil, io.EOF
}

// PlayOptions tune Play.
type PlayOptions struct {
	// Speed multiplies the playback speed; 0 means 1. A negative speed
	// writes everything at once.
	Speed float64
	// IdleLimit caps the pause between two events; 0 means no cap.
	IdleLimit time.Duration
	// OnResize, if set, is called for resize events.
	OnResize func(width, height int)
}

// Play writes the output events of a recording to w with their original
// timing (scaled by Speed), until the end or ctx is done.
func Play(ctx context.Context, w io.Writer, r io.Reader, opts PlayOptions) error {
	rd, err := NewReader(r)
	if err != nil {
		return trace.Wrap(err)
	}
	speed := opts.Speed
	if speed == 0 {
		speed = 1
	}
	var last float64
	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	for {
		ev, err := rd.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return trace.Wrap(err)
		}
		if speed > 0 {
			wait := time.Duration((ev.Time - last) / speed * float64(time.Second))
			if opts.IdleLimit > 0 && wait > opts.IdleLimit {
				wait = opts.IdleLimit
			}
			if wait > 0 {
				// Real playback timing, not synchronisation: the pause is
				// what the viewer is meant to see.
				timer.Reset(wait)
				select {
				case <-ctx.Done():
					return trace.Wrap(ctx.Err())
				case <-timer.C:
				}
			}
		}
		if ev.Time > last {
			last = ev.Time
		}
		switch ev.Code {
		case CodeOutput:
			if _, err := io.WriteString(w, ev.Data); err != nil {
				return trace.Wrap(err)
			}
		case CodeResize:
			if opts.OnResize != nil {
				var width, height int
				if _, err := fmt.Sscanf(ev.Data, "%dx%d", &width, &height); err == nil {
					opts.OnResize(width, height)
				}
			}
		}
	}
}
