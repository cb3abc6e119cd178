package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/gravitational/trace"
	"golang.org/x/term"
)

// maxSecretSize bounds a password read from stdin or a terminal.
const maxSecretSize = 4096

// terminal is where interactive prompts go: the user's TTY in production,
// a scripted fake in tests.
type terminal interface {
	// ReadPassword shows prompt and reads one line without echo.
	ReadPassword(prompt string) (string, error)
	// ReadLine shows prompt and reads one echoed line.
	ReadLine(prompt string) (string, error)
	Close() error
}

// errNoTerminal tells a caller that nobody can be asked.
var errNoTerminal = trace.NotFound("no terminal available")

// ttyTerminal talks to /dev/tty so prompts work even when stdin carries a
// password (--password-stdin) or is redirected.
type ttyTerminal struct {
	f *os.File
	r *bufio.Reader
}

func openTTY() (terminal, error) {
	f, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, trace.Wrap(errNoTerminal)
	}
	if !term.IsTerminal(int(f.Fd())) {
		f.Close()
		return nil, trace.Wrap(errNoTerminal)
	}
	return &ttyTerminal{f: f, r: bufio.NewReaderSize(f, maxSecretSize)}, nil
}

func (t *ttyTerminal) ReadPassword(prompt string) (string, error) {
	fmt.Fprint(t.f, prompt)
	b, err := term.ReadPassword(int(t.f.Fd()))
	fmt.Fprintln(t.f)
	if err != nil {
		return "", trace.Wrap(err, "reading password from the terminal")
	}
	if len(b) > maxSecretSize {
		return "", trace.LimitExceeded("password longer than %d bytes", maxSecretSize)
	}
	return string(b), nil
}

func (t *ttyTerminal) ReadLine(prompt string) (string, error) {
	fmt.Fprint(t.f, prompt)
	return readLine(t.r)
}

func (t *ttyTerminal) Close() error { return t.f.Close() }

// readLine reads one line (without its line ending) of bounded length.
func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return "", trace.LimitExceeded("input line too long")
	}
	if err != nil && !(err == io.EOF && len(line) > 0) {
		if err == io.EOF {
			return "", trace.BadParameter("no answer (end of input)")
		}
		return "", trace.Wrap(err)
	}
	return strings.TrimRight(string(line), "\r\n"), nil
}

// readPasswordStdin reads the whole of stdin as the password, minus one
// trailing newline, so `echo pw | sigil login --password-stdin` and files
// without a final newline both work.
func readPasswordStdin(r io.Reader) (string, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxSecretSize+1))
	if err != nil {
		return "", trace.Wrap(err, "reading the password from stdin")
	}
	if len(data) > maxSecretSize {
		return "", trace.LimitExceeded("password on stdin is longer than %d bytes", maxSecretSize)
	}
	data = bytes.TrimSuffix(data, []byte("\n"))
	data = bytes.TrimSuffix(data, []byte("\r"))
	if len(data) == 0 {
		return "", trace.BadParameter("--password-stdin was given but stdin is empty")
	}
	return string(data), nil
}
