package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/gravitational/trace"
	"golang.org/x/crypto/ssh"

	"github.com/sigilhq/sigil/identity/certid"
)

// window computes a validity period: backdated for clock skew, and never
// outliving the signing CA (a leaf past its CA's expiry would not verify).
func (a *Authority) window(ttl time.Duration, caNotAfter time.Time) (notBefore, notAfter time.Time, err error) {
	if ttl <= 0 {
		return time.Time{}, time.Time{}, trace.BadParameter("certificate TTL must be positive, got %v", ttl)
	}
	// X.509 and SSH times have one-second resolution; truncating here
	// makes the Expires we report equal to what the certificate says.
	now := a.cfg.Clock().UTC().Truncate(time.Second)
	notBefore, notAfter = now.Add(-clockSkew), now.Add(ttl)
	if !caNotAfter.IsZero() && notAfter.After(caNotAfter) {
		notAfter = caNotAfter
	}
	return notBefore, notAfter, nil
}

func (a *Authority) signX509(ca *authority, tmpl *x509.Certificate, pub crypto.PublicKey) ([]byte, error) {
	if pub == nil {
		return nil, trace.BadParameter("public key is required")
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, trace.Wrap(err)
	}
	tmpl.SerialNumber = serial
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, trace.Wrap(err, "signing certificate with the %s CA", ca.typ)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// SignUserCert issues an X.509 client certificate carrying id, signed by the
// user CA. It sets id.Serial and id.Expires to the issued certificate's.
func (a *Authority) SignUserCert(id *certid.Identity, pub crypto.PublicKey, ttl time.Duration) ([]byte, error) {
	ca, err := a.x509CA(UserCA)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if id == nil {
		return nil, trace.BadParameter("identity is required")
	}
	notBefore, notAfter, err := a.window(ttl, ca.cert.NotAfter)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	tmpl := &x509.Certificate{
		NotBefore:   notBefore,
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if err := id.ApplyTo(tmpl); err != nil {
		return nil, trace.Wrap(err)
	}
	certPEM, err := a.signX509(ca, tmpl, pub)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	id.Serial = tmpl.SerialNumber.String()
	id.Expires = notAfter
	return certPEM, nil
}

// SignServerCert issues a TLS server certificate for the gateway, signed by
// the TLS CA.
func (a *Authority) SignServerCert(pub crypto.PublicKey, dnsNames []string, ips []net.IP, ttl time.Duration) ([]byte, error) {
	return a.signServer(TLSCA, pub, dnsNames, ips, ttl)
}

// SignDBServerCert issues the server certificate a database presents to the
// gateway (for `sigilctl auth sign`), signed by the DB CA. hosts are DNS
// names or IP addresses.
func (a *Authority) SignDBServerCert(pub crypto.PublicKey, hosts []string, ttl time.Duration) ([]byte, error) {
	var dnsNames []string
	var ips []net.IP
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			dnsNames = append(dnsNames, h)
		}
	}
	return a.signServer(DBCA, pub, dnsNames, ips, ttl)
}

func (a *Authority) signServer(t Type, pub crypto.PublicKey, dnsNames []string, ips []net.IP, ttl time.Duration) ([]byte, error) {
	ca, err := a.x509CA(t)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	var cn string
	switch {
	case len(dnsNames) > 0:
		cn = dnsNames[0]
	case len(ips) > 0:
		cn = ips[0].String()
	default:
		return nil, trace.BadParameter("a server certificate needs at least one DNS name or IP address")
	}
	notBefore, notAfter, err := a.window(ttl, ca.cert.NotAfter)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		DNSNames:    dnsNames,
		IPAddresses: ips,
		NotBefore:   notBefore,
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	return a.signX509(ca, tmpl, pub)
}

// SignDBCert issues the client certificate the gateway presents to a
// database: CN is the database user, which is what PostgreSQL's cert auth
// and MariaDB's REQUIRE SUBJECT match on.
func (a *Authority) SignDBCert(pub crypto.PublicKey, dbUser string, ttl time.Duration) ([]byte, error) {
	ca, err := a.x509CA(DBCA)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if dbUser == "" {
		return nil, trace.BadParameter("database user is required")
	}
	notBefore, notAfter, err := a.window(ttl, ca.cert.NotAfter)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: dbUser},
		NotBefore:   notBefore,
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return a.signX509(ca, tmpl, pub)
}

func randomSSHSerial() (uint64, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, trace.Wrap(err)
	}
	return binary.BigEndian.Uint64(b[:]), nil
}

func (a *Authority) signSSH(t Type, cert *ssh.Certificate, ttl time.Duration) error {
	ca, err := a.sshCA(t)
	if err != nil {
		return trace.Wrap(err)
	}
	if cert.Key == nil {
		return trace.BadParameter("public key is required")
	}
	notBefore, notAfter, err := a.window(ttl, time.Time{})
	if err != nil {
		return trace.Wrap(err)
	}
	serial, err := randomSSHSerial()
	if err != nil {
		return trace.Wrap(err)
	}
	cert.Serial = serial
	cert.ValidAfter = uint64(notBefore.Unix())
	cert.ValidBefore = uint64(notAfter.Unix())
	if err := cert.SignCert(rand.Reader, ca.sshSigner); err != nil {
		return trace.Wrap(err, "signing SSH certificate with the %s CA", t)
	}
	return nil
}

// SignSSHUserCert issues an SSH user certificate carrying id, signed by the
// SSH user CA. It sets id.Serial and id.Expires to the issued certificate's.
func (a *Authority) SignSSHUserCert(id *certid.Identity, pub ssh.PublicKey, ttl time.Duration) (*ssh.Certificate, error) {
	if id == nil {
		return nil, trace.BadParameter("identity is required")
	}
	cert := &ssh.Certificate{Key: pub, CertType: ssh.UserCert}
	if err := id.ToSSHCert(cert); err != nil {
		return nil, trace.Wrap(err)
	}
	if err := a.signSSH(SSHUserCA, cert, ttl); err != nil {
		return nil, trace.Wrap(err)
	}
	id.Serial = strconv.FormatUint(cert.Serial, 10)
	id.Expires = time.Unix(int64(cert.ValidBefore), 0).UTC()
	return cert, nil
}

// SignSSHHostCert issues an SSH host certificate for hostID, signed by the
// SSH host CA. hostID is always among the principals: a host certificate
// without principals would be valid for any host name.
func (a *Authority) SignSSHHostCert(pub ssh.PublicKey, hostID string, principals []string, ttl time.Duration) (*ssh.Certificate, error) {
	if hostID == "" {
		return nil, trace.BadParameter("host ID is required")
	}
	all := []string{hostID}
	for _, p := range principals {
		if p != "" && !slices.Contains(all, p) {
			all = append(all, p)
		}
	}
	cert := &ssh.Certificate{Key: pub, CertType: ssh.HostCert, KeyId: hostID, ValidPrincipals: all}
	if err := a.signSSH(SSHHostCA, cert, ttl); err != nil {
		return nil, trace.Wrap(err)
	}
	return cert, nil
}
