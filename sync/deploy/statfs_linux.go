package deploy

import "errors"

// FreeBytes returns the bytes available to an unprivileged user on the file system
// holding path.
func FreeBytes(path string) (uint64, error) { return 0, errors.New("TODO") }
