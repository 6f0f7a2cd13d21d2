package deploy

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// goldenTree and goldenSHA pin the archive format: if a Go release (or a change here)
// made Pack write other bytes, bundles signed before would no longer match.
var goldenTree = map[string]string{
	"model.yaml":         "name: x\nversion: 1\n",
	"sub/a.bin":          "abc",
	"sub/deeper/b":       "",
	"z":                  "zz",
	"a.txt":              "sorts after a/",
	"a/x":                "x",
	".hidden":            "dot files are packed too",
	"signature.json":     `{"left":"out"}`,
	"sub/signature.json": "nested ones are kept",
}

const goldenSHA = "337d243cae42e7cc9d47054ea93accfc4202d86a1c09112698f500ca03c1a890"

func TestPackDeterministic(t *testing.T) {
	dir := writeTree(t, goldenTree)
	if err := os.Mkdir(filepath.Join(dir, "empty"), 0o700); err != nil {
		t.Fatal(err)
	}
	archive, sha := pack(t, dir)
	if sha != goldenSHA {
		t.Errorf("SHA-256 of the golden tree is %s, want %s: the archive format changed", sha, goldenSHA)
	}

	// Times, modes and owners of the files do not matter.
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	for _, p := range []string{"model.yaml", "sub/a.bin", "sub", "empty"} {
		if err := os.Chtimes(filepath.Join(dir, p), old, old); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(dir, "z"), 0o755)
	os.Chmod(filepath.Join(dir, "sub"), 0o700)
	if _, again := pack(t, dir); again != sha {
		t.Errorf("changing times and modes changed the SHA-256: %s, then %s", sha, again)
	}

	// The headers are the promised ones, in path order.
	tr := tar.NewReader(bytes.NewReader(archive))
	var names []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		wantMode := int64(0o644)
		if hdr.Typeflag == tar.TypeDir {
			wantMode = 0o755
		}
		if hdr.Mode != wantMode || !hdr.ModTime.Equal(time.Unix(0, 0)) || hdr.Uid != 0 || hdr.Gid != 0 ||
			hdr.Uname != "" || hdr.Gname != "" || hdr.Format != tar.FormatUSTAR || len(hdr.PAXRecords) > 0 {
			t.Errorf("header of %s: %+v", hdr.Name, hdr)
		}
	}
	want := []string{".hidden", "a/", "a/x", "a.txt", "empty/", "model.yaml", "sub/", "sub/a.bin", "sub/deeper/", "sub/deeper/b", "sub/signature.json", "z"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("entries %v, want %v", names, want)
	}

	// GNU tar, told the same, writes the same bytes (see Pack's comment).
	if _, err := exec.LookPath("tar"); err != nil {
		t.Logf("no tar on this machine: the comparison with GNU tar is skipped (%v)", err)
	} else {
		cmd := exec.Command("bash", "-c", `find . -mindepth 1 -maxdepth 1 ! -name signature.json -printf '%P\n' | LC_ALL=C sort | `+
			`tar --format=ustar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=u=rw,go=r,a+X -b1 -cf - -T -`)
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("GNU tar: %v", err)
		}
		if !bytes.Equal(out, archive) {
			t.Errorf("GNU tar wrote %d bytes, Pack %d; they differ", len(out), len(archive))
		}
	}

	// Content matters, and so do names.
	os.WriteFile(filepath.Join(dir, "z"), []byte("zZ"), 0o644)
	if _, changed := pack(t, dir); changed == sha {
		t.Error("changing a file's content did not change the SHA-256")
	}
}

func TestPackRefusesSpecialFiles(t *testing.T) {
	dir := writeTree(t, map[string]string{"model.yaml": "x"})
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Pack(dir, io.Discard); err == nil || !strings.Contains(err.Error(), "link") {
		t.Errorf("Pack with a symlink: err = %v, want one naming it", err)
	}
	file := filepath.Join(writeTree(t, map[string]string{"f": "x"}), "f")
	if _, _, err := Pack(file, io.Discard); err == nil {
		t.Error("Pack of a file, not a directory: no error")
	}
	long := writeTree(t, map[string]string{strings.Repeat("d", 200) + "/" + strings.Repeat("f", 120): "x"})
	if _, _, err := Pack(long, io.Discard); err == nil {
		t.Error("Pack of a path USTAR cannot hold: no error")
	}
}

