package client

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gravitational/trace"
	"gopkg.in/yaml.v3"
)

// Names inside $SIGIL_HOME.
const (
	CurrentProfileFile = "current-profile"
	ProfilesDir        = "profiles"
	ProfileFile        = "profile.yaml"
)

// Home returns the sigil home directory: $SIGIL_HOME, else ~/.sigil.
func Home() string {
	if h := os.Getenv("SIGIL_HOME"); h != "" {
		return h
	}
	if h, err := os.UserHomeDir(); err == nil && h != "" {
		return filepath.Join(h, ".sigil")
	}
	return ".sigil"
}

// Profile is a logged-in session with one gateway: an identity directory
// plus a profile.yaml describing what the certificate grants, so that
// status can be shown without decoding certificate extensions.
type Profile struct {
	Proxy   string              `yaml:"proxy" json:"proxy"`
	User    string              `yaml:"user" json:"user"`
	Kind    string              `yaml:"kind" json:"kind"`
	Roles   []string            `yaml:"roles" json:"roles"`
	Traits  map[string][]string `yaml:"traits,omitempty" json:"traits,omitempty"`
	Expires time.Time           `yaml:"expires" json:"expires"`

	// Dir is the profile directory (not stored).
	Dir string `yaml:"-" json:"-"`
	// Identity holds the certificate material (not stored in profile.yaml).
	Identity *Identity `yaml:"-" json:"-"`
}

// ProfileDir returns the directory of proxy's profile under home. The
// address is flattened to one safe path element ("127.0.0.1:3443" →
// "127.0.0.1_3443").
func ProfileDir(home, proxy string) string {
	var b strings.Builder
	for _, r := range proxy {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	name := b.String()
	if name == "" || strings.Trim(name, ".") == "" {
		name = "_"
	}
	return filepath.Join(home, ProfilesDir, name)
}

// maxProfileYAML bounds profile.yaml; roles and traits fit in far less.
const maxProfileYAML = 256 << 10

// SaveProfile writes p (identity dir + profile.yaml) under home and makes
// it the current profile.
func SaveProfile(home string, p *Profile) error {
	if p == nil || p.Proxy == "" {
		return trace.BadParameter("profile has no gateway address")
	}
	if p.Identity == nil {
		return trace.BadParameter("profile %s has no identity", p.Proxy)
	}
	if p.Identity.Proxy != p.Proxy {
		return trace.BadParameter("profile gateway %q differs from its identity's %q", p.Proxy, p.Identity.Proxy)
	}
	if err := os.MkdirAll(home, 0o700); err != nil {
		return trace.ConvertSystemError(err)
	}
	dir := ProfileDir(home, p.Proxy)
	if err := WriteIdentityDir(dir, p.Identity); err != nil {
		return trace.Wrap(err)
	}
	data, err := yaml.Marshal(p)
	if err != nil {
		return trace.Wrap(err)
	}
	if err := WriteFileAtomic(filepath.Join(dir, ProfileFile), data, 0o600); err != nil {
		return trace.Wrap(err)
	}
	p.Dir = dir
	return trace.Wrap(WriteFileAtomic(filepath.Join(home, CurrentProfileFile), []byte(p.Proxy+"\n"), 0o600))
}

// LoadProfile reads proxy's profile under home.
func LoadProfile(home, proxy string) (*Profile, error) {
	dir := ProfileDir(home, proxy)
	data, err := readFileLimited(filepath.Join(dir, ProfileFile))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, trace.NotFound("not logged in to %s; run \"sigil login --proxy %s\"", proxy, proxy)
		}
		return nil, trace.Wrap(err)
	}
	if len(data) > maxProfileYAML {
		return nil, trace.LimitExceeded("%s is too large", filepath.Join(dir, ProfileFile))
	}
	p := &Profile{}
	if err := yaml.Unmarshal(data, p); err != nil {
		return nil, trace.BadParameter("corrupt profile %s: %v", filepath.Join(dir, ProfileFile), err)
	}
	id, err := LoadIdentityDir(dir)
	if err != nil {
		return nil, trace.Wrap(err, "profile %s is incomplete; run \"sigil login --proxy %s\" again", proxy, proxy)
	}
	p.Dir = dir
	p.Identity = id
	if p.Proxy == "" {
		p.Proxy = proxy
	}
	return p, nil
}

// CurrentProxy returns the address of the current profile, or a NotFound
// error telling how to log in.
func CurrentProxy(home string) (string, error) {
	data, err := readFileLimited(filepath.Join(home, CurrentProfileFile))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", trace.NotFound(`not logged in; run "sigil login --proxy HOST:PORT"`)
		}
		return "", trace.Wrap(err)
	}
	proxy := strings.TrimSpace(string(data))
	if proxy == "" {
		return "", trace.NotFound(`not logged in; run "sigil login --proxy HOST:PORT"`)
	}
	return proxy, nil
}

// CurrentProfile loads the current profile.
func CurrentProfile(home string) (*Profile, error) {
	proxy, err := CurrentProxy(home)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	p, err := LoadProfile(home, proxy)
	if err != nil {
		if trace.IsNotFound(err) {
			return nil, trace.NotFound(`not logged in; run "sigil login --proxy HOST:PORT"`)
		}
		return nil, trace.Wrap(err)
	}
	return p, nil
}

// DeleteProfile removes proxy's profile (keys included) and, if it was the
// current one, the current-profile pointer.
func DeleteProfile(home, proxy string) error {
	if err := os.RemoveAll(ProfileDir(home, proxy)); err != nil {
		return trace.ConvertSystemError(err)
	}
	cur, err := CurrentProxy(home)
	if err == nil && cur == proxy {
		if err := os.Remove(filepath.Join(home, CurrentProfileFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return trace.ConvertSystemError(err)
		}
	}
	return nil
}
