// Package webauthntest holds what tests need to drive WebAuthn with a
// virtual security key (github.com/descope/virtualwebauthn).
package webauthntest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"

	"github.com/descope/virtualwebauthn"
)

// NewEC2Credential returns a virtual P-256 credential whose public key the
// server can always parse. virtualwebauthn encodes the coordinates with
// big.Int.Bytes, which drops leading zero bytes, so about one key in 128
// has a 31-byte coordinate that a relying party rightly refuses ("EC2 key
// x or y coordinate has invalid length"); such keys are drawn again.
func NewEC2Credential() virtualwebauthn.Credential {
	for {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic("generating a P-256 key: " + err.Error())
		}
		if len(key.X.Bytes()) != 32 || len(key.Y.Bytes()) != 32 {
			continue
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			panic("encoding a P-256 key: " + err.Error())
		}
		return virtualwebauthn.NewCredentialWithImportedKey(virtualwebauthn.KeyTypeEC2, der)
	}
}
