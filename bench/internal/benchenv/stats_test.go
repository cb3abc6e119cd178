package benchenv

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

func TestPercentile(t *testing.T) {
	sorted := make([]int64, 100)
	for i := range sorted {
		sorted[i] = int64(i+1) * 1000 // 1..100 ms
	}
	for _, tt := range []struct{ p, want float64 }{{50, 50}, {99, 99}, {100, 100}, {0.1, 1}} {
		if got := Percentile(sorted, tt.p); got != tt.want {
			t.Errorf("p%v = %v, want %v", tt.p, got, tt.want)
		}
	}
	if !math.IsNaN(Percentile(nil, 50)) {
		t.Errorf("percentile of nothing is not NaN")
	}
}

func TestAgg(t *testing.T) {
	var a Agg
	a.Add(100, 2, []int64{3000, 1000}, "1.50 2.00 3.00")
	a.Add(200, 4, []int64{2000}, "")
	if got := a.MeanRate(); got != 150 {
		t.Errorf("MeanRate = %v, want 150", got)
	}
	if got := a.MeanConnTime(); got != 3 {
		t.Errorf("MeanConnTime = %v, want 3", got)
	}
	// Pooled and sorted across rounds: 1, 2, 3 ms.
	if got := a.Pct(50); got != 2 {
		t.Errorf("p50 = %v, want 2", got)
	}
	if got := a.Pct(100); got != 3 {
		t.Errorf("p100 = %v, want 3", got)
	}
	if a.Loads[0] != "1.50" || a.Loads[1] != "n/a" {
		t.Errorf("loads = %q", a.Loads)
	}
	if !math.IsNaN(Mean(nil)) {
		t.Errorf("mean of nothing is not NaN")
	}
}

func TestWriteReport(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "results")
	path, err := WriteReport(dir, "x.md", "# hi\n")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "# hi\n" {
		t.Fatalf("read back %q, %v", b, err)
	}
}

func TestTail(t *testing.T) {
	if got := Tail("abcdef", 3); got != "...def" {
		t.Errorf("Tail = %q", got)
	}
	if got := Tail("ab", 3); got != "ab" {
		t.Errorf("Tail short = %q", got)
	}
}

func TestHarnessFatalRecovers(t *testing.T) {
	h, err := NewHarness("unit")
	if err != nil {
		t.Fatal(err)
	}
	dir := h.TempDir()
	cleaned := false
	h.Cleanup(func() { cleaned = true })
	code := func() (code int) {
		defer h.Close()
		defer h.Recover(&code)
		h.Fatalf("boom %d", 1)
		return 0
	}()
	if code != 1 || !cleaned || !h.Failed() {
		t.Fatalf("code=%d cleaned=%v failed=%v", code, cleaned, h.Failed())
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temp dir left behind: %v", err)
	}
}
