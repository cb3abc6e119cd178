package client

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"

	"github.com/gravitational/trace"
)

// GenerateKey returns a new ECDSA P-256 key, the only type the Sigil CAs sign.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return key, nil
}

// MarshalPublicKeyDER encodes the public half of key as PKIX DER, the form
// LoginRequest.tls_public_key expects.
func MarshalPublicKeyDER(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return der, nil
}

// MarshalPrivateKeyPEM encodes key as a PKCS#8 "PRIVATE KEY" PEM block, the
// format of an identity directory's tls.key.
func MarshalPrivateKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKeyPEM decodes a PKCS#8 PEM private key.
func ParsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, trace.BadParameter("expected a PKCS#8 PEM block of type PRIVATE KEY")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, trace.BadParameter("invalid PKCS#8 private key: %v", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, trace.BadParameter("private key of type %T cannot sign", key)
	}
	return signer, nil
}