func TestUnpackRoundTrip(t *testing.T) {
	src := copyBundle(t)
	archive, _ := pack(t, src)
	dest := filepath.Join(t.TempDir(), "out")
	if err := Unpack(bytes.NewReader(archive), dest, Limits{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"model.yaml", "model.onnx", "LICENSE", "NOTICE"} {
		a, _ := os.ReadFile(filepath.Join(src, name))
		b, err := os.ReadFile(filepath.Join(dest, name))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs after unpacking (%v)", name, err)
		}
	}
	// Packing the unpacked bundle gives the same archive.
	if again, _ := pack(t, dest); !bytes.Equal(again, archive) {
		t.Error("pack(unpack(archive)) differs from archive")
	}
	if _, err := os.Stat(dest + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s.tmp left behind: %v", dest, err)
	}
	if err := Unpack(bytes.NewReader(archive), dest, Limits{}); err == nil {
		t.Error("Unpack over an existing directory: no error")
	}

	// A leftover of an unpack cut short by a crash is replaced.
	dest2 := filepath.Join(t.TempDir(), "out")
	os.MkdirAll(filepath.Join(dest2+".tmp", "junk"), 0o755)
	if err := Unpack(bytes.NewReader(archive), dest2, Limits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dest2, "junk")); !errors.Is(err, os.ErrNotExist) {
		t.Error("the leftover's files ended up in the bundle")
	}
}

type entry struct {
	hdr  tar.Header
	body string
}

func file(name, body string) entry {
	return entry{tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))}, body}
}

// craft writes a tar by hand, as an attacker would.
func craft(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := e.hdr
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatalf("craft %s: %v", e.hdr.Name, err)
		}
		io.WriteString(tw, e.body)
	}
	tw.Close()
	return buf.Bytes()
}

func TestUnpackRefusesMaliciousArchives(t *testing.T) {
	big := strings.Repeat("x", 600)
	for _, tc := range []struct {
		name    string
		archive []byte
		lim     Limits
		want    string
	}{
		{"absolute path", craft(t, file("/etc/cron.d/evil", "x")), Limits{}, "absolute path"},
		{"dot-dot", craft(t, file("../evil", "x")), Limits{}, "leaves the bundle"},
		{"dot-dot inside", craft(t, file("a/../../evil", "x")), Limits{}, "leaves the bundle"},
		{"unclean path", craft(t, file("./model.yaml", "x")), Limits{}, "not a clean relative path"},
		{"double slash", craft(t, file("a//b", "x")), Limits{}, "not a clean relative path"},
		{"backslash", craft(t, file(`..\evil`, "x")), Limits{}, "not a clean relative path"},
		{"symlink", craft(t, entry{tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "/etc/passwd"}, ""}), Limits{}, "not a regular file"},
		{"symlink then write through it", craft(t,
			entry{tar.Header{Name: "d", Typeflag: tar.TypeSymlink, Linkname: "/tmp"}, ""}, file("d/evil", "x")), Limits{}, "not a regular file"},
		{"hard link", craft(t, file("a", "x"), entry{tar.Header{Name: "b", Typeflag: tar.TypeLink, Linkname: "a"}, ""}), Limits{}, "not a regular file"},
		{"char device", craft(t, entry{tar.Header{Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}, ""}), Limits{}, "not a regular file"},
		{"fifo", craft(t, entry{tar.Header{Name: "fifo", Typeflag: tar.TypeFifo}, ""}), Limits{}, "not a regular file"},
		{"duplicate", craft(t, file("model.yaml", "a"), file("model.yaml", "b")), Limits{}, "appears twice"},
		{"duplicate dir", craft(t, entry{tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755}, ""},
			entry{tar.Header{Name: "d", Typeflag: tar.TypeDir, Mode: 0o755}, ""}), Limits{}, "appears twice"},
		{"too many files", craft(t, file("a", ""), file("b", ""), file("c", "")), Limits{MaxFiles: 2}, "more than 2 entries"},
		{"too many bytes", craft(t, file("a", big), file("b", big)), Limits{MaxBytes: 1000}, "more than 1000 bytes"},
		{"not a tar", []byte(strings.Repeat("garbage ", 200)), Limits{}, "unsafe bundle archive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "out")
			err := Unpack(bytes.NewReader(tc.archive), dest, tc.lim)
			if err == nil || !errors.Is(err, ErrUnsafeArchive) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrUnsafeArchive saying %q", err, tc.want)
			}
			// Neither dest, nor dest.tmp, nor anything that escaped beside them.
			if left, _ := os.ReadDir(filepath.Dir(dest)); len(left) > 0 {
				t.Errorf("%s holds %v after a refused archive", filepath.Dir(dest), left)
			}
		})
	}
}

func TestUnpackTruncated(t *testing.T) {
	archive := craft(t, file("model.yaml", strings.Repeat("y", 5000)))
	dest := filepath.Join(t.TempDir(), "out")
	if err := Unpack(bytes.NewReader(archive[:3000]), dest, Limits{}); err == nil {
		t.Fatal("a truncated archive unpacked without error")
	}
	if _, err := os.Lstat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Error("a truncated archive left a bundle behind")
	}
}

func TestUnpackPathThroughFile(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "out")
	err := Unpack(bytes.NewReader(craft(t, file("a", "x"), file("a/b", "y"))), dest, Limits{})
	if err == nil {
		t.Fatal("a path through a file unpacked without error")
	}
	if _, err := os.Lstat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Error("the refused archive left a bundle behind")
	}
}
