//go:build !unix

package outbox

import (
	"os"
	"path/filepath"
)

// lockDir only creates the lock file: Vigil runs on Linux, other systems build the
// package for tests and get no protection against a second process.
func lockDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
}

func syncDir(string) error { return nil }
