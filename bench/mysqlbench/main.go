package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/sigilhq/sigil/audit"
	"github.com/sigilhq/sigil/bench/internal/benchenv"
)

type options struct {
	clients      int
	rows         int
	duration     time.Duration
	connDuration time.Duration
	warmup       time.Duration
	modes        []string
	rounds       int
	outDir       string
	// perfOut, when set, is where "perf record -g" of sigild during the
	// first gateway leg goes.
	perfOut     string
	perfSeconds int
}

func main() { os.Exit(run()) }

func run() (code int) {
	var o options
	var modes string
	flag.IntVar(&o.clients, "clients", 8, "concurrent clients, one connection each")
	flag.IntVar(&o.rows, "rows", 1000, "rows in items; queries pick ids at random")
	flag.DurationVar(&o.duration, "duration", 20*time.Second, "measured time per query leg")
	flag.DurationVar(&o.connDuration, "conn-duration", 10*time.Second, "measured time per connection leg")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "unrecorded time at the start of every leg")
	flag.StringVar(&modes, "modes", modePrepared+","+modeText, "comma-separated: prepared (server-side, COM_STMT_EXECUTE), text (COM_QUERY)")
	flag.IntVar(&o.rounds, "rounds", 1, "times to repeat the interleaved direct/gateway/tunnel legs")
	flag.StringVar(&o.outDir, "out", "bench/results", "directory for mysql-<date>-<HHMM>.md (empty: stdout only)")
	flag.StringVar(&o.perfOut, "perf", "", "write `perf record -g` of sigild during the first gateway leg to this file")
	flag.IntVar(&o.perfSeconds, "perf-seconds", 15, "seconds of perf record (at most -duration)")
	flag.Parse()
	o.modes = strings.Split(modes, ",")
	for _, m := range o.modes {
		if m != modePrepared && m != modeText {
			fmt.Fprintf(os.Stderr, "unknown mode %q\n", m)
			return 2
		}
	}
	if o.duration < time.Second || o.connDuration < time.Second || o.rounds < 1 || o.clients < 1 || o.rows < 1 || o.warmup < 0 {
		fmt.Fprintln(os.Stderr, "durations must be at least 1s; rounds, clients and rows at least 1")
		return 2
	}

	h, err := benchenv.NewHarness("mysqlbench")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer h.Close()
	defer h.Recover(&code)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	rep := &report{opts: o, date: start, loadBefore: benchenv.LoadAvg()}
	e := setUp(ctx, h, o.rows)
	rep.serverVersion = e.my.SQL(h, "", "SELECT VERSION()")

	fail := func(leg string, err error) {
		h.Fatalf("%s leg: %v\nsigild log tail:\n%s", leg, err, benchenv.Tail(e.sigil.Daemon.Stderr(), 4000))
	}
	pools := map[string]*sql.DB{}
	for _, leg := range benchenv.Legs {
		db, _, err := openDB(e.legs[leg], o.clients)
		if err != nil {
			fail(leg, err)
		}
		defer db.Close()
		if err := db.PingContext(ctx); err != nil {
			fail(leg, err)
		}
		pools[leg] = db
	}
	profiled := o.perfOut == ""
	// Interleaved, so that the load from other work on the machine falls
	// on all legs alike as far as possible.
	for round := 0; round < o.rounds; round++ {
		for _, mode := range o.modes {
			for _, leg := range benchenv.Legs {
				h.Logf("round %d: %s %s, %s + %s warm-up", round+1, leg, mode, o.duration, o.warmup)
				var perf func()
				if !profiled && leg == benchenv.LegGateway {
					profiled = true
					perf = e.sigil.StartPerf(ctx, o.perfOut, o.warmup, min(time.Duration(o.perfSeconds)*time.Second, o.duration))
				}
				r, err := runLoad(ctx, loadSpec{clients: o.clients, warmup: o.warmup, duration: o.duration, cpu: e.sigil.CPU}, queryWorker(pools[leg], mode, o.rows))
				if perf != nil {
					perf()
				}
				if err != nil {
					fail(leg, err)
				}
				rep.addQuery(mode, leg, r, benchenv.LoadAvg())
			}
		}
		for _, leg := range benchenv.Legs {
			h.Logf("round %d: %s connect+ping+close, %s", round+1, leg, o.connDuration)
			_, connector, err := openDB(e.legs[leg], o.clients)
			if err != nil {
				fail(leg, err)
			}
			r, err := runLoad(ctx, loadSpec{clients: o.clients, warmup: min(o.warmup, time.Second), duration: o.connDuration, cpu: e.sigil.CPU}, connectWorker(connector))
			if err != nil {
				fail(leg, err)
			}
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
		path, err := benchenv.WriteReport(o.outDir, "mysql-"+start.UTC().Format("2006-01-02-1504")+".md", md)
		if err != nil {
			h.Fatal(err)
		}
		fmt.Fprintf(os.Stderr, "wrote %s\n", path)
	}
	return 0
}

// report accumulates the measurements of all rounds.
type report struct {
	opts          options
	date          time.Time
	serverVersion string
	loadBefore    string
	loadAfter     string
	auditEvents   int
	query         map[string]map[string]*benchenv.Agg // mode -> leg
	conn          map[string]*benchenv.Agg            // leg
}

