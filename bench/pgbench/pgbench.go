package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// runSpec is one pgbench invocation.
type runSpec struct {
	clients, jobs int
	duration      time.Duration
	// mode is the -M query protocol: prepared, simple or extended.
	mode string
	// reconnect is -C: a new connection per transaction.
	reconnect bool
	// logDir gets the -l per-transaction logs when set.
	logDir string
}

func (s runSpec) args() []string {
	args := []string{"-S", "-n", "-c", strconv.Itoa(s.clients), "-j", strconv.Itoa(s.jobs),
		"-T", strconv.Itoa(int(s.duration / time.Second)), "-M", s.mode}
	if s.reconnect {
		args = append(args, "-C")
	}
	if s.logDir != "" {
		args = append(args, "-l", "--log-prefix", filepath.Join(s.logDir, "tx"))
	}
	return args
}

// result is what one pgbench run measured.
type result struct {
	tps float64
	// connTime is pgbench's "average connection time" (ms); 0 if absent.
	connTime float64
	failed   int64
	// latencies are per-transaction times in microseconds, from -l.
	latencies []int64
	// sigilCPU is the CPU time sigild and the tunnel used during the run.
	sigilCPU time.Duration
}

var (
	tpsRe      = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	connTimeRe = regexp.MustCompile(`(?m)^average connection time = ([0-9.]+) ms`)
	failedRe   = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
)

// parseSummary reads pgbench's closing summary.
func parseSummary(out string) (result, error) {
	var r result
	m := tpsRe.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no \"tps = \" line in pgbench output:\n%s", out)
	}
	var err error
	if r.tps, err = strconv.ParseFloat(m[1], 64); err != nil {
		return r, fmt.Errorf("tps %q: %w", m[1], err)
	}
	if m := connTimeRe.FindStringSubmatch(out); m != nil {
		r.connTime, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := failedRe.FindStringSubmatch(out); m != nil {
		r.failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return r, nil
}

// parseTxLog reads a pgbench -l log: "client tx_no time_us script epoch
// epoch_us [lag]" per line; the third field is the latency.
func parseTxLog(r io.Reader, into []int64) ([]int64, error) {
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if len(f) < 6 {
			return into, fmt.Errorf("line %d: %d fields, want at least 6: %q", line, len(f), sc.Text())
		}
		us, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return into, fmt.Errorf("line %d: latency %q: %w", line, f[2], err)
		}
		into = append(into, us)
	}
	return into, sc.Err()
}

// runPgbench runs pgbench against c and collects the summary and, with
// logs, the latencies.
func runPgbench(ctx context.Context, bin string, c conn, s runSpec) (result, error) {
	ctx, cancel := context.WithTimeout(ctx, s.duration+2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, s.args()...)
	// -l writes into the working dir unless the prefix has a path.
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), c.env()...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return result{}, fmt.Errorf("pgbench %s: %w\n%s", strings.Join(s.args(), " "), err, out.String())
	}
	r, err := parseSummary(out.String())
	if err != nil {
		return r, err
	}
	if r.failed > 0 {
		return r, fmt.Errorf("pgbench reported %d failed transactions:\n%s", r.failed, out.String())
	}
	if s.logDir == "" {
		return r, nil
	}
	files, err := filepath.Glob(filepath.Join(s.logDir, "tx.*"))
	if err != nil || len(files) == 0 {
		return r, fmt.Errorf("no pgbench -l logs in %s (%v)", s.logDir, err)
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return r, err
		}
		r.latencies, err = parseTxLog(f, r.latencies)
		_ = f.Close()
		if err != nil {
			return r, fmt.Errorf("%s: %w", name, err)
		}
		// The logs are large and only needed once.
		_ = os.Remove(name)
	}
	slices.Sort(r.latencies)
	return r, nil
}
