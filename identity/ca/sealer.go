package ca

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/gravitational/trace"
)

// Sealer encrypts CA private keys before they reach storage. aad binds a
// sealed blob to its use (the CA type), so blobs cannot be swapped between
// CAs. An external KMS can implement it later.
type Sealer interface {
	Seal(plaintext, aad []byte) ([]byte, error)
	Open(ciphertext, aad []byte) ([]byte, error)
}

const (
	sealKeySize = 32
	// sealFormatV1 prefixes every sealed blob so another scheme (a KMS, a
	// rotated key) can be told apart later.
	sealFormatV1 = 1
)

// FileSealer is AES-256-GCM with a key kept in a local file. The file lives
// outside the storage backend: a copy of the database alone does not
// reveal the CA keys.
type FileSealer struct {
	aead cipher.AEAD
}

// NewFileSealer loads the key at path, creating it (mode 0600, random) if it
// does not exist. It refuses a key file that group or others can access.
func NewFileSealer(path string) (*FileSealer, error) {
	if path == "" {
		return nil, trace.BadParameter("seal key path is required")
	}
	key, err := readKeyFile(path)
	if trace.IsNotFound(err) {
		if err := createKeyFile(path); err != nil {
			return nil, trace.Wrap(err)
		}
		key, err = readKeyFile(path)
	}
	if err != nil {
		return nil, trace.Wrap(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	return &FileSealer{aead: aead}, nil
}

func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, trace.NotFound("seal key %s does not exist", path)
	}
	if err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, trace.ConvertSystemError(err)
	}
	if !st.Mode().IsRegular() {
		return nil, trace.BadParameter("seal key %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, trace.AccessDenied("seal key %s has mode %04o and is accessible by group or others; run: chmod 600 %s", path, perm, path)
	}
	// Read one byte more than expected so a longer file is detected.
	buf := make([]byte, sealKeySize+1)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, trace.ConvertSystemError(err)
	}
	if n != sealKeySize {
		return nil, trace.BadParameter("seal key %s must be exactly %d bytes, it is %s", path, sealKeySize, sizeDesc(n))
	}
	return buf[:sealKeySize], nil
}

// createKeyFile writes a fresh key to a temporary file and links it into
// place, so a daemon starting concurrently never reads a half-written key:
// the loser of the race just reads the winner's file.
func createKeyFile(path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return trace.ConvertSystemError(err)
	}
	key := make([]byte, sealKeySize)
	if _, err := rand.Read(key); err != nil {
		return trace.Wrap(err)
	}
	tmp, err := os.CreateTemp(dir, ".sealkey-*")
	if err != nil {
		return trace.ConvertSystemError(err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return trace.ConvertSystemError(err)
	}
	if _, err := tmp.Write(key); err != nil {
		tmp.Close()
		return trace.ConvertSystemError(err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return trace.ConvertSystemError(err)
	}
	if err := tmp.Close(); err != nil {
		return trace.ConvertSystemError(err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return trace.ConvertSystemError(err)
	}
	return nil
}

// Seal encrypts plaintext bound to aad.
func (s *FileSealer) Seal(plaintext, aad []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	out := make([]byte, 1+ns, 1+ns+len(plaintext)+s.aead.Overhead())
	out[0] = sealFormatV1
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, trace.Wrap(err)
	}
	return s.aead.Seal(out, out[1:], plaintext, aad), nil
}

// Open decrypts what Seal returned for the same aad.
func (s *FileSealer) Open(ciphertext, aad []byte) ([]byte, error) {
	ns := s.aead.NonceSize()
	if len(ciphertext) < 1+ns+s.aead.Overhead() {
		return nil, trace.BadParameter("sealed data is truncated")
	}
	if ciphertext[0] != sealFormatV1 {
		return nil, trace.BadParameter("sealed data has unknown format %d", ciphertext[0])
	}
	plain, err := s.aead.Open(nil, ciphertext[1:1+ns], ciphertext[1+ns:], aad)
	if err != nil {
		return nil, trace.AccessDenied("sealed data failed authentication: tampered, sealed with another key, or sealed for another CA")
	}
	return plain, nil
}

func sizeDesc(n int) string {
	if n > sealKeySize {
		return "longer"
	}
	return strconv.Itoa(n) + " bytes"
}
