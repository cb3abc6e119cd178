package benchenv

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// Harness lets a main package use integration/testenv, whose helpers take
// a testing.TB. testenv only calls the methods defined here; the embedded
// nil interface exists to satisfy testing.TB's unexported method, and
// calling anything else would panic, which is what we want to hear about.
type Harness struct {
	testing.TB

	name     string
	mu       sync.Mutex
	cleanups []func()
	tmpRoot  string
	failed   bool
}

// fatalError is how Fatal unwinds to main, which then runs the cleanups
// (database servers outlive us unless their stop runs).
type fatalError struct{ msg string }

// NewHarness makes a harness whose temp dirs live under one dir removed
// by Close. name shows in messages and temp dir names.
func NewHarness(name string) (*Harness, error) {
	dir, err := os.MkdirTemp("", "sigil-"+name+"-")
	if err != nil {
		return nil, err
	}
	h := &Harness{name: name, tmpRoot: dir}
	h.Cleanup(func() { _ = os.RemoveAll(dir) })
	return h, nil
}

// Recover turns a Fatal into exit code 1 with its message on stderr.
// Use it as "defer h.Recover(&code)" after "defer h.Close()", so that the
// cleanups still run; any other panic goes on.
func (h *Harness) Recover(code *int) {
	r := recover()
	if r == nil {
		return
	}
	f, ok := r.(fatalError)
	if !ok {
		panic(r)
	}
	fmt.Fprintf(os.Stderr, "bench/%s: %s\n", h.name, f.msg)
	*code = 1
}

func (h *Harness) Helper()      {}
func (h *Harness) Name() string { return h.name }

func (h *Harness) Cleanup(f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cleanups = append(h.cleanups, f)
}

// Close runs the cleanups, last registered first, as testing does.
func (h *Harness) Close() {
	h.mu.Lock()
	fns := h.cleanups
	h.cleanups = nil
	h.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

func (h *Harness) TempDir() string {
	dir, err := os.MkdirTemp(h.tmpRoot, "t")
	if err != nil {
		h.Fatal(err)
	}
	return dir
}

// WriteFile writes data (mode 0600) to a new temp dir and returns the path.
func (h *Harness) WriteFile(name string, data []byte) string {
	path := filepath.Join(h.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		h.Fatal(err)
	}
	return path
}

func (h *Harness) Log(args ...any)                 { fmt.Fprintln(os.Stderr, args...) }
func (h *Harness) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func (h *Harness) Error(args ...any) {
	h.setFailed()
	h.Log(args...)
}

func (h *Harness) Errorf(format string, args ...any) {
	h.setFailed()
	h.Logf(format, args...)
}

func (h *Harness) Fatal(args ...any) {
	h.setFailed()
	panic(fatalError{fmt.Sprint(args...)})
}

func (h *Harness) Fatalf(format string, args ...any) {
	h.setFailed()
	panic(fatalError{fmt.Sprintf(format, args...)})
}

func (h *Harness) FailNow() { h.Fatal("FailNow") }
func (h *Harness) Fail()    { h.setFailed() }

func (h *Harness) Failed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failed
}

func (h *Harness) setFailed() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failed = true
}
