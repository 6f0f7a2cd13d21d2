package deploy

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Pack writes the bundle in dir to w as a deterministic, uncompressed tar (see the
// package comment) and returns the archive's size and SHA-256 (lowercase hex). The
// top-level signature.json is left out; a symlink or any other special file in dir is
// an error naming it, so what is signed is exactly what the operator sees.
//
// Entries are sorted by path, component by component (a directory, then what it holds,
// then its next sibling: "a/", "a/b", "a.txt"), in USTAR format; a path USTAR cannot
// hold is an error rather than a PAX record. The result is byte for byte what GNU tar
// writes with
//
//	cd BUNDLE_DIR && find . -mindepth 1 -maxdepth 1 ! -name signature.json -printf '%P\n' |
//	  LC_ALL=C sort | tar --format=ustar --sort=name --mtime=@0 --owner=0 --group=0 \
//	  --numeric-owner --mode=u=rw,go=r,a+X -b1 -cf - -T -
//
// given the bundle's top-level names, signature.json left out, in byte order as the
// files to pack (the package tests check this), so an archive can be rebuilt and
// checked without Vigil.
func Pack(dir string, w io.Writer) (size int64, sha string, err error) {
	type entry struct {
		name string // slash-separated, relative to dir
		dir  bool
		size int64
	}
	var entries []entry
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." {
			if !d.IsDir() {
				return fmt.Errorf("%s is not a directory", dir)
			}
			return nil
		}
		name := filepath.ToSlash(rel)
		if name == SignatureFile {
			return nil
		}
		switch {
		case d.IsDir():
			entries = append(entries, entry{name: name, dir: true})
		case d.Type().IsRegular():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			entries = append(entries, entry{name: name, size: fi.Size()})
		default:
			return fmt.Errorf("%s: a bundle holds only regular files and directories, not %v", p, d.Type())
		}
		return nil
	})
	if err != nil {
		return 0, "", fmt.Errorf("pack bundle: %w", err)
	}
	slices.SortFunc(entries, func(a, b entry) int { return comparePaths(a.name, b.name) })

	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(w, h)}
	tw := tar.NewWriter(cw)
	for _, e := range entries {
		hdr := &tar.Header{
			Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: e.size,
			ModTime: time.Unix(0, 0), Format: tar.FormatUSTAR,
		}
		if e.dir {
			hdr.Name, hdr.Typeflag, hdr.Mode = e.name+"/", tar.TypeDir, 0o755
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return 0, "", fmt.Errorf("pack bundle: %s: %w", e.name, err)
		}
		if !e.dir {
			if err := copyFile(tw, filepath.Join(dir, filepath.FromSlash(e.name)), e.size); err != nil {
				return 0, "", fmt.Errorf("pack bundle: %w", err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return 0, "", fmt.Errorf("pack bundle: %w", err)
	}
	return cw.n, hex.EncodeToString(h.Sum(nil)), nil
}

// comparePaths orders slash-separated paths component by component.
func comparePaths(a, b string) int {
	for {
		ha, ta, moreA := strings.Cut(a, "/")
		hb, tb, moreB := strings.Cut(b, "/")
		if c := strings.Compare(ha, hb); c != 0 {
			return c
		}
		switch {
		case !moreA && !moreB:
			return 0
		case !moreA:
			return -1
		case !moreB:
			return 1
		}
		a, b = ta, tb
	}
}

// copyFile copies exactly size bytes of the file at p (the size its header promised);
// a file that changed size meanwhile is an error.
func copyFile(w io.Writer, p string, size int64) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size))
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if n != size {
		return fmt.Errorf("%s: has %d bytes, not the %d expected (changed meanwhile?)", p, n, size)
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ErrUnsafeArchive is wrapped by unpack's errors about an archive's content (as
// opposed to I/O errors on the device).
var ErrUnsafeArchive = errors.New("unsafe bundle archive")

// unpack extracts an archive made by Pack into dest, which must not exist. It refuses
// absolute paths, "..", entries that are not regular files or directories (symlinks,
// hard links, devices), duplicate entries, more than lim.MaxFiles entries and more
// than lim.MaxBytes of file data. It unpacks into dest+".tmp" and renames that to dest
// only when everything succeeded and check (when set), run after the archive was read
// to its end, returned nil (Store.Install verifies the archive's digest there); so
// dest is either the whole bundle or absent. Files get mode 0644 and directories 0755
// whatever the archive says.
func unpack(archive io.Reader, dest string, lim Limits, check func() error) (err error) {
	lim = lim.withDefaults()
	if _, err := os.Lstat(dest); err == nil {
		return fmt.Errorf("unpack bundle: %s already exists", dest)
	}
	tmp := dest + ".tmp"
	// A leftover of an unpack interrupted by a crash.
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("unpack bundle: %w", err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return fmt.Errorf("unpack bundle: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("unpack bundle: %w: %s", ErrUnsafeArchive, fmt.Sprintf(format, args...))
	}
	tr := tar.NewReader(archive)
	seen := map[string]bool{}
	var total int64
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return bad("%v", err)
		}
		name := strings.TrimSuffix(hdr.Name, "/")
		switch {
		case name == "" || name == ".":
			return bad("entry with an empty name")
		case strings.HasPrefix(name, "/") || filepath.IsAbs(name):
			return bad("%q is an absolute path", hdr.Name)
		case slices.Contains(strings.Split(name, "/"), ".."):
			return bad("%q leaves the bundle directory", hdr.Name)
		case path.Clean(name) != name || strings.Contains(name, "\\") || strings.ContainsRune(name, 0):
			return bad("%q is not a clean relative path", hdr.Name)
		case seen[name]:
			return bad("%q appears twice", hdr.Name)
		}
		seen[name] = true
		if len(seen) > lim.MaxFiles {
			return bad("more than %d entries", lim.MaxFiles)
		}
		target := filepath.Join(tmp, filepath.FromSlash(name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return fmt.Errorf("unpack bundle: %w", err)
			}
		case tar.TypeReg:
			if hdr.Size < 0 || hdr.Size > lim.MaxBytes-total {
				return bad("more than %d bytes of files (at %q)", lim.MaxBytes, hdr.Name)
			}
			total += hdr.Size
			if err := writeEntry(target, tr, hdr.Size); err != nil {
				return fmt.Errorf("unpack bundle: %s: %w", hdr.Name, err)
			}
		default:
			return bad("%q is not a regular file or a directory (type %q)", hdr.Name, hdr.Typeflag)
		}
	}
	if check != nil {
		if err := check(); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, dest); err != nil {
		return fmt.Errorf("unpack bundle: %w", err)
	}
	if err := syncDir(filepath.Dir(dest)); err != nil {
		return fmt.Errorf("unpack bundle: %w", err)
	}
	return nil
}

// writeEntry writes one file of an archive, syncing it so the rename that publishes
// the bundle never exposes a file whose data is not on disk.
func writeEntry(target string, r io.Reader, size int64) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	// O_EXCL: the name cannot already be there (duplicates are refused above), and a
	// path through a file is an error from the file system.
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, io.LimitReader(r, size))
	if err == nil && n != size {
		err = io.ErrUnexpectedEOF
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