func (r *report) addQuery(mode, leg string, res loadResult, load string) {
	if r.query == nil {
		r.query = map[string]map[string]*benchenv.Agg{}
	}
	if r.query[mode] == nil {
		r.query[mode] = map[string]*benchenv.Agg{}
	}
	if r.query[mode][leg] == nil {
		r.query[mode][leg] = &benchenv.Agg{}
	}
	r.query[mode][leg].Add(res.rate, 0, res.latencies, load)
	if leg != benchenv.LegDirect {
		r.query[mode][leg].AddCPU(res.sigilCPU, res.rate*r.opts.duration.Seconds())
	}
}

func (r *report) addConn(leg string, res loadResult, load string) {
	if r.conn == nil {
		r.conn = map[string]*benchenv.Agg{}
	}
	if r.conn[leg] == nil {
		r.conn[leg] = &benchenv.Agg{}
	}
	r.conn[leg].Add(res.rate, res.meanMs, res.latencies, load)
	if leg != benchenv.LegDirect {
		r.conn[leg].AddCPU(res.sigilCPU, res.rate*r.opts.connDuration.Seconds())
	}
}

var modeDescription = map[string]string{
	modePrepared: "prepared (server-side, `COM_STMT_EXECUTE`)",
	modeText:     "text (`COM_QUERY`)",
}

func (r *report) markdown() string {
	o := r.opts
	var b strings.Builder
	fmt.Fprintf(&b, "# MySQL gateway: select-only point queries, %s\n\n", r.date.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- Machine: %d CPUs (%s/%s), shared with other builds; load average (1/5/15 min) before %s, after %s.\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, r.loadBefore, r.loadAfter)
	fmt.Fprintf(&b, "- MariaDB %s, `items` with %d rows; Go load driver (go-sql-driver/mysql, `interpolateParams=false`), %d clients each on its own connection, "+
		"`%s` with a random id; %d round(s) of direct, gateway and tunnel back to back per mode, each leg %s after a %s warm-up "+
		"(QPS: mean of rounds; percentiles: every query of all rounds).\n",
		r.serverVersion, o.rows, o.clients, pointQuery, o.rounds, o.duration, o.warmup)
	b.WriteString("- Legs: **direct** = MariaDB over TLS 1.3 with a P-256 client certificate (what the gateway's upstream leg costs); " +
		"**gateway** = TLS 1.3 to sigild's MySQL listener with a routed Sigil database certificate; " +
		"**tunnel** = `sigil proxy db my1 --tunnel`, plain TCP to the tunnel.\n")
	fmt.Fprintf(&b, "- Query audit on (sigild defaults): %d+ `%s` events recorded for the bench user. MariaDB general query log off for all legs.\n\n",
		r.auditEvents, audit.EventDBQuery)

	fmt.Fprintf(&b, "## Throughput and latency: %d clients, %s per leg\n\n", o.clients, o.duration)
	b.WriteString("| mode | leg | QPS | × direct | p50 ms | p99 ms | added p50 ms | added p99 ms | Sigil CPU µs/query | load 1m |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	var verdicts []string
	for _, mode := range o.modes {
		base := r.query[mode][benchenv.LegDirect]
		for _, leg := range benchenv.Legs {
			a := r.query[mode][leg]
			if a == nil || base == nil {
				continue
			}
			ratio := a.MeanRate() / base.MeanRate()
			added50, added99 := "", ""
			if leg != benchenv.LegDirect {
				added50 = fmt.Sprintf("%+.3f", a.Pct(50)-base.Pct(50))
				added99 = fmt.Sprintf("%+.3f", a.Pct(99)-base.Pct(99))
			}
			fmt.Fprintf(&b, "| %s | %s | %.0f | %.2f | %.3f | %.3f | %s | %s | %s | %s |\n",
				modeDescription[mode], leg, a.MeanRate(), ratio, a.Pct(50), a.Pct(99), added50, added99, a.CPUCell(), strings.Join(a.Loads, ", "))
			if leg == benchenv.LegGateway {
				verdict := "met"
				if ratio < benchenv.TargetRatio {
					verdict = "MISSED"
				}
				verdicts = append(verdicts, fmt.Sprintf("%s %.2f× (%s)", mode, ratio, verdict))
			}
		}
	}
	fmt.Fprintf(&b, "\nTarget gateway ≥ %.2f× direct QPS: %s.\n\n", benchenv.TargetRatio, strings.Join(verdicts, ", "))

	fmt.Fprintf(&b, "## New connections: %d clients, %s per leg\n\n", o.clients, o.connDuration)
	b.WriteString("Each operation opens a connection (TCP, TLS, MySQL handshake), pings it and closes it.\n\n")
	b.WriteString("| leg | connections/s | × direct | mean ms | p50 ms | p99 ms | Sigil CPU µs/connection | load 1m |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---|\n")
	if base := r.conn[benchenv.LegDirect]; base != nil {
		for _, leg := range benchenv.Legs {
			a := r.conn[leg]
			if a == nil {
				continue
			}
			fmt.Fprintf(&b, "| %s | %.0f | %.2f | %.3f | %.3f | %.3f | %s | %s |\n", leg, a.MeanRate(), a.MeanRate()/base.MeanRate(),
				a.MeanConnTime(), a.Pct(50), a.Pct(99), a.CPUCell(), strings.Join(a.Loads, ", "))
		}
	}
	b.WriteString("\nReproduce: `make bench-mysql` (see bench/README.md).\n")
	return b.String()
}
