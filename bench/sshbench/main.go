package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sigilhq/sigil/api/client"
	"github.com/sigilhq/sigil/bench/internal/benchenv"
	"github.com/sigilhq/sigil/integration/testenv"
)

const (
	benchUser     = "bench"
	benchPassword = "correct horse battery staple"
	benchLogin    = "sigilbench"
	// targetRatio is the goal for scp through the gateway.
	targetRatio = 0.9
)

// Legs, in report order.
const (
	legDirect  = "direct"
	legGateway = "gateway"
	legProxy   = "proxycommand"
)

var legs = []string{legDirect, legGateway, legProxy}

var legDescription = map[string]string{
	legDirect:  "stock scp/ssh straight to sshd with the user's Sigil certificate",
	legGateway: "stock scp/ssh to the gateway port as `LOGIN@node1` (one SSH layer, re-encrypted at the gateway)",
	legProxy:   "stock scp/ssh with `ProxyCommand sigil proxy ssh` from `sigil config ssh` (SSH inside TLS to the gateway)",
}

type options struct {
	sizeMB int
	opens  int
	rounds int
	outDir string
}

func main() { os.Exit(run()) }

func run() (code int) {
	var o options
	flag.IntVar(&o.sizeMB, "size", 1024, "size of the copied file in MiB")
	flag.IntVar(&o.opens, "opens", 30, "sessions opened (ssh NODE true) per leg and round")
	flag.IntVar(&o.rounds, "rounds", 1, "times to repeat the interleaved direct/gateway/proxycommand legs")
	flag.StringVar(&o.outDir, "out", "bench/results", "directory for ssh-<date>-<HHMM>.md (empty: stdout only)")
	flag.Parse()
	if o.sizeMB < 1 || o.opens < 1 || o.rounds < 1 {
		fmt.Fprintln(os.Stderr, "size, opens and rounds must be at least 1")
		return 2
	}
	h, err := benchenv.NewHarness("sshbench")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer h.Close()
	defer h.Recover(&code)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	rep := &report{opts: o, date: start, loadBefore: benchenv.LoadAvg(), copy: map[string]*benchenv.Agg{}, open: map[string]*benchenv.Agg{}}
	e := setUp(h)
	rep.sshVersion = e.sshVersion()

	src := filepath.Join(h.TempDir(), "payload.bin")
	writeRandomFile(h, src, int64(o.sizeMB)<<20)
	dst, err := os.MkdirTemp("", "sigil-sshbench-")
	if err != nil {
		h.Fatal(err)
	}
	h.Cleanup(func() { _ = os.RemoveAll(dst) })
	if err := os.Chmod(dst, 0o777); err != nil {
		h.Fatal(err)
	}
	for round := 0; round < o.rounds; round++ {
		for _, leg := range legs {
			if ctx.Err() != nil {
				h.Fatal("interrupted")
			}
			h.Logf("round %d: %s scp %d MiB", round+1, leg, o.sizeMB)
			cpu0 := e.sigil.CPU()
			began := time.Now()
			e.run(ctx, leg, "scp", "-q", src, e.remote(leg, dst+"/"+leg+".bin"))
			took := time.Since(began)
			cpu := e.sigil.CPU() - cpu0
			_ = os.Remove(filepath.Join(dst, leg+".bin"))
			a := agg(rep.copy, leg)
			a.Add(float64(o.sizeMB)/took.Seconds(), 0, nil, benchenv.LoadAvg())
			if leg != legDirect {
				a.AddCPU(cpu, float64(o.sizeMB))
			}

			h.Logf("round %d: %s %d × ssh NODE true", round+1, leg, o.opens)
			lat := make([]int64, 0, o.opens)
			cpu0 = e.sigil.CPU()
			for range o.opens {
				t0 := time.Now()
				e.run(ctx, leg, "ssh", e.target(leg), "true")
				lat = append(lat, time.Since(t0).Microseconds())
			}
			cpu = e.sigil.CPU() - cpu0
			a = agg(rep.open, leg)
			a.Add(0, 0, lat, benchenv.LoadAvg())
			if leg != legDirect {
				a.AddCPU(cpu, float64(o.opens))
			}
		}
	}
	rep.loadAfter = benchenv.LoadAvg()
	md := rep.markdown()
	fmt.Print(md)
	if o.outDir != "" {
		path, err := benchenv.WriteReport(o.outDir, "ssh-"+start.UTC().Format("2006-01-02-1504")+".md", md)
		if err != nil {
			h.Fatal(err)
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", path)
	}
	return 0
}

func agg(m map[string]*benchenv.Agg, leg string) *benchenv.Agg {
	if m[leg] == nil {
		m[leg] = &benchenv.Agg{}
	}
	return m[leg]
}

func writeRandomFile(h *benchenv.Harness, path string, size int64) {
	f, err := os.Create(path)
	if err != nil {
		h.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		h.Fatal(err)
	}
}

// env is a sigild with node1 (a local sshd) registered and a logged-in
// user allowed benchLogin there.
type env struct {
	h     *benchenv.Harness
	sigil *benchenv.Sigil
	sshd  *testenv.SSHD
	home  string
	// sshDir holds the user's SSH key, certificate and known_hosts.
	sshDir string
	config string
	gwHost string
	gwPort string
}

const benchRole = `kind: role
version: v1
metadata: {name: ssh-bench}
spec:
  allow:
    logins: ["{{internal.logins}}"]
    nodes: {labels: {env: [bench]}}
`

func setUp(h *benchenv.Harness) *env {
	s := benchenv.StartSigil(h)
	e := &env{h: h, sigil: s}
	testenv.EnsureLogin(h, benchLogin)
	hostDir := h.TempDir()
	s.Ctl("auth", "sign", "--format", "openssh", "--host", "node1,127.0.0.1", "--out", hostDir)
	e.sshd = testenv.StartSSHD(h, testenv.SSHDConfig{HostKeyDir: hostDir, Extra: "LogLevel ERROR\n"})
	s.Ctl("nodes", "add", "node1", "--addr", e.sshd.Addr, "--labels", "env=bench")
	s.Ctl("create", "-f", h.WriteFile("role.yaml", []byte(benchRole)))
	e.home = signUp(s, benchUser, "ssh-bench", "logins="+benchLogin)
	r := testenv.Run(h, []string{"SIGIL_HOME=" + e.home}, "", "sigil", "config", "ssh")
	if r.ExitCode != 0 {
		h.Fatalf("sigil config ssh: %s", r.Stderr)
	}
	e.config = h.WriteFile("ssh_config", []byte(r.Stdout))
	e.sshDir = filepath.Join(client.ProfileDir(e.home, s.Daemon.Addr), "ssh")
	e.gwHost, e.gwPort, _ = strings.Cut(s.Daemon.Addr, ":")
	return e
}

// signUp is benchenv.SignUp with traits: it creates the user, completes
// the signup and logs in; it returns the SIGIL_HOME.
func signUp(s *benchenv.Sigil, user, roles, traits string) string {
	h := s.H
	var signup struct{ Token string }
	out := s.Ctl("users", "add", user, "--roles", roles, "--traits", traits, "--format", "json")
	if err := json.Unmarshal([]byte(out), &signup); err != nil {
		h.Fatalf("users add output: %v\n%s", err, out)
	}
	home := h.TempDir()
	for _, args := range [][]string{
		{"signup", signup.Token, "--proxy", s.Daemon.Addr, "--ca-file", s.TLSCA, "--password-stdin"},
		{"login", "--proxy", s.Daemon.Addr, "--user", user, "--ca-file", s.TLSCA, "--password-stdin"},
	} {
		if r := testenv.Run(h, []string{"SIGIL_HOME=" + home}, benchPassword+"\n", "sigil", args...); r.ExitCode != 0 {
			h.Fatalf("sigil %s: %s", args[0], r.Stderr)
		}
	}
	return home
}

// args are the client options of a leg (before the destination).
func (e *env) args(leg, tool string) []string {
	portFlag := "-p"
	if tool == "scp" {
		portFlag = "-P"
	}
	id := []string{"-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
		"-o", "IdentityFile=" + filepath.Join(e.sshDir, "id_ed25519"),
		"-o", "CertificateFile=" + filepath.Join(e.sshDir, "id_ed25519-cert.pub")}
	switch leg {
	case legDirect:
		// The node trusts the user CA, so the user's own certificate (its
		// principals are the logins) works without the gateway; sshd's
		// host certificate is checked against the same @cert-authority.
		return append([]string{"-F", "/dev/null", portFlag, strconv.Itoa(e.sshd.Port), "-o", "UserKnownHostsFile=" + filepath.Join(e.sshDir, "known_hosts")}, id...)
	case legGateway:
		return append([]string{"-F", "/dev/null", portFlag, e.gwPort, "-o", "UserKnownHostsFile=" + filepath.Join(e.sshDir, "known_hosts")}, id...)
	default:
		return []string{"-F", e.config, "-o", "BatchMode=yes"}
	}
}

// target is the ssh destination of a leg.
func (e *env) target(leg string) string {
	switch leg {
	case legDirect:
		return benchLogin + "@127.0.0.1"
	case legGateway:
		return benchLogin + "@node1@" + e.gwHost
	default:
		return benchLogin + "@node1.sigil"
	}
}

func (e *env) remote(leg, path string) string { return e.target(leg) + ":" + path }

// run runs tool for leg with its options and args, failing the bench on
// error.
func (e *env) run(ctx context.Context, leg, tool string, args ...string) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, append(e.args(leg, tool), args...)...)
	cmd.Env = append(os.Environ(), "SIGIL_HOME="+e.home)
	out, err := cmd.CombinedOutput()
	if err != nil {
		e.h.Fatalf("%s leg: %s %v: %v\n%s\nsigild log tail:\n%s", leg, tool, args, err, out, benchenv.Tail(e.sigil.Daemon.Stderr(), 4000))
	}
}

