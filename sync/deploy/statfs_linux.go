package deploy

import (
	"fmt"
	"syscall"
)

// FreeBytes returns the bytes available to an unprivileged user on the file system
// holding path.
func FreeBytes(path string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", path, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}
