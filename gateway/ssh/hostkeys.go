package ssh

import (
	"crypto/ed25519"
	"crypto/rand"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gravitational/trace"
	gossh "golang.org/x/crypto/ssh"

	"github.com/sigilhq/sigil/identity/ca"
)

// maxHostCerts bounds the host certificate cache (one per node name set).
const maxHostCerts = 4096

// hostKeys signs the gateway's host key into host certificates for the
// names clients reach it by: its own names for the outer connection, a
// node's names for the inner server of a jump. The key lives in memory
// only; clients trust it through the SSH host CA, never by key.
type hostKeys struct {
	authority *ca.Authority
	ttl       time.Duration
	clock     func() time.Time
	signer    gossh.Signer

	mu    sync.Mutex
	certs map[string]*hostCert
}

type hostCert struct {
	signer  gossh.Signer
	expires time.Time
}

func newHostKeys(a *ca.Authority, ttl time.Duration, clock func() time.Time) (*hostKeys, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return &hostKeys{authority: a, ttl: ttl, clock: clock, signer: signer, certs: map[string]*hostCert{}}, nil
}

// get returns a signer presenting a host certificate for principals,
// re-signed once less than a quarter of its lifetime is left.
func (h *hostKeys) get(principals []string) (gossh.Signer, error) {
	var ps []string
	for _, p := range principals {
		if p != "" && !slices.Contains(ps, p) {
			ps = append(ps, p)
		}
	}
	if len(ps) == 0 {
		return nil, trace.BadParameter("a host certificate needs at least one name")
	}
	key := strings.Join(ps, "\x00")
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.clock()
	if c, ok := h.certs[key]; ok && now.Add(h.ttl/4).Before(c.expires) {
		return c.signer, nil
	}
	cert, err := h.authority.SignSSHHostCert(h.signer.PublicKey(), ps[0], ps[1:], h.ttl)
	if err != nil {
		return nil, trace.Wrap(err, "signing the gateway's SSH host certificate")
	}
	signer, err := gossh.NewCertSigner(cert, h.signer)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if len(h.certs) >= maxHostCerts {
		clear(h.certs)
	}
	h.certs[key] = &hostCert{signer: signer, expires: time.Unix(int64(cert.ValidBefore), 0)}
	return signer, nil
}
