package process

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gravitational/trace"
	"gopkg.in/yaml.v3"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/audit/export"
)

// Defaults for the all-in-one daemon.
const (
	DefaultListen      = "127.0.0.1:3443"
	DefaultMySQLListen = "127.0.0.1:3036"
	DefaultDataDir     = "sigil-data"
	DefaultClusterName = "sigil"
	maxConfigBytes     = 1 << 20
)

// Config is sigil.yaml.
type Config struct {
	// ClusterName names the cluster in certificates.
	ClusterName string `yaml:"cluster_name"`
	// DataDir holds storage, the CA sealing key, audit and the local admin identity.
	DataDir string `yaml:"data_dir"`
	// Listen is the gateway address (TLS+ALPN, PostgreSQL, SSH sniffed).
	Listen string `yaml:"listen"`
	// PublicAddr is how clients reach the gateway (signup links, cert SANs).
	PublicAddr string `yaml:"public_addr"`
	// MySQLListen is the MySQL listener (the server speaks first there).
	MySQLListen string      `yaml:"mysql_listen"`
	Auth        AuthConfig  `yaml:"auth"`
	Audit       AuditConfig `yaml:"audit"`
	Log         LogConfig   `yaml:"log"`
}

// AuditConfig tunes the audit log.
type AuditConfig struct {
	// Retention prunes events older than this (0 keeps everything); the
	// chain stays verifiable from a signed checkpoint.
	Retention types.Duration `yaml:"retention"`
	// Export forwards every event to SIEM sinks (JSON-lines files, webhooks).
	Export export.Config `yaml:"export"`
}

// AuthConfig tunes the identity service.
type AuthConfig struct {
	// CertTTL is the default login certificate lifetime (roles may shorten it).
	CertTTL types.Duration `yaml:"cert_ttl"`
	// SignupTTL is how long signup links work.
	SignupTTL types.Duration `yaml:"signup_ttl"`
	// SecondFactor is what a password login needs besides the password:
	// off, otp (a TOTP code), webauthn (a security key) or on (either).
	SecondFactor string `yaml:"second_factor"`
	// WebIdleTimeout signs a web console session out after this long
	// without a request.
	WebIdleTimeout types.Duration `yaml:"web_idle_timeout"`
}

// LogConfig configures the daemon's own log.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug | info | warn | error
	Format string `yaml:"format"` // text | json
}