func (e *env) sshVersion() string {
	out, _ := exec.Command("ssh", "-V").CombinedOutput()
	return strings.TrimSpace(string(out))
}

type report struct {
	opts       options
	date       time.Time
	sshVersion string
	loadBefore string
	loadAfter  string
	copy       map[string]*benchenv.Agg
	open       map[string]*benchenv.Agg
}

func (r *report) markdown() string {
	o := r.opts
	var b strings.Builder
	fmt.Fprintf(&b, "# SSH gateway: scp throughput and session open time, %s\n\n", r.date.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- Machine: %d CPUs (%s/%s), shared with other builds; load average (1/5/15 min) before %s, after %s. "+
		"Client, gateway and sshd all run here and compete for the CPUs.\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, r.loadBefore, r.loadAfter)
	fmt.Fprintf(&b, "- %s; sshd from the same package, host certificate from Sigil's SSH host CA, TrustedUserCAKeys = Sigil's SSH user CA.\n", r.sshVersion)
	fmt.Fprintf(&b, "- %d round(s) of the legs back to back; per leg one scp of a %d MiB random file (scp uses the SFTP protocol) and %d × `ssh NODE true`.\n",
		o.rounds, o.sizeMB, o.opens)
	for _, leg := range legs {
		fmt.Fprintf(&b, "- **%s**: %s.\n", leg, legDescription[leg])
	}
	b.WriteString("\n## scp throughput\n\n| leg | MiB/s | × direct | Sigil CPU ms/MiB | load 1m |\n|---|---:|---:|---:|---|\n")
	base := r.copy[legDirect]
	var verdicts []string
	for _, leg := range legs {
		a := r.copy[leg]
		if a == nil || base == nil {
			continue
		}
		ratio := a.MeanRate() / base.MeanRate()
		cpu := ""
		if len(a.CPUPerOp) > 0 {
			cpu = fmt.Sprintf("%.1f", benchenv.Mean(a.CPUPerOp)/1000)
		}
		fmt.Fprintf(&b, "| %s | %.1f | %.2f | %s | %s |\n", leg, a.MeanRate(), ratio, cpu, strings.Join(a.Loads, ", "))
		if leg != legDirect {
			verdict := "met"
			if ratio < targetRatio {
				verdict = "MISSED"
			}
			verdicts = append(verdicts, fmt.Sprintf("%s %.2f× (%s)", leg, ratio, verdict))
		}
	}
	fmt.Fprintf(&b, "\nTarget scp through the gateway ≥ %.2f× direct: %s.\n\n", targetRatio, strings.Join(verdicts, ", "))
	b.WriteString("## Session open time (`ssh NODE true`, process start to exit)\n\n| leg | p50 ms | p99 ms | added p50 ms | Sigil CPU ms/session | load 1m |\n|---|---:|---:|---:|---:|---|\n")
	base = r.open[legDirect]
	for _, leg := range legs {
		a := r.open[leg]
		if a == nil || base == nil {
			continue
		}
		added, cpu := "", ""
		if leg != legDirect {
			added = fmt.Sprintf("%+.1f", a.Pct(50)-base.Pct(50))
			cpu = fmt.Sprintf("%.1f", benchenv.Mean(a.CPUPerOp)/1000)
		}
		fmt.Fprintf(&b, "| %s | %.1f | %.1f | %s | %s | %s |\n", leg, a.Pct(50), a.Pct(99), added, cpu, strings.Join(a.Loads, ", "))
	}
	b.WriteString("\nReproduce: `make bench-ssh` (see bench/README.md).\n")
	return b.String()
}
