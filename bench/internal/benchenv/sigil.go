package benchenv

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/integration/testenv"
)

// Sigil is a running sigild and the files a client needs to reach it.
type Sigil struct {
	H      *Harness
	Daemon *testenv.Daemon
	// TLSCA is the path of the daemon's TLS CA (PEM).
	TLSCA string

	mu         sync.Mutex
	tunnelPIDs []int
}

// StartSigil starts sigild (query audit on, as by default).
func StartSigil(h *Harness) *Sigil {
	s := &Sigil{H: h, Daemon: testenv.StartDaemon(h, "")}
	s.TLSCA = h.WriteFile("tls-ca.pem", []byte(s.Ctl("auth", "export", "--type", "tls-ca")))
	return s
}

// Ctl runs sigilctl against the daemon's data dir and returns stdout.
func (s *Sigil) Ctl(args ...string) string {
	r := testenv.Run(s.H, nil, "", "sigilctl", append([]string{"--data-dir", s.Daemon.DataDir}, args...)...)
	if r.ExitCode != 0 {
		s.H.Fatalf("sigilctl %v: exit %d\n%s%s", args, r.ExitCode, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// ServerCert is a database server's certificate from the DB CA.
type ServerCert struct {
	CertPEM, KeyPEM []byte
	// CAPEM is the DB CA, which the server trusts for client certificates.
	CAPEM []byte
}

// SignServerCert runs "sigilctl auth sign --format FORMAT" for localhost
// and 127.0.0.1.
func (s *Sigil) SignServerCert(format string) ServerCert {
	dir := s.H.TempDir()
	s.Ctl("auth", "sign", "--format", format, "--host", "localhost,127.0.0.1", "--out", dir)
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			s.H.Fatal(err)
		}
		return b
	}
	return ServerCert{CertPEM: read("server.crt"), KeyPEM: read("server.key"), CAPEM: read("ca.crt")}
}

// SignUp creates the Sigil user with roles (comma-separated) and logs it
// in; it returns its SIGIL_HOME.
func (s *Sigil) SignUp(user, password, roles string) string {
	var signup struct{ Token string }
	out := s.Ctl("users", "add", user, "--roles", roles, "--format", "json")
	if err := json.Unmarshal([]byte(out), &signup); err != nil {
		s.H.Fatalf("users add output: %v\n%s", err, out)
	}
	home := s.H.TempDir()
	for _, args := range [][]string{
		{"signup", signup.Token, "--proxy", s.Daemon.Addr, "--ca-file", s.TLSCA, "--password-stdin"},
		{"login", "--proxy", s.Daemon.Addr, "--user", user, "--ca-file", s.TLSCA, "--password-stdin"},
	} {
		if r := testenv.Run(s.H, []string{"SIGIL_HOME=" + home}, password+"\n", "sigil", args...); r.ExitCode != 0 {
			s.H.Fatalf("sigil %s: %s", args[0], r.Stderr)
		}
	}
	return home
}

// DBCert issues a routed database certificate for the user logged in at
// home, as "sigil db login" does; all PEM.
func (s *Sigil) DBCert(ctx context.Context, home, database, dbUser, dbName string) (certPEM, keyPEM, caPEM []byte) {
	c, err := testenv.IssueDBCert(ctx, home, database, dbUser, dbName, 0)
	if err != nil {
		s.H.Fatalf("GenerateDatabaseCert: %v", err)
	}
	return c.CertPEM, c.KeyPEM, c.CAPEM
}

// StartTunnel runs "sigil proxy db DATABASE --tunnel" until the harness
// closes and returns the local address it listens on.
func (s *Sigil) StartTunnel(ctx context.Context, home, database, dbUser, dbName string) string {
	ctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(ctx, filepath.Join(testenv.BinDir(s.H), "sigil"), "proxy", "db", database, "--tunnel",
		"--db-user", dbUser, "--db-name", dbName)
	cmd.Env = append(os.Environ(), "SIGIL_HOME="+home)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		s.H.Fatal(err)
	}
	var stderr LockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		s.H.Fatal(err)
	}
	s.mu.Lock()
	s.tunnelPIDs = append(s.tunnelPIDs, cmd.Process.Pid)
	s.mu.Unlock()
	s.H.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if _, after, ok := strings.Cut(sc.Text(), "listening on "); ok {
				select {
				case addrCh <- strings.TrimSpace(after):
				default:
				}
			}
		}
	}()
	select {
	case addr := <-addrCh:
		return addr
	case <-time.After(30 * time.Second):
		s.H.Fatalf("the tunnel did not start:\n%s", stderr.String())
	}
	return ""
}

// CountQueryEvents counts the db.query audit events of a Sigil user in
// the last hour, up to 1000: enough to tell that query audit was on.
func (s *Sigil) CountQueryEvents(user string) int {
	out := s.Ctl("audit", "search", "--type", audit.EventDBQuery, "--user", user, "--since", "1h", "--limit", "1000", "--format", "json")
	var raw []json.RawMessage
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		s.H.Fatalf("audit search output: %v\n%s", err, Tail(out, 2000))
	}
	return len(raw)
}

// DaemonPID finds sigild's process id (for perf) by its data dir, which
// is unique to this run; 0 when not found.
func (s *Sigil) DaemonPID() int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != "sigild" || !strings.Contains(string(b), "\x00"+s.Daemon.DataDir+"\x00") {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err == nil {
			return pid
		}
	}
	return 0
}

// StartPerf runs "perf record -g" on sigild for dur after delay, writing
// out, in the background; the returned func waits for it to finish.
func (s *Sigil) StartPerf(ctx context.Context, out string, delay, dur time.Duration) func() {
	pid := s.DaemonPID()
	if pid == 0 {
		s.H.Fatalf("sigild's pid not found for perf")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return
		}
		secs := strconv.Itoa(max(1, int(dur/time.Second)))
		cmd := exec.CommandContext(ctx, "perf", "record", "-F", "999", "-g", "-p", strconv.Itoa(pid), "-o", out, "--", "sleep", secs)
		if b, err := cmd.CombinedOutput(); err != nil {
			s.H.Logf("perf record: %v\n%s", err, b)
			return
		}
		s.H.Logf("perf record of sigild (pid %d, %ss) in %s", pid, secs, out)
	}()
	return func() { <-done }
}

// CPU is the CPU time (user + system) sigild and the tunnels started by
// StartTunnel have used so far; a leg's share is the difference across it.
func (s *Sigil) CPU() time.Duration {
	s.mu.Lock()
	pids := append([]int{s.DaemonPID()}, s.tunnelPIDs...)
	s.mu.Unlock()
	var total time.Duration
	for _, pid := range pids {
		total += ProcCPU(pid)
	}
	return total
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

// ProcCPU is the user + system CPU time of process pid from
// /proc/PID/stat; 0 when the process is gone or pid is 0.
func ProcCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces: fields count from the
	// last ')'. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(utime+stime) * time.Second / clockTicks
}

// DirectClientCert makes a throwaway CA and a client certificate with
// common name cn signed by it; all PEM. The direct leg needs a client
// certificate the server accepts, and the DB CA's key stays inside
// sigild, so the server trusts this CA next to the DB CA. Same key type
// (P-256) as the gateway's upstream leg, so the handshake costs match.
func DirectClientCert(h *Harness, cn string) (caPEM, certPEM, keyPEM []byte) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		h.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sigil bench direct CA"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		h.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		h.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		h.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		h.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		h.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}
