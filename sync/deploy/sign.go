package deploy

import (
	"crypto/ed25519"
	"errors"
	"io"
)

// SignatureFile is the signature's file name at the top of a bundle directory.
const SignatureFile = "signature.json"

// Errors Verify returns (wrapped).
var (
	ErrUntrustedKey = errors.New("untrusted key")
	ErrBadSignature = errors.New("bad signature")
	ErrUnsigned     = errors.New("bundle is not signed")
)

// Signature is signature.json.
type Signature struct {
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
	Key       string `json:"key"`
	Signature string `json:"signature"`
}

// Message is what is signed for an archive with this SHA-256 (lowercase hex):
// "vigil-bundle-v1\n" + sha256.
func Message(sha256Hex string) []byte { return nil }

// GenerateKey makes a new Ed25519 key pair.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) { return nil, nil, errors.New("TODO") }

// PublicKeyString is the base64 line that goes in trust.keys.
func PublicKeyString(pub ed25519.PublicKey) string { return "" }

// WritePrivateKey writes the key's seed, base64, to a new file with mode 0600; it
// refuses to overwrite an existing file.
func WritePrivateKey(path string, priv ed25519.PrivateKey) error { return errors.New("TODO") }

// ReadPrivateKey reads a key written by WritePrivateKey. A file that others may read
// is refused.
func ReadPrivateKey(path string) (ed25519.PrivateKey, error) { return nil, errors.New("TODO") }

// SignBundle packs the bundle in dir, signs the archive's SHA-256 and writes
// dir/signature.json.
func SignBundle(dir string, priv ed25519.PrivateKey) (*Signature, error) {
	return nil, errors.New("TODO")
}

// ReadSignature reads dir/signature.json (ErrUnsigned when there is none).
func ReadSignature(dir string) (*Signature, error) { return nil, errors.New("TODO") }

// CheckSigned packs dir into w and checks the result against dir/signature.json:
// same size and SHA-256, and a signature valid for its key. It is what `vigil model
// push` does before publishing anything.
func CheckSigned(dir string, w io.Writer) (*Signature, error) { return nil, errors.New("TODO") }

// Verify checks a deploy manifest's signature: its key must be one of trusted
// (base64 Ed25519 public keys, as in trust.keys; else ErrUntrustedKey) and the
// signature must verify over Message(m.SHA256) (else ErrBadSignature).
func Verify(m *Manifest, trusted []string) error { return errors.New("TODO") }
