package process

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSampleConfigLoads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sigil.yaml")
	if err := os.WriteFile(path, []byte(SampleConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatalf("the sample config does not load: %v", err)
	}
	if err := cfg.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != DefaultListen || cfg.ClusterName != DefaultClusterName || cfg.Auth.CertTTL.Duration() != 8*time.Hour {
		t.Fatalf("sample config = %+v", cfg)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"listn: 1.2.3.4:5\n", "listn"},
		{"listen: nope\n", `listen: "nope" is not host:port`},
		{"auth: {cert_ttl: 10s}\n", "auth.cert_ttl: must be at least 1m"},
		{"log: {level: loud}\n", `log.level: "loud"`},
		{"cluster_name: 'bad name'\n", "cluster_name"},
	} {
		path := filepath.Join(t.TempDir(), "sigil.yaml")
		os.WriteFile(path, []byte(tc.yaml), 0o600)
		cfg, err := LoadConfig(path)
		if err == nil {
			err = cfg.CheckAndSetDefaults()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to mention %q", tc.yaml, err, tc.want)
		}
	}
}
