package export

import (
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gravitational/trace"
)

// maxCursorBytes bounds what readCursor accepts; a cursor is one decimal
// number.
const maxCursorBytes = 64

// readCursor returns the seq stored at path, or 0 when the file does not
// exist yet. A corrupt file is an error rather than 0 so that a damaged
// cursor never causes a silent full re-delivery.
func readCursor(path string) (uint64, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, trace.ConvertSystemError(err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCursorBytes+1))
	if err != nil {
		return 0, trace.ConvertSystemError(err)
	}
	if len(b) > maxCursorBytes {
		return 0, trace.BadParameter("export cursor %s is too large; delete it to re-deliver from the start", path)
	}
	seq, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, trace.BadParameter("export cursor %s is corrupt (%q); fix or delete it to re-deliver from the start", path, strings.TrimSpace(string(b)))
	}
	return seq, nil
}

// writeCursor stores seq at path atomically: a crash leaves either the old
// or the new value, never a torn one.
func writeCursor(path string, seq uint64) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return trace.ConvertSystemError(err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return trace.ConvertSystemError(err)
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			_ = tmp.Close()
			_ = os.Remove(tmpName)
		}
	}()
	if _, err := tmp.WriteString(strconv.FormatUint(seq, 10) + "\n"); err != nil {
		return trace.ConvertSystemError(err)
	}
	if err := tmp.Sync(); err != nil {
		return trace.ConvertSystemError(err)
	}
	if err := tmp.Close(); err != nil {
		return trace.ConvertSystemError(err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		return trace.ConvertSystemError(err)
	}
	ok = true
	return trace.Wrap(syncDir(dir))
}

// syncDir makes a rename or create in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return trace.ConvertSystemError(err)
	}
	defer d.Close()
	return trace.ConvertSystemError(d.Sync())
}
