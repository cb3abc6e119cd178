package client

import (
	"bufio"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/gravitational/trace"
)

// KnownCAsFile is the name, under $SIGIL_HOME, of the pinned gateway CAs.
const KnownCAsFile = "known_cas"

// KnownCAs is the list of gateway CA fingerprints a user has trusted, one
// "host:port sha256:..." line per gateway. It plays the role of ssh's
// known_hosts: a changed CA for a known gateway is refused.
type KnownCAs struct {
	// Path is the file; it need not exist yet.
	Path string
}

// NewKnownCAs returns the known CAs stored under home.
func NewKnownCAs(home string) *KnownCAs {
	return &KnownCAs{Path: filepath.Join(home, KnownCAsFile)}
}

type knownCA struct{ addr, fp string }

func (k *KnownCAs) read() ([]knownCA, error) {
	data, err := readFileLimited(k.Path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, trace.Wrap(err, "reading %s", k.Path)
	}
	var out []knownCA
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, trace.BadParameter("malformed line in %s: %q (want \"HOST:PORT sha256:...\")", k.Path, line)
		}
		out = append(out, knownCA{addr: fields[0], fp: fields[1]})
	}
	if err := sc.Err(); err != nil {
		return nil, trace.Wrap(err)
	}
	return out, nil
}

// Lookup returns the pinned fingerprint of addr, and false if addr is not
// known.
func (k *KnownCAs) Lookup(addr string) (string, bool, error) {
	entries, err := k.read()
	if err != nil {
		return "", false, trace.Wrap(err)
	}
	for _, e := range entries {
		if e.addr == addr {
			return e.fp, true, nil
		}
	}
	return "", false, nil
}

// Add pins fp for addr, replacing a previous pin of addr.
func (k *KnownCAs) Add(addr, fp string) error {
	if addr == "" || strings.ContainsAny(addr, " \t\n") {
		return trace.BadParameter("invalid gateway address %q", addr)
	}
	if !strings.HasPrefix(fp, "sha256:") || strings.ContainsAny(fp, " \t\n") {
		return trace.BadParameter("invalid CA fingerprint %q (want sha256:AB:CD:...)", fp)
	}
	entries, err := k.read()
	if err != nil {
		return trace.Wrap(err)
	}
	var b strings.Builder
	replaced := false
	for _, e := range entries {
		if e.addr == addr {
			if replaced {
				continue
			}
			e.fp = fp
			replaced = true
		}
		b.WriteString(e.addr + " " + e.fp + "\n")
	}
	if !replaced {
		b.WriteString(addr + " " + fp + "\n")
	}
	if err := os.MkdirAll(filepath.Dir(k.Path), 0o700); err != nil {
		return trace.ConvertSystemError(err)
	}
	return trace.Wrap(WriteFileAtomic(k.Path, []byte(b.String()), 0o600))
}
