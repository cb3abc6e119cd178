package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"time"

	"github.com/gravitational/trace"
	"golang.org/x/crypto/ssh"

	"github.com/sigilhq/sigil/api/client"
	"github.com/sigilhq/sigil/services/storage"
)

// Type names one certificate authority.
type Type string

const (
	// TLSCA signs the gateway's server certificates.
	TLSCA Type = "tls"
	// UserCA signs X.509 client certificates carrying identities.
	UserCA Type = "user"
	// DBCA signs the certificates the gateway presents to databases (and
	// the server certificates databases present, for `sigilctl auth sign`).
	DBCA Type = "db"
	// SSHUserCA signs SSH user certificates.
	SSHUserCA Type = "ssh_user"
	// SSHHostCA signs SSH host certificates.
	SSHHostCA Type = "ssh_host"
	// AuditKey signs audit log checkpoints (Ed25519, no certificate).
	AuditKey Type = "audit"
)

// Types lists every CA, in the order they are loaded.
func Types() []Type { return []Type{TLSCA, UserCA, DBCA, SSHUserCA, SSHHostCA, AuditKey} }

// ParseType validates s as a CA type.
func ParseType(s string) (Type, error) {
	for _, t := range Types() {
		if string(t) == s {
			return t, nil
		}
	}
	return "", trace.BadParameter("unknown CA type %q", s)
}

// IsSSH reports whether t is an SSH CA (Ed25519, no X.509 certificate).
func (t Type) IsSSH() bool { return t == SSHUserCA || t == SSHHostCA }

// isEd25519 reports whether t's key is Ed25519 (SSH CAs and the audit key).
func (t Type) isEd25519() bool { return t.IsSSH() || t == AuditKey }

const (
	caValidity = 10 * 365 * 24 * time.Hour
	// clockSkew backdates certificates so a peer whose clock is a little
	// behind ours accepts them.
	clockSkew = time.Minute
	// keyPrefix is where CAs live in storage: /cas/<type>.
	keyPrefix = "/cas/"
)

