// Package assets holds the files Vigil carries inside its binary, so that `vigil run`
// works with no config file and no files beside it: the default model bundle
// (YOLOX-Nano, Apache-2.0) and a short sample clip with people (CC BY 4.0).
// Only agent/ and tests import it; it is plain data, no code runs at import.
package assets

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

//go:embed models footage
var files embed.FS

// Where the embedded files land under a state directory.
const (
	// DefaultBundleDir is the bundled model's directory, relative to the extraction root.
	DefaultBundleDir = "models/yolox-nano"
	// SampleClip is the bundled clip, relative to the extraction root.
	SampleClip = "footage/people.mp4"
)

// Extract writes the embedded files under dir (creating it), rewriting only files that
// are missing or differ, so repeated starts touch nothing. It returns dir.
func Extract(dir string) (string, error) {
	err := fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) == ".go" {
			return err
		}
		want, err := files.ReadFile(path)
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, path)
		if have, err := os.ReadFile(dst); err == nil && bytes.Equal(have, want) {
			return nil
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		// Write beside and rename, so a crash never leaves a half-written model behind.
		tmp := dst + ".tmp"
		if err := os.WriteFile(tmp, want, 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, dst)
	})
	if err != nil {
		return "", fmt.Errorf("extract bundled files to %s: %w", dir, err)
	}
	return dir, nil
}

// DefaultManifest is the bundled model's model.yaml, for validating a config before
// anything is extracted.
func DefaultManifest() []byte {
	b, err := files.ReadFile(DefaultBundleDir + "/model.yaml")
	if err != nil {
		panic("assets: bundled model.yaml missing from the binary: " + err.Error())
	}
	return b
}
