package client

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gravitational/trace"
)

// Names of the files of an identity directory.
const (
	CertFile  = "tls.crt"
	KeyFile   = "tls.key"
	CAFile    = "tls-ca.crt"
	ProxyFile = "proxy"
)

// maxIdentityFileSize bounds what is read from an identity directory; real
// files are a few KiB, so anything larger is a mistake or an attack.
const maxIdentityFileSize = 1 << 20

// Identity is what a client needs to talk to the gateway: the gateway
// address, a client certificate with its key and the CAs that verify the
// gateway. On disk it is an identity directory (see WriteIdentityDir).
type Identity struct {
	// Proxy is the gateway host:port.
	Proxy string
	// CertPEM is the client certificate (PEM).
	CertPEM []byte
	// KeyPEM is the PKCS#8 private key of CertPEM (PEM).
	KeyPEM []byte
	// TLSCAPEM holds the CA certificates (PEM) that verify the gateway.
	TLSCAPEM []byte
}

// Check reports a missing part of the identity.
func (id *Identity) Check() error {
	switch {
	case id == nil:
		return trace.BadParameter("missing identity")
	case id.Proxy == "":
		return trace.BadParameter("identity has no gateway address (%s)", ProxyFile)
	case len(id.CertPEM) == 0:
		return trace.BadParameter("identity has no certificate (%s)", CertFile)
	case len(id.KeyPEM) == 0:
		return trace.BadParameter("identity has no private key (%s)", KeyFile)
	case len(id.TLSCAPEM) == 0:
		return trace.BadParameter("identity has no gateway CA (%s)", CAFile)
	}
	if _, _, err := net.SplitHostPort(id.Proxy); err != nil {
		return trace.BadParameter("identity gateway address %q is not HOST:PORT", id.Proxy)
	}
	return nil
}

// WriteIdentityDir writes id into dir (created 0700). Each file is written
// to a temporary file and renamed, so a reader never sees a half-written
// file and a crash leaves the previous identity intact.
func WriteIdentityDir(dir string, id *Identity) error {
	if err := id.Check(); err != nil {
		return trace.Wrap(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return trace.ConvertSystemError(err)
	}
	// MkdirAll leaves an existing directory's mode alone; the key lives here.
	if err := os.Chmod(dir, 0o700); err != nil {
		return trace.ConvertSystemError(err)
	}
	// The key goes first: a certificate must never be visible next to an
	// older key that does not match it, so write key+cert, then the rest.
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{KeyFile, id.KeyPEM, 0o600},
		{CertFile, id.CertPEM, 0o644},
		{CAFile, id.TLSCAPEM, 0o644},
		{ProxyFile, []byte(id.Proxy + "\n"), 0o644},
	}
	for _, f := range files {
		if err := WriteFileAtomic(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return trace.Wrap(err)
		}
	}
	return nil
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory and a rename.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return trace.ConvertSystemError(err)
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(mode); err != nil {
		return trace.ConvertSystemError(err)
	}
	if _, err := tmp.Write(data); err != nil {
		return trace.ConvertSystemError(err)
	}
	if err := tmp.Sync(); err != nil {
		return trace.ConvertSystemError(err)
	}
	if err := tmp.Close(); err != nil {
		return trace.ConvertSystemError(err)
	}
	if err := os.Rename(tmpName, path); err != nil {
		return trace.ConvertSystemError(err)
	}
	ok = true
	return nil
}

// LoadIdentityDir reads an identity directory written by WriteIdentityDir.
func LoadIdentityDir(dir string) (*Identity, error) {
	read := func(name string) ([]byte, error) {
		data, err := readFileLimited(filepath.Join(dir, name))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, trace.NotFound("identity directory %s has no %s file", dir, name)
			}
			return nil, trace.Wrap(err, "reading %s", filepath.Join(dir, name))
		}
		if len(data) == 0 {
			return nil, trace.BadParameter("identity file %s is empty", filepath.Join(dir, name))
		}
		return data, nil
	}
	id := &Identity{}
	var err error
	if id.CertPEM, err = read(CertFile); err != nil {
		return nil, trace.Wrap(err)
	}
	if id.KeyPEM, err = read(KeyFile); err != nil {
		return nil, trace.Wrap(err)
	}
	if id.TLSCAPEM, err = read(CAFile); err != nil {
		return nil, trace.Wrap(err)
	}
	proxy, err := read(ProxyFile)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	id.Proxy = strings.TrimSpace(string(proxy))
	if err := id.Check(); err != nil {
		return nil, trace.Wrap(err)
	}
	return id, nil
}

func readFileLimited(path string) ([]byte, error) {
	return ReadFileLimited(path, maxIdentityFileSize)
}

// ReadFileLimited reads a small file (keys, certificates, profiles),
// refusing one larger than limit bytes instead of reading it whole.
func ReadFileLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, trace.LimitExceeded("%s is larger than the %d bytes allowed", path, limit)
	}
	return data, nil
}

// TLSConfig returns a TLS 1.3 client config presenting the identity's
// certificate and trusting only the identity's gateway CAs.
func (id *Identity) TLSConfig() (*tls.Config, error) {
	if err := id.Check(); err != nil {
		return nil, trace.Wrap(err)
	}
	pair, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
	if err != nil {
		return nil, trace.BadParameter("identity certificate and key do not form a valid pair: %v", err)
	}
	pool, err := CertPoolFromPEM(id.TLSCAPEM)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	host, _, err := net.SplitHostPort(id.Proxy)
	if err != nil {
		return nil, trace.BadParameter("identity gateway address %q is not HOST:PORT", id.Proxy)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		ServerName:   host,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// Certificate parses the identity's client certificate.
func (id *Identity) Certificate() (*x509.Certificate, error) {
	certs, err := ParseCertificatesPEM(id.CertPEM)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return certs[0], nil
}

// Expires returns when the client certificate expires, or the zero time
// if it cannot be parsed.
func (id *Identity) Expires() time.Time {
	cert, err := id.Certificate()
	if err != nil {
		return time.Time{}
	}
	return cert.NotAfter
}

// ParseCertificatesPEM parses every CERTIFICATE block of data; it fails if
// there is none.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, trace.BadParameter("invalid certificate in PEM: %v", err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, trace.BadParameter("no PEM certificate found")
	}
	return certs, nil
}

// CertPoolFromPEM builds a pool from PEM CA certificates.
func CertPoolFromPEM(data []byte) (*x509.CertPool, error) {
	certs, err := ParseCertificatesPEM(data)
	if err != nil {
		return nil, trace.Wrap(err, "parsing CA certificates")
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}
