package session

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"sync"
	"time"

	"github.com/gravitational/trace"

	"github.com/sigilhq/sigil/api/types"
	"github.com/sigilhq/sigil/identity/ca"
)

// certCache keeps one upstream client certificate per db user: signing
// costs a key generation and a signature, which must not be paid per
// connection. Certificates are renewed once less than a quarter of their
// lifetime is left.
type certCache struct {
	authority *ca.Authority
	ttl       time.Duration
	clock     func() time.Time

	mu    sync.Mutex
	certs map[string]*tls.Certificate
}

func newCertCache(a *ca.Authority, ttl time.Duration, clock func() time.Time) *certCache {
	return &certCache{authority: a, ttl: ttl, clock: clock, certs: make(map[string]*tls.Certificate)}
}

// maxCachedCerts bounds the cache; db users are few in practice.
const maxCachedCerts = 4096

func (c *certCache) get(dbUser string) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock()
	if cert, ok := c.certs[dbUser]; ok && now.Add(c.ttl/4).Before(cert.Leaf.NotAfter) {
		return cert, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	certPEM, err := c.authority.SignDBCert(&key.PublicKey, dbUser, c.ttl)
	if err != nil {
		return nil, trace.Wrap(err, "signing the upstream certificate for db user %q", dbUser)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil, trace.BadParameter("CA returned no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	cert := &tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key, Leaf: leaf}
	if len(c.certs) >= maxCachedCerts {
		clear(c.certs)
	}
	c.certs[dbUser] = cert
	return cert, nil
}

// UpstreamTLS returns the TLS config to connect to db as dbUser: TLS 1.3,
// a DB-CA client certificate whose CN is dbUser, and the database's
// certificate verified against the DB CA plus the database's own ca_cert.
func (m *Manager) UpstreamTLS(db *types.Database, dbUser string) (*tls.Config, error) {
	if db == nil || dbUser == "" {
		return nil, trace.BadParameter("database and db user are required")
	}
	cert, err := m.certs.get(dbUser)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	roots := m.cfg.Authority.CertPool(ca.DBCA)
	if db.Spec.CACert != "" {
		roots = roots.Clone()
		if !roots.AppendCertsFromPEM([]byte(db.Spec.CACert)) {
			return nil, trace.BadParameter("database %q: spec.ca_cert holds no usable certificate", db.Metadata.Name)
		}
	}
	host, _, err := net.SplitHostPort(db.Spec.URI)
	if err != nil {
		return nil, trace.BadParameter("database %q: spec.uri %q is not host:port", db.Metadata.Name, db.Spec.URI)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{*cert},
		RootCAs:      roots,
		ServerName:   host,
	}, nil
}
