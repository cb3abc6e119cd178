package main

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sigilhq/sigil/bench/internal/benchenv"
)

func TestRunLoadRecordsAfterWarmup(t *testing.T) {
	var calls, released atomic.Int64
	spec := loadSpec{clients: 3, warmup: 100 * time.Millisecond, duration: 200 * time.Millisecond}
	r, err := runLoad(context.Background(), spec, func(ctx context.Context, id int) (op, func(), error) {
		return func(context.Context) error {
			calls.Add(1)
			time.Sleep(2 * time.Millisecond) // the operation's own cost
			return nil
		}, func() { released.Add(1) }, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if released.Load() != 3 {
		t.Fatalf("released %d workers, want 3", released.Load())
	}
	n := int64(len(r.latencies))
	// The warm-up's operations ran but are not recorded.
	if n == 0 || n >= calls.Load() {
		t.Fatalf("recorded %d of %d operations", n, calls.Load())
	}
	if r.rate != float64(n)/0.2 {
		t.Fatalf("rate = %v, want %v", r.rate, float64(n)/0.2)
	}
	if r.latencies[0] < 2000 || r.meanMs < 2 {
		t.Fatalf("latencies below the operation's 2 ms: min %d µs, mean %.3f ms", r.latencies[0], r.meanMs)
	}
	for i := 1; i < len(r.latencies); i++ {
		if r.latencies[i] < r.latencies[i-1] {
			t.Fatal("latencies not sorted")
		}
	}
}

func TestRunLoadStopsOnError(t *testing.T) {
	spec := loadSpec{clients: 2, duration: time.Minute}
	start := time.Now()
	_, err := runLoad(context.Background(), spec, func(ctx context.Context, id int) (op, func(), error) {
		return func(ctx context.Context) error {
			if id == 1 {
				return errors.New("access denied")
			}
			return nil
		}, func() {}, nil
	})
	if err == nil || !strings.Contains(err.Error(), "client 1: access denied") {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 30*time.Second {
		t.Fatal("the error did not stop the run")
	}
	_, err = runLoad(context.Background(), spec, func(ctx context.Context, id int) (op, func(), error) {
		return nil, nil, errors.New("no route")
	})
	if err == nil || !strings.Contains(err.Error(), "client 0: no route") {
		t.Fatalf("setup err = %v", err)
	}
}

func TestReportMarkdown(t *testing.T) {
	r := &report{opts: options{clients: 8, rows: 10, duration: 20 * time.Second, connDuration: 10 * time.Second,
		warmup: 2 * time.Second, modes: []string{modePrepared, modeText}, rounds: 1},
		date: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), serverVersion: "10.11.6-MariaDB", auditEvents: 1000}
	lat := func(ms ...int64) loadResult {
		res := loadResult{}
		for _, m := range ms {
			res.latencies = append(res.latencies, m*1000)
		}
		return res
	}
	for _, tc := range []struct {
		mode, leg string
		rate      float64
		ms        []int64
	}{
		{modePrepared, benchenv.LegDirect, 1000, []int64{1, 2}},
		{modePrepared, benchenv.LegGateway, 900, []int64{2, 4}},
		{modePrepared, benchenv.LegTunnel, 700, []int64{3, 5}},
		{modeText, benchenv.LegDirect, 1000, []int64{1, 2}},
		{modeText, benchenv.LegGateway, 500, []int64{3, 6}},
	} {
		res := lat(tc.ms...)
		res.rate = tc.rate
		// 900 q/s for the 20s default: 18000 queries in 1.8 s of CPU.
		res.sigilCPU = time.Duration(tc.rate*2) * time.Millisecond
		r.addQuery(tc.mode, tc.leg, res, "1.00 2.00 3.00")
	}
	r.addConn(benchenv.LegDirect, loadResult{rate: 100, meanMs: 80, latencies: []int64{80000}}, "2.50 1 1")
	r.addConn(benchenv.LegGateway, loadResult{rate: 50, meanMs: 160, latencies: []int64{160000}}, "2.50 1 1")
	md := r.markdown()
	for _, want := range []string{
		"| prepared (server-side, `COM_STMT_EXECUTE`) | gateway | 900 | 0.90 | 2.000 | 4.000 | +1.000 | +2.000 | 100 | 1.00 |",
		"| text (`COM_QUERY`) | gateway | 500 | 0.50 | 3.000 | 6.000 | +2.000 | +4.000 | 100 | 1.00 |",
		"Target gateway ≥ 0.85× direct QPS: prepared 0.90× (met), text 0.50× (MISSED).",
		"| gateway | 50 | 0.50 | 160.000 | 160.000 | 160.000 | 0 | 2.50 |",
		"MariaDB 10.11.6-MariaDB, `items` with 10 rows",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "| text (`COM_QUERY`) | tunnel") {
		t.Errorf("a leg that was not measured is in the report:\n%s", md)
	}
}
