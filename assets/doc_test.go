package assets

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestExtractWritesOnceAndRepairs(t *testing.T) {
	dir := t.TempDir()
	if _, err := Extract(dir); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{DefaultBundleDir + "/model.onnx", DefaultBundleDir + "/model.yaml", SampleClip} {
		st, err := os.Stat(filepath.Join(dir, p))
		if err != nil || st.Size() == 0 {
			t.Fatalf("%s not extracted: %v", p, err)
		}
	}
	yaml := filepath.Join(dir, DefaultBundleDir, "model.yaml")
	old := time.Unix(1_000_000, 0)
	if err := os.Chtimes(yaml, old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := Extract(dir); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(yaml); !st.ModTime().Equal(old) {
		t.Errorf("unchanged file was rewritten")
	}
	if err := os.WriteFile(yaml, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Extract(dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(yaml); string(b) == "garbage" {
		t.Errorf("damaged file was not repaired")
	}
}
