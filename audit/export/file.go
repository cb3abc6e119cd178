package export

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gravitational/trace"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

// File sink defaults.
const (
	DefaultFileMaxBytes = 100 << 20
	DefaultFileMaxFiles = 10
	// rotateStamp names rotated files; it sorts lexically in time order.
	rotateStamp = "20060102T150405.000000000Z"
)

// FileSinkConfig configures a JSON-lines file sink.
//
// Rotation: when appending the next event would take the file past
// MaxBytes, events.jsonl is renamed to events-<UTC time>.jsonl (time
// formatted as 20060102T150405.000000000Z, so names sort oldest first and
// a rotated file never changes name again, which suits log shippers) and
// a new events.jsonl is started. The oldest rotated files are deleted so
// that at most MaxFiles files exist, the active one included.
type FileSinkConfig struct {
	// Name identifies the sink (required in sigil.yaml, unique).
	Name string `yaml:"name"`
	// Path is the active file, e.g. /var/log/sigil/events.jsonl.
	Path string `yaml:"path"`
	// MaxBytes is the size at which the file rotates (default 100 MiB).
	MaxBytes int64 `yaml:"max_bytes"`
	// MaxFiles is how many files to keep, the active one included
	// (default 10).
	MaxFiles int `yaml:"max_files"`
}

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *FileSinkConfig) CheckAndSetDefaults() error {
	return trace.Wrap(c.check(""))
}

func (c *FileSinkConfig) check(prefix string) error {
	if c.Name == "" {
		c.Name = "file"
	}
	if err := checkName(c.Name); err != nil {
		return trace.BadParameter("%sname: %v", prefix, err)
	}
	if c.Path == "" {
		return trace.BadParameter("%spath: required, e.g. /var/log/sigil/events.jsonl", prefix)
	}
	if filepath.Base(c.Path) == "." || strings.HasSuffix(c.Path, string(filepath.Separator)) {
		return trace.BadParameter("%spath: %q must name a file, not a directory", prefix, c.Path)
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultFileMaxBytes
	}
	if c.MaxBytes < 0 {
		return trace.BadParameter("%smax_bytes: must be positive, got %d", prefix, c.MaxBytes)
	}
	if c.MaxFiles == 0 {
		c.MaxFiles = DefaultFileMaxFiles
	}
	if c.MaxFiles < 1 {
		return trace.BadParameter("%smax_files: must be at least 1, got %d", prefix, c.MaxFiles)
	}
	return nil
}

// FileSink appends events as JSON lines to a file, fsyncing each batch.
type FileSink struct {
	cfg FileSinkConfig
	// prefix and ext split the base name: events + .jsonl.
	prefix, ext string

	mu        sync.Mutex
	f         *os.File
	size      int64
	lastStamp time.Time
}

// NewFileSink opens (creating if needed) the active file.
func NewFileSink(cfg FileSinkConfig) (*FileSink, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	base := filepath.Base(cfg.Path)
	ext := filepath.Ext(base)
	s := &FileSink{cfg: cfg, prefix: strings.TrimSuffix(base, ext), ext: ext}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o700); err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	if err := s.open(); err != nil {
		return nil, trace.Wrap(err)
	}
	return s, nil
}

// Name implements Sink.
func (s *FileSink) Name() string { return s.cfg.Name }

// Close closes the active file.
func (s *FileSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return trace.ConvertSystemError(err)
}

