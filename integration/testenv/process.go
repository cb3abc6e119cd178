package testenv

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Process is a CLI run in the background, for commands that wait on
// something the test does meanwhile (sigil login --auth waits for the
// browser).
type Process struct {
	t      testing.TB
	cmd    *exec.Cmd
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan struct{}
	cancel context.CancelFunc
	err    error
}

// StartCLI starts one of the binaries with env added to the environment;
// it is killed at the end of the test if still running.
func StartCLI(t testing.TB, env []string, bin string, args ...string) *Process {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	p := &Process{t: t, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{}), cancel: cancel}
	p.cmd = exec.CommandContext(ctx, filepath.Join(BinDir(t), bin), args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting %s %v: %v", bin, args, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.done
	})
	return p
}

// Stdout and Stderr are the output so far.
func (p *Process) Stdout() string { return p.stdout.String() }
func (p *Process) Stderr() string { return p.stderr.String() }

// Wait waits (at most timeout) for the process to exit and returns its
// output and exit code.
func (p *Process) Wait(timeout time.Duration) Result {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.cancel()
		<-p.done
		p.t.Fatalf("%s did not exit within %s\nstdout:\n%s\nstderr:\n%s", p.cmd.Path, timeout, p.Stdout(), p.Stderr())
	}
	res := Result{Stdout: p.Stdout(), Stderr: p.Stderr()}
	if p.err != nil {
		exitErr, ok := p.err.(*exec.ExitError)
		if !ok {
			p.t.Fatalf("running %s: %v", p.cmd.Path, p.err)
		}
		res.ExitCode = exitErr.ExitCode()
	}
	return res
}
