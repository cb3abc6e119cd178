package benchenv

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Legs, in report order; ratios are against LegDirect.
const (
	LegDirect  = "direct"
	LegGateway = "gateway"
	LegTunnel  = "tunnel"
)

// Legs lists the legs in report order.
var Legs = []string{LegDirect, LegGateway, LegTunnel}

// TargetRatio is the goal for gateway throughput against direct.
const TargetRatio = 0.85

// Percentile returns the nearest-rank p-th percentile (0<p<=100) of a
// sorted slice of microseconds, in milliseconds; NaN when empty.
func Percentile(sorted []int64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return float64(sorted[rank-1]) / 1000
}

// Mean is the arithmetic mean; NaN when empty.
func Mean(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	var sum float64
	for _, x := range v {
		sum += x
	}
	return sum / float64(len(v))
}

// Agg merges the rounds of one leg: mean rate, pooled latencies.
type Agg struct {
	Rates     []float64
	ConnTimes []float64
	// Latencies are per operation, in microseconds, all rounds.
	Latencies []int64
	// Loads are the 1-minute load averages at the end of each round.
	Loads []string
	// CPUPerOp is Sigil's CPU time (gateway plus tunnel) per operation in
	// microseconds, one per round where it was measured. Unlike rates it
	// hardly depends on what else the machine runs, so it is what tells
	// whether a gateway change made the hot path cheaper.
	CPUPerOp []float64
	sorted   bool
}

// AddCPU records one round's Sigil CPU time spent on ops operations.
func (a *Agg) AddCPU(cpu time.Duration, ops float64) {
	if ops > 0 {
		a.CPUPerOp = append(a.CPUPerOp, float64(cpu.Microseconds())/ops)
	}
}

// CPUCell is the mean of CPUPerOp for a report table: empty when not
// measured (the direct leg).
func (a *Agg) CPUCell() string {
	if len(a.CPUPerOp) == 0 {
		return ""
	}
	return fmt.Sprintf("%.0f", Mean(a.CPUPerOp))
}

// Add records one round: its rate (TPS, QPS or connections/s), average
// connection time in ms (0 if not measured), latencies in microseconds
// and the load average as LoadAvg returns it.
func (a *Agg) Add(rate, connTime float64, latencies []int64, load string) {
	a.Rates = append(a.Rates, rate)
	a.ConnTimes = append(a.ConnTimes, connTime)
	a.Latencies = append(a.Latencies, latencies...)
	a.Loads = append(a.Loads, strings.Fields(load + " n/a")[0])
	a.sorted = false
}

func (a *Agg) MeanRate() float64     { return Mean(a.Rates) }
func (a *Agg) MeanConnTime() float64 { return Mean(a.ConnTimes) }

// Pct is the p-th percentile of all latencies, in milliseconds.
func (a *Agg) Pct(p float64) float64 {
	if !a.sorted {
		slices.Sort(a.Latencies)
		a.sorted = true
	}
	return Percentile(a.Latencies, p)
}

// LoadAvg is the 1, 5 and 15 minute load average, as uptime shows it.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "n/a"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "n/a"
	}
	return strings.Join(f[:3], " ")
}

// Tail is the last n bytes of s.
func Tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// WriteReport writes md to dir/name, creating dir, and returns the path.
func WriteReport(dir, name, md string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	return path, os.WriteFile(path, []byte(md), 0o644)
}

// LockedBuffer is a strings.Builder safe for a process's stderr.
type LockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
