package main

import (
	"strings"
	"testing"
)

func TestParseSummary(t *testing.T) {
	tests := []struct {
		name             string
		out              string
		tps, connTime    float64
		failed           int64
		wantErrSubstring string
	}{
		{
			name: "pg15 select-only",
			out: `transaction type: <builtin: select only>
number of failed transactions: 0 (0.000%)
latency average = 0.480 ms
initial connection time = 12.345 ms
tps = 7437.123456 (without initial connection time)
`,
			tps: 7437.123456,
		},
		{
			name: "reconnecting",
			out: `number of failed transactions: 3 (0.010%)
average connection time = 139.110 ms
tps = 14.2 (including reconnection times)
`,
			tps: 14.2, connTime: 139.110, failed: 3,
		},
		{name: "no tps", out: "pgbench: error: connection refused\n", wantErrSubstring: `no "tps = " line`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := parseSummary(tt.out)
			if tt.wantErrSubstring != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErrSubstring) {
					t.Fatalf("err = %v, want %q", err, tt.wantErrSubstring)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.tps != tt.tps || r.connTime != tt.connTime || r.failed != tt.failed {
				t.Fatalf("got tps=%v connTime=%v failed=%v, want %v %v %v", r.tps, r.connTime, r.failed, tt.tps, tt.connTime, tt.failed)
			}
		})
	}
}

func TestParseTxLog(t *testing.T) {
	got, err := parseTxLog(strings.NewReader("0 1 512 0 1700000000 123\n3 7 1500 0 1700000000 456 12\n"), []int64{9})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0] != 9 || got[1] != 512 || got[2] != 1500 {
		t.Fatalf("latencies = %v", got)
	}
	if _, err := parseTxLog(strings.NewReader("0 1 x 0 1 2\n"), nil); err == nil || !strings.Contains(err.Error(), `line 1: latency "x"`) {
		t.Fatalf("bad latency: err = %v", err)
	}
	if _, err := parseTxLog(strings.NewReader("0 1 2\n"), nil); err == nil || !strings.Contains(err.Error(), "3 fields") {
		t.Fatalf("short line: err = %v", err)
	}
}