// Config configures an Authority.
type Config struct {
	// Backend stores the CAs.
	Backend storage.Backend
	// Sealer seals the CA private keys before they reach Backend.
	Sealer Sealer
	// ClusterName goes into the CA certificates' names.
	ClusterName string
	// Clock defaults to time.Now.
	Clock func() time.Time
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// CheckAndSetDefaults validates the config and fills defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Backend == nil {
		return trace.BadParameter("ca: Backend is required")
	}
	if c.Sealer == nil {
		return trace.BadParameter("ca: Sealer is required")
	}
	if c.ClusterName == "" {
		return trace.BadParameter("ca: ClusterName is required")
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// authority is one loaded CA; immutable after load, so signing needs no lock.
type authority struct {
	typ Type
	// X.509 CAs.
	cert        *x509.Certificate
	certPEM     []byte
	key         *ecdsa.PrivateKey
	pool        *x509.CertPool
	fingerprint string
	// SSH CAs and the audit key.
	sshSigner ssh.Signer
	// The audit key.
	ed25519Key ed25519.PrivateKey
}

// Authority holds every CA in memory after loading them from storage.
// It is safe for concurrent use.
type Authority struct {
	cfg     Config
	cas     map[Type]*authority
	created []Type
}

// record is the stored form of a CA at /cas/<type>.
type record struct {
	Type Type `json:"type"`
	// CertPEM is the self-signed CA certificate (X.509 CAs).
	CertPEM string `json:"cert_pem,omitempty"`
	// SSHPublicKey is in authorized_keys format (SSH CAs and the audit key).
	SSHPublicKey string `json:"ssh_public_key,omitempty"`
	// SealedKey is the PKCS#8 private key sealed with the CA type as AAD.
	SealedKey []byte `json:"sealed_key"`
}

// New loads every CA from storage, creating the missing ones.
func New(ctx context.Context, cfg Config) (*Authority, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	a := &Authority{cfg: cfg, cas: make(map[Type]*authority)}
	for _, t := range Types() {
		ca, created, err := a.loadOrCreate(ctx, t)
		if err != nil {
			return nil, trace.Wrap(err, "loading %s CA", t)
		}
		a.cas[t] = ca
		if created {
			a.created = append(a.created, t)
			cfg.Logger.InfoContext(ctx, "Created CA.", "type", t, "fingerprint", ca.fingerprint)
		}
	}
	return a, nil
}

// Created lists the CAs this New call generated (empty on a restart).
func (a *Authority) Created() []Type { return append([]Type(nil), a.created...) }

func storageKey(t Type) string { return keyPrefix + string(t) }

func aad(t Type) []byte { return []byte(t) }

func (a *Authority) loadOrCreate(ctx context.Context, t Type) (*authority, bool, error) {
	item, err := a.cfg.Backend.Get(ctx, storageKey(t))
	if err == nil {
		ca, err := a.load(t, item.Value)
		return ca, false, trace.Wrap(err)
	}
	if !trace.IsNotFound(err) {
		return nil, false, trace.Wrap(err)
	}
	rec, err := a.generate(t)
	if err != nil {
		return nil, false, trace.Wrap(err)
	}
	value, err := json.Marshal(rec)
	if err != nil {
		return nil, false, trace.Wrap(err)
	}
	if _, err := a.cfg.Backend.Create(ctx, storage.Item{Key: storageKey(t), Value: value}); err != nil {
		if !trace.IsAlreadyExists(err) {
			return nil, false, trace.Wrap(err)
		}
		// Another daemon sharing the backend created it first: use theirs
		// so every daemon signs with the same key.
		item, err := a.cfg.Backend.Get(ctx, storageKey(t))
		if err != nil {
			return nil, false, trace.Wrap(err)
		}
		ca, err := a.load(t, item.Value)
		return ca, false, trace.Wrap(err)
	}
	ca, err := a.load(t, value)
	return ca, true, trace.Wrap(err)
}

func (a *Authority) generate(t Type) (*record, error) {
	rec := &record{Type: t}
	var priv crypto.Signer
	if t.isEd25519() {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		sshPub, err := ssh.NewPublicKey(key.Public())
		if err != nil {
			return nil, trace.Wrap(err)
		}
		rec.SSHPublicKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))
		priv = key
	} else {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		serial, err := randomSerial()
		if err != nil {
			return nil, trace.Wrap(err)
		}
		now := a.cfg.Clock()
		tmpl := &x509.Certificate{
			SerialNumber:          serial,
			Subject:               pkix.Name{CommonName: fmt.Sprintf("Sigil %s CA %s", t, a.cfg.ClusterName), Organization: []string{a.cfg.ClusterName}},
			NotBefore:             now.Add(-clockSkew),
			NotAfter:              now.Add(caValidity),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
			BasicConstraintsValid: true,
			IsCA:                  true,
			// Only Sigil's own leaf certificates hang off these CAs.
			MaxPathLen:     0,
			MaxPathLenZero: true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		rec.CertPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		priv = key
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	rec.SealedKey, err = a.cfg.Sealer.Seal(der, aad(t))
	if err != nil {
		return nil, trace.Wrap(err, "sealing %s CA key", t)
	}
	return rec, nil
}

func (a *Authority) load(t Type, value []byte) (*authority, error) {
	var rec record
	if err := json.Unmarshal(value, &rec); err != nil {
		return nil, trace.BadParameter("malformed %s CA record: %v", t, err)
	}
	if rec.Type != t {
		return nil, trace.BadParameter("record at %s holds a %q CA, want %q", storageKey(t), rec.Type, t)
	}
	der, err := a.cfg.Sealer.Open(rec.SealedKey, aad(t))
	if err != nil {
		return nil, trace.Wrap(err, "opening %s CA key (is this the seal key the cluster was created with?)", t)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, trace.BadParameter("%s CA key: %v", t, err)
	}
	ca := &authority{typ: t}
	if t.isEd25519() {
		key, ok := parsed.(ed25519.PrivateKey)
		if !ok {
			return nil, trace.BadParameter("%s CA key is %T, want Ed25519", t, parsed)
		}
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(rec.SSHPublicKey))
		if err != nil {
			return nil, trace.BadParameter("%s CA public key: %v", t, err)
		}
		ca.sshSigner, err = ssh.NewSignerFromSigner(key)
		if err != nil {
			return nil, trace.Wrap(err)
		}
		// The stored public key is what gets exported for nodes to trust;
		// it must be the sealed key's, or a storage edit could make us
		// hand out a CA we do not sign with.
		if string(pub.Marshal()) != string(ca.sshSigner.PublicKey().Marshal()) {
			return nil, trace.BadParameter("%s CA public key does not match its private key", t)
		}
		ca.fingerprint = ssh.FingerprintSHA256(pub)
		if t == AuditKey {
			// The audit key signs checkpoints, never SSH certificates.
			ca.ed25519Key, ca.sshSigner = key, nil
		}
		return ca, nil
	}
	key, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		return nil, trace.BadParameter("%s CA key is %T, want ECDSA", t, parsed)
	}
	block, _ := pem.Decode([]byte(rec.CertPEM))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, trace.BadParameter("%s CA certificate is not PEM", t)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, trace.BadParameter("%s CA certificate: %v", t, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, trace.BadParameter("%s CA certificate does not match its private key", t)
	}
	ca.cert = cert
	ca.certPEM = []byte(rec.CertPEM)
	ca.key = key
	ca.pool = x509.NewCertPool()
	ca.pool.AddCert(cert)
	ca.fingerprint = Fingerprint(cert)
	return ca, nil
}

