package deploy

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// SignatureFile is the signature's file name at the top of a bundle directory.
const SignatureFile = "signature.json"

// messagePrefix starts every signed message; the version lets the format change
// without an old signature verifying under a new meaning.
const messagePrefix = "vigil-bundle-v1\n"

const ed25519SignatureSize = ed25519.SignatureSize

// Errors Verify and CheckSigned return (wrapped).
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
func Message(sha256Hex string) []byte { return []byte(messagePrefix + sha256Hex) }

// GenerateKey makes a new Ed25519 key pair.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate Ed25519 key: %w", err)
	}
	return pub, priv, nil
}

// PublicKeyString is the base64 line that goes in trust.keys.
func PublicKeyString(pub ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(pub) }

// privateKeyHeader is the first line of a private key file, so a reader (or a grep
// for secrets) knows what the file is.
const privateKeyHeader = "# vigil Ed25519 signing key (seed, base64); keep secret\n"

// WritePrivateKey writes the key's seed, base64, to a new file with mode 0600; it
// refuses to overwrite an existing file.
func WritePrivateKey(path string, priv ed25519.PrivateKey) error {
	if len(priv) != ed25519.PrivateKeySize {
		return fmt.Errorf("write private key %s: not an Ed25519 private key", path)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write private key: %w", err)
	}
	_, err = f.WriteString(privateKeyHeader + base64.StdEncoding.EncodeToString(priv.Seed()) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write private key %s: %w", path, err)
	}
	return nil
}

// ReadPrivateKey reads a key written by WritePrivateKey. A file that others may read
// is refused.
func ReadPrivateKey(path string) (ed25519.PrivateKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read private key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("private key %s: mode %v lets others read it; run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read private key: %w", err)
	}
	var seed []byte
	for line := range strings.SplitSeq(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if seed != nil {
			return nil, fmt.Errorf("private key %s: more than one key line", path)
		}
		seed, err = base64.StdEncoding.DecodeString(line)
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("private key %s: not a base64 Ed25519 seed (%d bytes), as `vigil keygen` writes", path, ed25519.SeedSize)
		}
	}
	if seed == nil {
		return nil, fmt.Errorf("private key %s: no key in the file", path)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// SignBundle packs the bundle in dir, signs the archive's SHA-256 and writes
// dir/signature.json (atomically).
func SignBundle(dir string, priv ed25519.PrivateKey) (*Signature, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, errors.New("sign bundle: not an Ed25519 private key")
	}
	size, sha, err := Pack(dir, io.Discard)
	if err != nil {
		return nil, fmt.Errorf("sign bundle: %w", err)
	}
	sig := &Signature{
		SHA256: sha, Size: size,
		Key:       PublicKeyString(priv.Public().(ed25519.PublicKey)),
		Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(priv, Message(sha))),
	}
	data, err := json.MarshalIndent(sig, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(dir, SignatureFile), append(data, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("sign bundle: %w", err)
	}
	return sig, nil
}

// ReadSignature reads dir/signature.json (ErrUnsigned when there is none).
func ReadSignature(dir string) (*Signature, error) {
	path := filepath.Join(dir, SignatureFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w (no %s; run `vigil model sign %s --key FILE`)", dir, ErrUnsigned, SignatureFile, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read signature: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var sig Signature
	if err := dec.Decode(&sig); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var errs []string
	if !hexRE.MatchString(sig.SHA256) {
		errs = append(errs, "sha256: not 64 lowercase hex digits")
	}
	if sig.Size <= 0 {
		errs = append(errs, "size: missing or not positive")
	}
	if _, err := decodeKey(sig.Key); err != nil {
		errs = append(errs, "key: "+err.Error())
	}
	if b, err := base64.StdEncoding.DecodeString(sig.Signature); err != nil || len(b) != ed25519.SignatureSize {
		errs = append(errs, "signature: not a base64 Ed25519 signature")
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%s: %s", path, strings.Join(errs, "; "))
	}
	return &sig, nil
}

// CheckSigned packs dir into w and checks the result against dir/signature.json:
// same size and SHA-256, and a signature valid for its key. It is what `vigil model
// push` does before publishing anything.
func CheckSigned(dir string, w io.Writer) (*Signature, error) {
	sig, err := ReadSignature(dir)
	if err != nil {
		return nil, err
	}
	size, sha, err := Pack(dir, w)
	if err != nil {
		return nil, fmt.Errorf("check signature: %w", err)
	}
	if size != sig.Size || sha != sig.SHA256 {
		return nil, fmt.Errorf("%s: %w: the bundle changed after it was signed (archive now %d bytes, SHA-256 %s; signed %d bytes, %s); sign it again",
			dir, ErrBadSignature, size, sha, sig.Size, sig.SHA256)
	}
	if err := verify(sig.Key, sig.Signature, sig.SHA256); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, SignatureFile), err)
	}
	return sig, nil
}

// Verify checks a deploy manifest's signature: its key must be one of trusted
// (base64 Ed25519 public keys, as in trust.keys; else ErrUntrustedKey) and the
// signature must verify over Message(m.SHA256) (else ErrBadSignature).
func Verify(m *Manifest, trusted []string) error {
	if !m.CarriesBundle() {
		return fmt.Errorf("verify deployment %s: action %q carries no signature", m.Deployment, m.Action)
	}
	key, err := decodeKey(m.Key)
	if err != nil {
		return fmt.Errorf("verify deployment %s: %w: %v", m.Deployment, ErrUntrustedKey, err)
	}
	ok := false
	for _, t := range trusted {
		if tk, err := decodeKey(t); err == nil && bytes.Equal(tk, key) {
			ok = true
			break
		}
	}
	if !ok {
		return fmt.Errorf("verify deployment %s: %w: %s is not in trust.keys", m.Deployment, ErrUntrustedKey, m.Key)
	}
	if err := verify(m.Key, m.Signature, m.SHA256); err != nil {
		return fmt.Errorf("verify deployment %s: %w", m.Deployment, err)
	}
	return nil
}

// verify checks sig (base64) by key (base64) over Message(sha).
func verify(key, sig, sha string) error {
	pub, err := decodeKey(key)
	if err != nil {
		return fmt.Errorf("%w: key: %v", ErrBadSignature, err)
	}
	s, err := base64.StdEncoding.DecodeString(sig)
	if err != nil || len(s) != ed25519.SignatureSize {
		return fmt.Errorf("%w: not a base64 Ed25519 signature", ErrBadSignature)
	}
	if !ed25519.Verify(pub, Message(sha), s) {
		return fmt.Errorf("%w: the signature does not match SHA-256 %s and key %s", ErrBadSignature, sha, key)
	}
	return nil
}

// decodeKey decodes a base64 Ed25519 public key.
func decodeKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("not a base64 Ed25519 public key (%d bytes)", ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// writeFileAtomic writes data beside path, syncs it and renames it over path, so a
// reader (or a crash) sees the old or the new file, never half of one.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncDir makes a rename or a new entry in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
