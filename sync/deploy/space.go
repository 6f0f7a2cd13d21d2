package deploy

import "fmt"

// CheckSpace returns an error when the file system holding path has less than need
// bytes free (a device checks, before downloading, room for the chunks, the archive and
// the unpacked bundle: about three times the archive's size).
func CheckSpace(path string, need int64) error {
	free, err := FreeBytes(path)
	if err != nil {
		return err
	}
	if need > 0 && free < uint64(need) {
		return fmt.Errorf("not enough disk space on %s: %d bytes needed, %d free", path, need, free)
	}
	return nil
}
