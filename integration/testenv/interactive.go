package testenv

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Interactive is a CLI run in the background whose stdin the test writes:
// without a terminal, the CLI reads the answers to its prompts (a
// password, a one-time code) from stdin.
type Interactive struct {
	t testing.TB
	// Stdin feeds the process; close it to say there is no more.
	Stdin  io.WriteCloser
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan error
}

// StartInteractive starts one of the binaries with env added to the
// environment; it is killed at the end of the test if still running.
func StartInteractive(t testing.TB, env []string, bin string, args ...string) *Interactive {
	t.Helper()
	cmd := exec.Command(filepath.Join(BinDir(t), bin), args...)
	cmd.Env = append(os.Environ(), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &Interactive{t: t, Stdin: stdin, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = c.stdout, c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s %v: %v", bin, args, err)
	}
	exited := make(chan struct{})
	go func() {
		c.done <- cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	return c
}

// Stdout and Stderr are the output so far.
func (c *Interactive) Stdout() string { return c.stdout.String() }
func (c *Interactive) Stderr() string { return c.stderr.String() }

// Wait returns the exit error once the process ends (at most timeout).
func (c *Interactive) Wait(timeout time.Duration) error {
	c.t.Helper()
	select {
	case err := <-c.done:
		return err
	case <-time.After(timeout):
		c.t.Fatalf("the process did not finish within %s:\nstdout:\n%s\nstderr:\n%s", timeout, c.Stdout(), c.Stderr())
		return nil
	}
}
