package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/bench/internal/benchenv"
)

const (
	legDirect  = benchenv.LegDirect
	legGateway = benchenv.LegGateway
	legTunnel  = benchenv.LegTunnel
)

var legs = benchenv.Legs

// targetRatio is the goal for gateway TPS against direct.
const targetRatio = benchenv.TargetRatio

type options struct {
	pgbench      string
	scale        int
	clients      int
	jobs         int
	duration     time.Duration
	connDuration time.Duration
	warmup       time.Duration
	modes        []string
	rounds       int
	outDir       string
	perfOut      string
}

func main() { os.Exit(run()) }

func run() (code int) {
	var o options
	var modes string
	flag.StringVar(&o.pgbench, "pgbench", defaultPgbench(), "pgbench binary")
	flag.IntVar(&o.scale, "scale", 10, "pgbench -i scale factor")
	flag.IntVar(&o.clients, "clients", 8, "pgbench -c")
	flag.IntVar(&o.jobs, "jobs", 2, "pgbench -j")
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "pgbench -T for the throughput legs")
	flag.DurationVar(&o.connDuration, "conn-duration", 10*time.Second, "pgbench -T for the -C (connection per transaction) legs")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "unreported run before each leg's first measurement")
	flag.StringVar(&modes, "modes", "prepared,simple", "comma-separated pgbench -M query protocols")
	flag.IntVar(&o.rounds, "rounds", 1, "times to repeat the interleaved direct/gateway/tunnel legs")
	flag.StringVar(&o.outDir, "out", "bench/results", "directory for pgbench-<date>-<HHMM>.md (empty: stdout only)")
	flag.StringVar(&o.perfOut, "perf", "", "write `perf record -g` of sigild during the first gateway leg to this file")
	flag.Parse()
	o.modes = strings.Split(modes, ",")
	if o.duration < time.Second || o.connDuration < time.Second || o.rounds < 1 || o.clients < 1 || o.jobs < 1 {
		fmt.Fprintln(os.Stderr, "durations must be at least 1s; rounds, clients and jobs at least 1")
		return 2
	}

	h, err := benchenv.NewHarness("pgbench")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer h.Close()
	defer h.Recover(&code)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	loadBefore := benchenv.LoadAvg()
	e := setUp(ctx, h, o.pgbench, o.scale)
	rep := &report{opts: o, date: start, loadBefore: loadBefore, pgVersion: pgbenchVersion(o.pgbench)}

	measure := func(leg string, s runSpec) result {
		cpu := e.sigil.CPU()
		r, err := runPgbench(ctx, o.pgbench, e.legs[leg], s)
		if err != nil {
			h.Fatalf("%s leg: %v\nsigild log tail:\n%s", leg, err, benchenv.Tail(e.sigil.Daemon.Stderr(), 4000))
		}
		r.sigilCPU = e.sigil.CPU() - cpu
		return r
	}
	for _, leg := range legs {
		h.Logf("warm-up %s (%s)", leg, o.warmup)
		measure(leg, runSpec{clients: o.clients, jobs: o.jobs, duration: max(o.warmup, time.Second), mode: o.modes[0]})
	}
	// Interleaved, so that the load from other work on the machine falls
	// on all legs alike as far as possible.
	for round := 0; round < o.rounds; round++ {
		for _, mode := range o.modes {
			for _, leg := range legs {
				h.Logf("round %d: %s -M %s, %s", round+1, leg, mode, o.duration)
				logDir := h.TempDir()
				var perf func()
				if o.perfOut != "" && round == 0 && mode == o.modes[0] && leg == benchenv.LegGateway {
					perf = e.sigil.StartPerf(ctx, o.perfOut, time.Second, o.duration-2*time.Second)
				}
				r := measure(leg, runSpec{clients: o.clients, jobs: o.jobs, duration: o.duration, mode: mode, logDir: logDir})
				if perf != nil {
					perf()
				}
				rep.addTx(mode, leg, r, benchenv.LoadAvg())
			}
		}
		for _, leg := range legs {
			h.Logf("round %d: %s -C, %s", round+1, leg, o.connDuration)
			r := measure(leg, runSpec{clients: o.clients, jobs: o.jobs, duration: o.connDuration, mode: "simple", reconnect: true})
			rep.addConn(leg, r, benchenv.LoadAvg())
		}
	}
	rep.loadAfter = benchenv.LoadAvg()
	rep.auditEvents = e.sigil.CountQueryEvents(benchUser)
	if rep.auditEvents == 0 {
		h.Fatalf("no %s audit event was recorded: query audit is not on, the numbers would not be the issue's", audit.EventDBQuery)
	}

	md := rep.markdown()
	fmt.Print(md)
	if o.outDir != "" {
		path, err := benchenv.WriteReport(o.outDir, "pgbench-"+start.UTC().Format("2006-01-02-1504")+".md", md)
		if err != nil {
			h.Fatal(err)
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", path)
	}
	return 0
}

func defaultPgbench() string {
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pgbench")
	if len(matches) > 0 {
		return matches[len(matches)-1]
	}
	return "pgbench"
}

func pgbenchVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// report accumulates the measurements of all rounds.
type report struct {
	opts        options
	date        time.Time
	pgVersion   string
	loadBefore  string
	loadAfter   string
	auditEvents int
	tx          map[string]map[string]*benchenv.Agg // mode -> leg
	conn        map[string]*benchenv.Agg            // leg
}

func (r *report) addTx(mode, leg string, res result, load string) {
	if r.tx == nil {
		r.tx = map[string]map[string]*benchenv.Agg{}
	}
	if r.tx[mode] == nil {
		r.tx[mode] = map[string]*benchenv.Agg{}
	}
	if r.tx[mode][leg] == nil {
		r.tx[mode][leg] = &benchenv.Agg{}
	}
	r.tx[mode][leg].Add(res.tps, res.connTime, res.latencies, load)
	if leg != benchenv.LegDirect {
		r.tx[mode][leg].AddCPU(res.sigilCPU, res.tps*r.opts.duration.Seconds())
	}
}

func (r *report) addConn(leg string, res result, load string) {
	if r.conn == nil {
		r.conn = map[string]*benchenv.Agg{}
	}
	if r.conn[leg] == nil {
		r.conn[leg] = &benchenv.Agg{}
	}
	r.conn[leg].Add(res.tps, res.connTime, res.latencies, load)
	if leg != benchenv.LegDirect {
		r.conn[leg].AddCPU(res.sigilCPU, res.tps*r.opts.connDuration.Seconds())
	}
}

func (r *report) markdown() string {
	o := r.opts
	var b strings.Builder
	fmt.Fprintf(&b, "# PostgreSQL gateway: pgbench select-only, %s\n\n", r.date.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- Machine: %d CPUs (%s/%s), shared with other builds; load average (1/5/15 min) before %s, after %s.\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, r.loadBefore, r.loadAfter)
	fmt.Fprintf(&b, "- %s, scale %d, `-c %d -j %d`, %d round(s) of direct, gateway and tunnel back to back per mode (TPS: mean of rounds; percentiles: all transactions of all rounds, from `pgbench -l`).\n",
		r.pgVersion, o.scale, o.clients, o.jobs, o.rounds)
	fmt.Fprintf(&b, "- Legs: **direct** = PostgreSQL over TLS 1.3 with a P-256 client certificate (what the gateway's upstream leg costs); "+
		"**gateway** = `sslmode=verify-full` to sigild with a routed Sigil database certificate; "+
		"**tunnel** = `sigil proxy db --tunnel`, plain TCP to the tunnel.\n")
	fmt.Fprintf(&b, "- Query audit on (sigild defaults): %d+ `%s` events recorded for the bench user. PostgreSQL statement logging off for all legs.\n\n",
		r.auditEvents, audit.EventDBQuery)

	fmt.Fprintf(&b, "## Throughput and latency: `pgbench -S -n -c %d -j %d -T %d -M <mode>`\n\n", o.clients, o.jobs, int(o.duration/time.Second))
	b.WriteString("| mode | leg | TPS | × direct | p50 ms | p99 ms | added p50 ms | added p99 ms | Sigil CPU µs/tx | load 1m |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	var verdicts []string
	for _, mode := range o.modes {
		base := r.tx[mode][legDirect]
		for _, leg := range legs {
			a := r.tx[mode][leg]
			if a == nil || base == nil {
				continue
			}
			ratio := a.MeanRate() / base.MeanRate()
			added50, added99 := "", ""
			if leg != legDirect {
				added50 = fmt.Sprintf("%+.3f", a.Pct(50)-base.Pct(50))
				added99 = fmt.Sprintf("%+.3f", a.Pct(99)-base.Pct(99))
			}
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.2f | %.3f | %.3f | %s | %s | %s | %s |\n",
				mode, leg, a.MeanRate(), ratio, a.Pct(50), a.Pct(99), added50, added99, a.CPUCell(), strings.Join(a.Loads, ", "))
			if leg == legGateway {
				verdict := "met"
				if ratio < targetRatio {
					verdict = "MISSED"
				}
				verdicts = append(verdicts, fmt.Sprintf("`-M %s` %.2f× (%s)", mode, ratio, verdict))
			}
		}
	}
	fmt.Fprintf(&b, "\nTarget gateway ≥ %.2f× direct TPS: %s.\n\n", targetRatio, strings.Join(verdicts, ", "))

	fmt.Fprintf(&b, "## New connections: `pgbench -S -n -C -c %d -j %d -T %d -M simple`\n\n", o.clients, o.jobs, int(o.connDuration/time.Second))
	b.WriteString("Each transaction opens and closes a connection, so TPS is connections/s.\n\n")
	b.WriteString("| leg | connections/s | × direct | avg connection time ms | Sigil CPU µs/connection | load 1m |\n")
	b.WriteString("|---|---:|---:|---:|---:|---|\n")
	if base := r.conn[legDirect]; base != nil {
		for _, leg := range legs {
			a := r.conn[leg]
			if a == nil {
				continue
			}
			fmt.Fprintf(&b, "| %s | %.0f | %.2f | %.3f | %s | %s |\n", leg, a.MeanRate(), a.MeanRate()/base.MeanRate(), a.MeanConnTime(), a.CPUCell(), strings.Join(a.Loads, ", "))
		}
	}
	b.WriteString("\nReproduce: `make bench-pg` (see bench/README.md).\n")
	return b.String()
}
