package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigilhq/sigil/api/client"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// BinDir returns a directory holding sigild, sigilctl and sigil: the one
// in $SIGIL_BIN_DIR (make test builds them first), or a fresh build.
func BinDir(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		if dir := os.Getenv("SIGIL_BIN_DIR"); dir != "" {
			binDir = dir
			for _, b := range []string{"sigild", "sigilctl", "sigil"} {
				if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
					buildErr = fmt.Errorf("SIGIL_BIN_DIR=%s has no %s (run make build): %w", dir, b, err)
					return
				}
			}
			return
		}
		dir, err := os.MkdirTemp("", "sigil-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binDir = dir
		cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/sigilhq/sigil/tools/sigild", "github.com/sigilhq/sigil/tools/sigilctl", "github.com/sigilhq/sigil/tools/sigil")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building the binaries: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// syncBuffer collects a process's output for concurrent reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Daemon is a running sigild.
type Daemon struct {
	t       testing.TB
	DataDir string
	Addr    string
	// MySQLAddr is the MySQL listener (sigild prints it at start).
	MySQLAddr string
	// ConfigPath is the sigil.yaml passed with --config ("" for none).
	ConfigPath string
	cmd        *exec.Cmd
	stdout     *syncBuffer
	stderr     *syncBuffer
	done       chan struct{}
}

// StartDaemon starts sigild on a free loopback port with dataDir (a new
// temp dir when empty) and waits until it serves.
func StartDaemon(t testing.TB, dataDir string) *Daemon {
	t.Helper()
	return startDaemon(t, dataDir, "")
}

// StartDaemonWithConfig is StartDaemon with yamlText written to a
// sigil.yaml in a new temp dir and passed as --config. The --data-dir and
// --listen flags StartDaemon sets win over data_dir and listen in the file.
// To restart with the same config, pass the same text again.
func StartDaemonWithConfig(t testing.TB, dataDir, yamlText string) *Daemon {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sigil.yaml")
	if err := os.WriteFile(path, []byte(yamlText), 0o600); err != nil {
		t.Fatal(err)
	}
	return startDaemon(t, dataDir, path)
}

func startDaemon(t testing.TB, dataDir, configPath string) *Daemon {
	t.Helper()
	if dataDir == "" {
		dataDir = filepath.Join(t.TempDir(), "data")
	}
	d := &Daemon{t: t, DataDir: dataDir, ConfigPath: configPath, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	// A previous run's proxy file must not be mistaken for this one's.
	_ = os.Remove(filepath.Join(dataDir, "admin", "proxy"))
	args := []string{"start", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--mysql-listen", "127.0.0.1:0"}
	if configPath != "" {
		args = append(args, "--config", configPath)
	}
	d.cmd = exec.Command(filepath.Join(BinDir(t), "sigild"), args...)
	d.cmd.Stdout = d.stdout
	d.cmd.Stderr = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("starting sigild: %v", err)
	}
	go func() {
		_ = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(d.Stop)
	Eventually(t, 30*time.Second, func() error {
		select {
		case <-d.done:
			return Fatal(fmt.Errorf("sigild exited early:\nstdout:\n%s\nstderr:\n%s", d.stdout, d.stderr))
		default:
		}
		if !strings.Contains(d.stdout.String(), "Sigil gateway listening on ") {
			return fmt.Errorf("sigild not ready yet")
		}
		return nil
	})
	m := regexp.MustCompile(`Sigil gateway listening on (\S+)`).FindStringSubmatch(d.stdout.String())
	d.Addr = m[1]
	if m := regexp.MustCompile(`MySQL listener on (\S+)`).FindStringSubmatch(d.stdout.String()); m != nil {
		d.MySQLAddr = m[1]
	}
	return d
}

// Stdout is what sigild printed so far.
func (d *Daemon) Stdout() string { return d.stdout.String() }

// Stderr is sigild's log so far.
func (d *Daemon) Stderr() string { return d.stderr.String() }

// Stop ends sigild (SIGTERM, then SIGKILL after 10 s).
func (d *Daemon) Stop() {
	select {
	case <-d.done:
		return
	default:
	}
	_ = d.cmd.Process.Signal(os.Interrupt)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

// Kill ends sigild with SIGKILL, as a crash would, and waits for it.
func (d *Daemon) Kill() {
	select {
	case <-d.done:
		return
	default:
	}
	_ = d.cmd.Process.Kill()
	<-d.done
}

// AdminClient returns an API client acting as the daemon's local admin
// identity (what sigilctl --data-dir uses).
func (d *Daemon) AdminClient(t testing.TB) *client.Client {
	t.Helper()
	id, err := client.LoadIdentityDir(filepath.Join(d.DataDir, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	clt, err := client.NewFromIdentity(id, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(clt.Close)
	return clt
}

// Result is the outcome of a CLI run.
type Result struct {
	Stdout, Stderr string
	ExitCode       int
}

// Run executes one of the binaries with env added to the environment and
// stdin fed from input.
func Run(t testing.TB, env []string, input string, bin string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(BinDir(t), bin), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(input)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	if err != nil {
		exitErr, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running %s %v: %v", bin, args, err)
		}
		res.ExitCode = exitErr.ExitCode()
	}
	return res
}

// fatalErr stops Eventually at once.
type fatalErr struct{ error }

// Fatal wraps an error so that Eventually gives up immediately.
func Fatal(err error) error { return fatalErr{err} }

// Eventually polls fn until it returns nil or the deadline passes.
func Eventually(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := 10 * time.Millisecond
	for {
		err := fn()
		if err == nil {
			return
		}
		if f, ok := err.(fatalErr); ok {
			t.Fatal(f.error)
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(wait)
		if wait < 200*time.Millisecond {
			wait *= 2
		}
	}
}
