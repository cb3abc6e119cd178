package testenv

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// SSHDConfig describes a throwaway OpenSSH server that trusts Sigil.
type SSHDConfig struct {
	// HostKeyDir holds ssh_host_ed25519_key, ssh_host_ed25519_key-cert.pub
	// and sigil_user_ca.pub, as written by
	// `sigilctl auth sign --format openssh --host NODE --out DIR`.
	HostKeyDir string
	// UserCAFile overrides HostKeyDir/sigil_user_ca.pub for
	// TrustedUserCAKeys.
	UserCAFile string
	// Extra is appended to sshd_config.
	Extra string
}

// SSHD is a running sshd on a loopback port.
type SSHD struct {
	// Addr is 127.0.0.1:Port.
	Addr string
	Port int
	// Dir holds the config, keys and log; removed on cleanup.
	Dir     string
	LogFile string

	cmd  *exec.Cmd
	done chan struct{}
}

// SSHDPath finds sshd (Debian package openssh-server).
func SSHDPath() (string, error) {
	for _, p := range []string{"/usr/sbin/sshd", "/usr/local/sbin/sshd"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("sshd"); err == nil {
		return p, nil
	}
	return "", errors.New("sshd not found: install the Debian package openssh-server (apt-get install -y openssh-server), or run `make test-deps` as root")
}

var loginMu sync.Mutex

// EnsureLogin creates the local account name (with a home and /bin/sh) if
// it is missing and unlocks it: without PAM, OpenSSH refuses accounts
// whose password field is locked ("!"), which is how useradd leaves them.
// Creating accounts needs root.
func EnsureLogin(t testing.TB, name string) {
	t.Helper()
	loginMu.Lock()
	defer loginMu.Unlock()
	if os.Geteuid() != 0 {
		t.Fatalf("the SSH tests create local logins and run sshd, which needs root (run them as root, e.g. in the test container)")
	}
	if _, err := user.Lookup(name); err != nil {
		if out, err := exec.Command("useradd", "--create-home", "--shell", "/bin/sh", name).CombinedOutput(); err != nil {
			t.Fatalf("useradd %s: %v\n%s", name, err, out)
		}
	}
	if out, err := exec.Command("usermod", "-p", "*", name).CombinedOutput(); err != nil {
		t.Fatalf("usermod -p '*' %s: %v\n%s", name, err, out)
	}
}

// StartSSHD starts sshd as root in a temp dir on a free loopback port,
// with public key authentication by certificates from the user CA only
// (no authorized_keys, no passwords, no PAM), and stops it when the test
// ends.
func StartSSHD(t testing.TB, cfg SSHDConfig) *SSHD {
	t.Helper()
	bin, err := SSHDPath()
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		t.Fatalf("sshd must run as root to switch to the test logins (run the SSH tests as root)")
	}
	// sshd's privilege separation directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "sigil-sshd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	s := &SSHD{Dir: dir, LogFile: filepath.Join(dir, "sshd.log"), done: make(chan struct{})}
	copyFile := func(src, name string, mode os.FileMode) string {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatalf("reading %s: %v", src, err)
		}
		dst := filepath.Join(dir, name)
		if err := os.WriteFile(dst, data, mode); err != nil {
			t.Fatal(err)
		}
		// sshd refuses host keys readable by others; the umask may have
		// widened nothing, but be exact.
		if err := os.Chmod(dst, mode); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	hostKey := copyFile(filepath.Join(cfg.HostKeyDir, "ssh_host_ed25519_key"), "ssh_host_ed25519_key", 0o600)
	hostCert := copyFile(filepath.Join(cfg.HostKeyDir, "ssh_host_ed25519_key-cert.pub"), "ssh_host_ed25519_key-cert.pub", 0o644)
	caSrc := cfg.UserCAFile
	if caSrc == "" {
		caSrc = filepath.Join(cfg.HostKeyDir, "sigil_user_ca.pub")
	}
	userCA := copyFile(caSrc, "user_ca.pub", 0o644)

	const attempts = 5
	for i := 0; ; i++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		conf := fmt.Sprintf(`# Sigil integration tests
Port %d
ListenAddress 127.0.0.1
HostKey %s
HostCertificate %s
TrustedUserCAKeys %s
AuthorizedKeysFile none
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin no
AllowTcpForwarding yes
AllowAgentForwarding yes
X11Forwarding no
PrintMotd no
AcceptEnv LANG LC_*
PidFile %s
Subsystem sftp internal-sftp
LogLevel VERBOSE
MaxStartups 100
%s
`, port, hostKey, hostCert, userCA, filepath.Join(dir, "sshd.pid"), cfg.Extra)
		confPath := filepath.Join(dir, "sshd_config")
		if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "-t", "-f", confPath).CombinedOutput(); err != nil {
			t.Fatalf("sshd -t rejects the config: %v\n%s\n%s", err, out, conf)
		}
		logf, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		// -D: stay in the foreground; -e: log to stderr (our log file).
		cmd := exec.Command(bin, "-f", confPath, "-D", "-e")
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("starting sshd: %v", err)
		}
		logf.Close()
		done := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(done)
		}()
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if err := waitSSHBanner(addr, done, 15*time.Second); err != nil {
			_ = cmd.Process.Kill()
			<-done
			log := s.Log(t)
			if i+1 < attempts && strings.Contains(log, "Address already in use") {
				continue
			}
			t.Fatalf("sshd did not come up on %s: %v\nlog:\n%s", addr, err, log)
		}
		s.cmd, s.done, s.Addr, s.Port = cmd, done, addr, port
		t.Cleanup(s.Stop)
		return s
	}
}

// waitSSHBanner polls addr until it answers with an SSH banner.
func waitSSHBanner(addr string, exited <-chan struct{}, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	wait := 10 * time.Millisecond
	for {
		select {
		case <-exited:
			return errors.New("sshd exited")
		default:
		}
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
			line, rerr := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if rerr == nil && strings.HasPrefix(line, "SSH-2.0-") {
				return nil
			}
			err = fmt.Errorf("no SSH banner (%q, %v)", line, rerr)
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(wait)
		if wait < 200*time.Millisecond {
			wait *= 2
		}
	}
}

// Stop ends sshd.
func (s *SSHD) Stop() {
	if s.cmd == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Log returns sshd's log so far.
func (s *SSHD) Log(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(s.LogFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return string(b)
}

// RunSSHClient runs a stock SSH client tool (ssh, scp, sftp, rsync) with env
// added to the environment and stdin from input, bounded by timeout.
func RunSSHClient(t testing.TB, env []string, input string, timeout time.Duration, tool string, args ...string) Result {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		pkg := "openssh-client"
		if tool == "rsync" {
			pkg = "rsync"
		}
		t.Fatalf("%s not found: install the Debian package %s (make test-deps does as root)", tool, pkg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(input)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	if err != nil {
		exitErr, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running %s %v: %v", tool, args, err)
		}
		res.ExitCode = exitErr.ExitCode()
	}
	return res
}
