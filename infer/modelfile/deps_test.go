package modelfile

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Model files are read without any runtime: this package must build where neither
// OpenCV nor an inference library is installed (CGO_ENABLED=0).
func TestPureGo(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{.CgoFiles}}", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, cgo, _ := strings.Cut(line, " ")
		if strings.HasPrefix(pkg, "gocv.io/") || strings.HasPrefix(pkg, "github.com/yalue/") || cgo != "[]" {
			t.Errorf("depends on %s (cgo files %s)", pkg, cgo)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	for _, path := range []string{onnxModel, float16Model} {
		data, err := os.ReadFile(path)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(filepath.Base(path), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := Parse(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
