package deploy

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// realBundle is the bundled YOLOX-Nano (model.yaml, model.onnx, LICENSE, NOTICE).
const realBundle = "../../assets/models/yolox-nano"

// copyBundle copies the real bundle into a fresh directory, so a test may sign or
// change it.
func copyBundle(t testing.TB) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "bundle")
	if err := os.CopyFS(dst, os.DirFS(realBundle)); err != nil {
		t.Fatalf("copy %s: %v", realBundle, err)
	}
	return dst
}

// writeTree writes files (slash paths -> content) under a new directory.
func writeTree(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func pack(t testing.TB, dir string) ([]byte, string) {
	t.Helper()
	var buf bytes.Buffer
	size, sha, err := Pack(dir, &buf)
	if err != nil {
		t.Fatalf("Pack(%s): %v", dir, err)
	}
	if size != int64(buf.Len()) {
		t.Fatalf("Pack returned size %d, wrote %d bytes", size, buf.Len())
	}
	return buf.Bytes(), sha
}

// newKey makes a key pair for a test.
func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// signedManifest is a valid chunked deploy manifest for archive, signed by priv.
func signedManifest(t testing.TB, archive []byte, sha string, priv ed25519.PrivateKey, chunkSize int) *Manifest {
	t.Helper()
	return &Manifest{
		Deployment: "d-" + sha[:8], Action: ActionDeploy, Model: "default",
		Issued: time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC),
		Bundle: &BundleRef{Name: "yolox-nano", Version: "0.2.0"},
		Size:   int64(len(archive)), SHA256: sha,
		Key:       PublicKeyString(priv.Public().(ed25519.PublicKey)),
		Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(priv, Message(sha))),
		Transfer:  &TransferSpec{Via: ViaChunks, ChunkSize: chunkSize, Chunks: (len(archive) + chunkSize - 1) / chunkSize},
	}
}

func chunk(archive []byte, m *Manifest, i int) []byte {
	start := i * m.Transfer.ChunkSize
	return archive[start : start+m.ChunkLen(i)]
}

func sha256Hex(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}