func (s *FileSink) open() error {
	f, err := os.OpenFile(s.cfg.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return trace.ConvertSystemError(err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return trace.ConvertSystemError(err)
	}
	s.f, s.size = f, st.Size()
	return nil
}

// segment is where a batch started writing in one file, so a failed batch
// can be cut back out.
type segment struct {
	path string
	off  int64
}

// Write implements Sink. On failure it truncates what this batch wrote,
// so the forwarder's retry does not duplicate lines.
func (s *FileSink) Write(ctx context.Context, batch []*sigilv1.AuditEvent) error {
	lines := make([][]byte, 0, len(batch))
	for _, ev := range batch {
		b, err := marshalLine(ev)
		if err != nil {
			return trace.Wrap(err)
		}
		lines = append(lines, append(b, '\n'))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		if err := s.open(); err != nil {
			return trace.Wrap(err)
		}
	}
	segs := []segment{{path: s.cfg.Path, off: s.size}}
	err := s.writeLines(lines, &segs)
	if err != nil {
		s.undo(segs)
		return trace.Wrap(err, "writing audit export file %s", s.cfg.Path)
	}
	return nil
}

func (s *FileSink) writeLines(lines [][]byte, segs *[]segment) error {
	var buf bytes.Buffer
	flush := func() error {
		if buf.Len() == 0 {
			return nil
		}
		n, err := s.f.Write(buf.Bytes())
		s.size += int64(n)
		buf.Reset()
		return trace.ConvertSystemError(err)
	}
	for _, line := range lines {
		if pending := s.size + int64(buf.Len()); pending > 0 && pending+int64(len(line)) > s.cfg.MaxBytes {
			if err := flush(); err != nil {
				return err
			}
			rotated, err := s.rotate()
			if err != nil {
				return err
			}
			// The earlier part of this batch now lives under the rotated
			// name.
			for i := range *segs {
				if (*segs)[i].path == s.cfg.Path {
					(*segs)[i].path = rotated
				}
			}
			*segs = append(*segs, segment{path: s.cfg.Path, off: 0})
		}
		buf.Write(line)
	}
	if err := flush(); err != nil {
		return err
	}
	return trace.ConvertSystemError(s.f.Sync())
}

// rotate fsyncs and renames the active file, opens a fresh one and prunes
// old files. It returns the rotated file's path.
func (s *FileSink) rotate() (string, error) {
	if err := s.f.Sync(); err != nil {
		return "", trace.ConvertSystemError(err)
	}
	if err := s.f.Close(); err != nil {
		s.f = nil
		return "", trace.ConvertSystemError(err)
	}
	s.f = nil
	stamp := time.Now().UTC()
	// Names must stay unique and ordered even for rotations within one
	// clock tick.
	if !stamp.After(s.lastStamp) {
		stamp = s.lastStamp.Add(time.Nanosecond)
	}
	s.lastStamp = stamp
	dir := filepath.Dir(s.cfg.Path)
	rotated := filepath.Join(dir, s.prefix+"-"+stamp.Format(rotateStamp)+s.ext)
	if err := os.Rename(s.cfg.Path, rotated); err != nil {
		// Reopen so the sink keeps working with the old file.
		_ = s.open()
		return "", trace.ConvertSystemError(err)
	}
	if err := s.open(); err != nil {
		return "", trace.Wrap(err)
	}
	if err := syncDir(dir); err != nil {
		return "", trace.Wrap(err)
	}
	return rotated, trace.Wrap(s.prune())
}

// RotatedFiles lists the rotated files, oldest first.
func (s *FileSink) RotatedFiles() ([]string, error) {
	dir := filepath.Dir(s.cfg.Path)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasPrefix(name, s.prefix+"-") || !strings.HasSuffix(name, s.ext) {
			continue
		}
		stamp := strings.TrimSuffix(strings.TrimPrefix(name, s.prefix+"-"), s.ext)
		if _, err := time.Parse(rotateStamp, stamp); err != nil {
			continue
		}
		out = append(out, filepath.Join(dir, name))
	}
	slices.Sort(out)
	return out, nil
}

func (s *FileSink) prune() error {
	rotated, err := s.RotatedFiles()
	if err != nil {
		return trace.Wrap(err)
	}
	keep := s.cfg.MaxFiles - 1 // the active file counts
	for len(rotated) > keep {
		if err := os.Remove(rotated[0]); err != nil && !os.IsNotExist(err) {
			return trace.ConvertSystemError(err)
		}
		rotated = rotated[1:]
	}
	return nil
}

// undo cuts a failed batch back out of every file it touched (best
// effort: the write already failed, so this may fail too).
func (s *FileSink) undo(segs []segment) {
	for _, sg := range segs {
		_ = os.Truncate(sg.path, sg.off)
	}
	if s.f != nil {
		if st, err := s.f.Stat(); err == nil {
			s.size = st.Size()
		}
	}
}
