package webauthntest

import (
	"crypto/ecdsa"
	"crypto/x509"
	"testing"
)

func TestCoordinatesAreFullLength(t *testing.T) {
	// 2000 draws would meet a short coordinate about 30 times without
	// the redraw.
	for range 2000 {
		cred := NewEC2Credential()
		parsed, err := x509.ParsePKCS8PrivateKey(cred.Key.Data)
		if err != nil {
			t.Fatal(err)
		}
		k := parsed.(*ecdsa.PrivateKey)
		if len(k.X.Bytes()) != 32 || len(k.Y.Bytes()) != 32 {
			t.Fatalf("short coordinate: x %d bytes, y %d bytes", len(k.X.Bytes()), len(k.Y.Bytes()))
		}
	}
}