// Fingerprint is the CA certificate fingerprint in the one format the
// CLI shows on first contact ("sha256:AB:CD:...", see client.Fingerprint).
func Fingerprint(cert *x509.Certificate) string {
	return client.Fingerprint(cert.Raw)
}

func randomSerial() (*big.Int, error) {
	buf := make([]byte, 16)
	for {
		if _, err := rand.Read(buf); err != nil {
			return nil, trace.Wrap(err)
		}
		if s := new(big.Int).SetBytes(buf); s.Sign() > 0 {
			return s, nil
		}
	}
}

func (a *Authority) x509CA(t Type) (*authority, error) {
	ca, ok := a.cas[t]
	if !ok || ca.cert == nil {
		return nil, trace.BadParameter("%q is not an X.509 CA", t)
	}
	return ca, nil
}

func (a *Authority) sshCA(t Type) (*authority, error) {
	ca, ok := a.cas[t]
	if !ok || ca.sshSigner == nil {
		return nil, trace.BadParameter("%q is not an SSH CA", t)
	}
	return ca, nil
}

// CertPEM is the PEM certificate of an X.509 CA, nil for SSH CAs.
func (a *Authority) CertPEM(t Type) []byte {
	ca, err := a.x509CA(t)
	if err != nil {
		return nil
	}
	return append([]byte(nil), ca.certPEM...)
}

// Certificate is the parsed certificate of an X.509 CA, nil for SSH CAs.
func (a *Authority) Certificate(t Type) *x509.Certificate {
	ca, err := a.x509CA(t)
	if err != nil {
		return nil
	}
	return ca.cert
}

// CertPool is a pool holding only the certificate of CA t (a fresh copy the
// caller may modify), nil for SSH CAs.
func (a *Authority) CertPool(t Type) *x509.CertPool {
	ca, err := a.x509CA(t)
	if err != nil {
		return nil
	}
	return ca.pool.Clone()
}

// SSHPublicKey is the public key of an SSH CA, nil for X.509 CAs. Use
// ssh.MarshalAuthorizedKey to export it (e.g. for TrustedUserCAKeys).
func (a *Authority) SSHPublicKey(t Type) ssh.PublicKey {
	ca, err := a.sshCA(t)
	if err != nil {
		return nil
	}
	return ca.sshSigner.PublicKey()
}

// Fingerprint identifies CA t: for X.509 CAs the SHA-256 of the
// certificate DER as "sha256:AB:CD:..." (see the Fingerprint func); for SSH
// CAs OpenSSH's "SHA256:<base64>" of the public key. Empty for an unknown type.
func (a *Authority) Fingerprint(t Type) string {
	ca, ok := a.cas[t]
	if !ok {
		return ""
	}
	return ca.fingerprint
}

// AuditSigner is the Ed25519 key that signs audit checkpoints.
func (a *Authority) AuditSigner() ed25519.PrivateKey {
	ca, ok := a.cas[AuditKey]
	if !ok {
		return nil
	}
	return append(ed25519.PrivateKey(nil), ca.ed25519Key...)
}

// AuditPublicKey verifies audit checkpoints (see audit.VerifyCheckpoint).
func (a *Authority) AuditPublicKey() ed25519.PublicKey {
	ca, ok := a.cas[AuditKey]
	if !ok {
		return nil
	}
	return ca.ed25519Key.Public().(ed25519.PublicKey)
}
