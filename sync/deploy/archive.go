package deploy

import (
	"errors"
	"io"
)

// Pack writes the bundle in dir to w as a deterministic, uncompressed tar (see the
// package comment) and returns the archive's size and SHA-256 (lowercase hex). The
// top-level signature.json is left out; a symlink or any other special file in dir is
// an error naming it.
func Pack(dir string, w io.Writer) (size int64, sha string, err error) {
	return 0, "", errors.New("TODO")
}

// Unpack extracts an archive made by Pack into dest, which must not exist. It refuses
// absolute paths, "..", entries that are not regular files or directories (symlinks,
// hard links, devices), duplicate entries, more than lim.MaxFiles entries and more
// than lim.MaxBytes of file data. It unpacks into dest+".tmp" and renames that to dest
// only when everything succeeded, so dest is either the whole bundle or absent.
func Unpack(archive io.Reader, dest string, lim Limits) error { return errors.New("TODO") }
