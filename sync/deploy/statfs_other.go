//go:build !linux

package deploy

import (
	"errors"
	"fmt"
)

// FreeBytes is implemented on Linux only; elsewhere it says so.
func FreeBytes(path string) (uint64, error) {
	return 0, fmt.Errorf("free space of %s: %w", path, errors.ErrUnsupported)
}
