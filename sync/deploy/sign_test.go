package deploy

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestPrivateKeyFile(t *testing.T) {
	pub, priv := newKey(t)
	path := filepath.Join(t.TempDir(), "signing.key")
	if err := WritePrivateKey(path, priv); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), PublicKeyString(pub)) {
		t.Errorf("key file holds the public key instead of the seed:\n%s", data)
	}
	got, err := ReadPrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(priv) {
		t.Fatal("ReadPrivateKey returned a different key")
	}
	if err := WritePrivateKey(path, priv); err == nil {
		t.Error("WritePrivateKey overwrote an existing key file")
	}
	if b, err := base64.StdEncoding.DecodeString(PublicKeyString(pub)); err != nil || len(b) != 32 {
		t.Errorf("PublicKeyString is not 32 bytes of base64: %v", err)
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadPrivateKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a world-readable key file: err = %v, want a chmod hint", err)
	}
	for name, content := range map[string]string{
		"empty":   "# only a comment\n",
		"garbage": "not base64!\n",
		"short":   base64.StdEncoding.EncodeToString([]byte("short")) + "\n",
		"two":     base64.StdEncoding.EncodeToString(priv.Seed()) + "\n" + base64.StdEncoding.EncodeToString(priv.Seed()) + "\n",
	} {
		p := filepath.Join(t.TempDir(), name)
		os.WriteFile(p, []byte(content), 0o600)
		if _, err := ReadPrivateKey(p); err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("%s key file: err = %v, want an error naming the file", name, err)
		}
	}
}

func TestSignAndCheckRealBundle(t *testing.T) {
	dir := copyBundle(t)
	_, priv := newKey(t)
	if _, err := CheckSigned(dir, io.Discard); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("unsigned bundle: err = %v, want ErrUnsigned", err)
	}
	sig, err := SignBundle(dir, priv)
	if err != nil {
		t.Fatal(err)
	}
	read, err := ReadSignature(dir)
	if err != nil {
		t.Fatal(err)
	}
	if *read != *sig {
		t.Fatalf("signature.json holds %+v, SignBundle returned %+v", read, sig)
	}
	// Signing does not change what is signed: signature.json is left out of the archive.
	archive, sha := pack(t, dir)
	if sha != sig.SHA256 || int64(len(archive)) != sig.Size {
		t.Fatalf("archive after signing: %d bytes %s; signed %d bytes %s", len(archive), sha, sig.Size, sig.SHA256)
	}
	if _, err := CheckSigned(dir, io.Discard); err != nil {
		t.Fatalf("CheckSigned on a freshly signed bundle: %v", err)
	}

	m := signedManifest(t, archive, sha, priv, DefaultChunkSize)
	if err := Verify(m, []string{"AAAA", PublicKeyString(priv.Public().(ed25519.PublicKey))}); err != nil {
		t.Fatalf("Verify with the signer's key trusted: %v", err)
	}
	otherPub, otherPriv := newKey(t)
	if err := Verify(m, []string{PublicKeyString(otherPub)}); !errors.Is(err, ErrUntrustedKey) {
		t.Errorf("signer not trusted: err = %v, want ErrUntrustedKey", err)
	}
	if err := Verify(m, nil); !errors.Is(err, ErrUntrustedKey) {
		t.Errorf("no trusted keys: err = %v, want ErrUntrustedKey", err)
	}
	trusted := []string{m.Key}
	wrongSHA := *m
	wrongSHA.SHA256 = strings.Repeat("0", 64)
	if err := Verify(&wrongSHA, trusted); !errors.Is(err, ErrBadSignature) {
		t.Errorf("signature over another SHA-256: err = %v, want ErrBadSignature", err)
	}
	forged := *m
	forged.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(otherPriv, Message(sha)))
	if err := Verify(&forged, trusted); !errors.Is(err, ErrBadSignature) {
		t.Errorf("signature by another key: err = %v, want ErrBadSignature", err)
	}
	// The message carries the version prefix: a bare SHA-256 signed is not accepted.
	bare := *m
	bare.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(priv, []byte(sha)))
	if err := Verify(&bare, trusted); !errors.Is(err, ErrBadSignature) {
		t.Errorf("signature over the bare hash: err = %v, want ErrBadSignature", err)
	}
	if err := Verify(&Manifest{Deployment: "r", Action: ActionRollback}, trusted); err == nil {
		t.Error("Verify accepted a rollback manifest, which carries no signature")
	}

	// A bundle changed after signing is refused.
	if err := os.WriteFile(filepath.Join(dir, "NOTICE"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckSigned(dir, io.Discard); !errors.Is(err, ErrBadSignature) || !strings.Contains(err.Error(), "sign it again") {
		t.Errorf("changed bundle: err = %v, want ErrBadSignature telling to sign again", err)
	}
}

func TestReadSignatureBad(t *testing.T) {
	for name, content := range map[string]string{
		"not json":      "{",
		"unknown field": `{"sha256":"` + strings.Repeat("a", 64) + `","size":1,"key":"","signature":"","by":"me"}`,
		"empty fields":  `{}`,
	} {
		dir := writeTree(t, map[string]string{SignatureFile: content})
		if _, err := ReadSignature(dir); err == nil || !strings.Contains(err.Error(), SignatureFile) {
			t.Errorf("%s: err = %v, want an error naming signature.json", name, err)
		}
	}
	// A tampered signature.json (signature of another key than the one named).
	dir := writeTree(t, map[string]string{"model.yaml": "x"})
	_, priv := newKey(t)
	sig, err := SignBundle(dir, priv)
	if err != nil {
		t.Fatal(err)
	}
	otherPub, _ := newKey(t)
	content := `{"sha256":"` + sig.SHA256 + `","size":` + strconv.FormatInt(sig.Size, 10) + `,"key":"` + PublicKeyString(otherPub) + `","signature":"` + sig.Signature + `"}`
	os.WriteFile(filepath.Join(dir, SignatureFile), []byte(content), 0o644)
	if _, err := CheckSigned(dir, io.Discard); !errors.Is(err, ErrBadSignature) {
		t.Errorf("signature.json naming another key: err = %v, want ErrBadSignature", err)
	}
}
