package main

import (
	"fmt"
	"os"
	"sync"
	"testing"
)

// harness lets a main package use integration/testenv, whose helpers take
// a testing.TB. testenv only calls the methods defined here; the embedded
// nil interface exists to satisfy testing.TB's unexported method, and
// calling anything else would panic, which is what we want to hear about.
type harness struct {
	testing.TB

	mu       sync.Mutex
	cleanups []func()
	tmpRoot  string
	failed   bool
}

// fatalError is how Fatal unwinds to main, which then runs the cleanups
// (PostgreSQL outlives us unless pg_ctl stop runs).
type fatalError struct{ msg string }

func newHarness() (*harness, error) {
	dir, err := os.MkdirTemp("", "sigil-pgbench-")
	if err != nil {
		return nil, err
	}
	h := &harness{tmpRoot: dir}
	h.Cleanup(func() { _ = os.RemoveAll(dir) })
	return h, nil
}

func (h *harness) Helper()      {}
func (h *harness) Name() string { return "pgbench" }

func (h *harness) Cleanup(f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.cleanups = append(h.cleanups, f)
}

// close runs the cleanups, last registered first, as testing does.
func (h *harness) close() {
	h.mu.Lock()
	fns := h.cleanups
	h.cleanups = nil
	h.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

func (h *harness) TempDir() string {
	dir, err := os.MkdirTemp(h.tmpRoot, "t")
	if err != nil {
		h.Fatal(err)
	}
	return dir
}

func (h *harness) Log(args ...any)                 { fmt.Fprintln(os.Stderr, args...) }
func (h *harness) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func (h *harness) Error(args ...any) {
	h.setFailed()
	h.Log(args...)
}

func (h *harness) Errorf(format string, args ...any) {
	h.setFailed()
	h.Logf(format, args...)
}

func (h *harness) Fatal(args ...any) {
	h.setFailed()
	panic(fatalError{fmt.Sprint(args...)})
}

func (h *harness) Fatalf(format string, args ...any) {
	h.setFailed()
	panic(fatalError{fmt.Sprintf(format, args...)})
}

func (h *harness) FailNow() { h.Fatal("FailNow") }
func (h *harness) Fail()    { h.setFailed() }

func (h *harness) Failed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.failed
}

func (h *harness) setFailed() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failed = true
}