// LoadConfig reads a sigil.yaml, refusing unknown fields.
func LoadConfig(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	if st.Size() > maxConfigBytes {
		return nil, trace.BadParameter("%s: config file larger than 1 MiB", path)
	}
	cfg := &Config{}
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil {
		return nil, trace.BadParameter("%s: %v", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	return cfg, nil
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.ClusterName == "" {
		c.ClusterName = DefaultClusterName
	}
	if err := types.ValidateName("cluster_name", c.ClusterName); err != nil {
		return trace.Wrap(err)
	}
	if c.DataDir == "" {
		c.DataDir = os.Getenv("SIGIL_DATA_DIR")
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return trace.Wrap(err)
	}
	c.DataDir = abs
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return trace.BadParameter("listen: %q is not host:port", c.Listen)
	}
	if c.MySQLListen == "" {
		c.MySQLListen = DefaultMySQLListen
	}
	if _, _, err := net.SplitHostPort(c.MySQLListen); err != nil {
		return trace.BadParameter("mysql_listen: %q is not host:port", c.MySQLListen)
	}
	if c.PublicAddr != "" {
		if _, _, err := net.SplitHostPort(c.PublicAddr); err != nil {
			return trace.BadParameter("public_addr: %q is not host:port", c.PublicAddr)
		}
	}
	if c.Auth.CertTTL == 0 {
		c.Auth.CertTTL = types.Duration(8 * time.Hour)
	}
	if c.Auth.CertTTL.Duration() < time.Minute {
		return trace.BadParameter("auth.cert_ttl: must be at least 1m")
	}
	if c.Auth.SignupTTL == 0 {
		c.Auth.SignupTTL = types.Duration(time.Hour)
	}
	switch c.Auth.SecondFactor {
	case "":
		c.Auth.SecondFactor = "off"
	case "off", "otp", "webauthn", "on":
	default:
		return trace.BadParameter("auth.second_factor: %q is not one of off, otp, webauthn, on", c.Auth.SecondFactor)
	}
	if c.Auth.WebIdleTimeout == 0 {
		c.Auth.WebIdleTimeout = types.Duration(30 * time.Minute)
	}
	if c.Auth.WebIdleTimeout.Duration() < time.Minute {
		return trace.BadParameter("auth.web_idle_timeout: must be at least 1m")
	}
	if c.Audit.Retention < 0 || (c.Audit.Retention > 0 && c.Audit.Retention.Duration() < time.Hour) {
		return trace.BadParameter("audit.retention: must be at least 1h (or 0 to keep every event)")
	}
	if err := c.Audit.Export.CheckAndSetDefaults(); err != nil {
		return trace.Wrap(err)
	}
	switch c.Log.Level {
	case "", "info", "debug", "warn", "error":
	default:
		return trace.BadParameter("log.level: %q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "", "text", "json":
	default:
		return trace.BadParameter("log.format: %q is not one of text, json", c.Log.Format)
	}
	return nil
}

// SampleConfig is printed by "sigild config sample".
const SampleConfig = `# sigil.yaml — configuration of the all-in-one sigild daemon.
# Every field is optional; the values shown are the defaults.

# Name of the cluster; it appears in the CA certificates.
cluster_name: sigil

# Storage (embedded badger), the CA sealing key, the audit log and the local
# admin identity used by "sigilctl --data-dir". Also $SIGIL_DATA_DIR.
data_dir: ./sigil-data

# The gateway: one port for the web console, the API, PostgreSQL, SSH
# (protocols are told apart by their first bytes and TLS ALPN).
listen: 127.0.0.1:3443

# How clients reach the gateway, when it differs from listen (a DNS name
# behind a load balancer, say). Used in signup links and certificate SANs.
# public_addr: sigil.example.com:443

# MySQL clients speak second, so MySQL has its own port.
mysql_listen: 127.0.0.1:3036

auth:
  # Default lifetime of login certificates; a role's max_session_ttl can
  # only shorten it.
  cert_ttl: 8h
  # How long a signup link works.
  signup_ttl: 1h
  # Second factor of a password login: off, otp (a code from an
  # authenticator app), webauthn (a security key) or on (either). New
  # users then register a device when they sign up. Per-session MFA for
  # database sessions is asked by roles (require_session_mfa) whatever
  # this says.
  second_factor: off
  # The web console signs a session out after this long without a request.
  web_idle_timeout: 30m

audit:
  # Prune events older than this; the hash chain stays verifiable from a
  # checkpoint signed by the cluster's audit key. Default: keep everything.
  # retention: 365d
  export:
    # JSON-lines files for a SIEM agent to tail, rotated by size.
    files: []
    # - name: siem-file
    #   path: /var/log/sigil/audit.jsonl
    #   max_bytes: 104857600   # 100 MiB per file
    #   max_files: 10
    # Batched POSTs (application/x-ndjson) with retries; an outage loses
    # nothing: delivery resumes from the last acknowledged event.
    webhooks: []
    # - name: siem
    #   url: https://siem.example.com/ingest
    #   headers: {Authorization: "Bearer ..."}
    #   timeout: 10s
    # Access-request notifications to Slack or a chat bridge: one
    # {"text": ..., "event": ...} message per event of these types.
    # - name: requests-slack
    #   url: https://hooks.slack.com/services/T000/B000/XXXX
    #   format: slack
    #   event_types: [request.created, request.reviewed]

log:
  level: info   # debug | info | warn | error
  format: text  # text | json
`
