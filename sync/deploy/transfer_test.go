package deploy

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func realArchive(t *testing.T) ([]byte, string) {
	t.Helper()
	return pack(t, copyBundle(t))
}

func TestTransferOutOfOrderWithDuplicates(t *testing.T) {
	archive, sha := realArchive(t)
	_, priv := newKey(t)
	m := signedManifest(t, archive, sha, priv, 100<<10)
	n := m.Transfer.Chunks
	if n < 10 {
		t.Fatalf("only %d chunks; the test wants many", n)
	}
	tr, err := OpenTransfer(filepath.Join(t.TempDir(), m.Deployment), m)
	if err != nil {
		t.Fatal(err)
	}
	if p := tr.Progress(); p != 0 {
		t.Errorf("Progress before any chunk = %v", p)
	}
	// Every chunk twice, in a shuffled order, concurrently.
	order := append(rand.Perm(n), rand.Perm(n)...)
	var wg sync.WaitGroup
	var mu sync.Mutex
	completes := 0
	for _, i := range order {
		wg.Go(func() {
			complete, err := tr.Put(i, chunk(archive, m, i))
			if err != nil {
				t.Errorf("Put(%d): %v", i, err)
			}
			if complete {
				mu.Lock()
				completes++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if completes == 0 {
		t.Error("no Put reported the transfer complete")
	}
	if p, missing := tr.Progress(), tr.Missing(); p != 1 || len(missing) != 0 || !tr.Complete() {
		t.Fatalf("after every chunk: progress %v, missing %v", p, missing)
	}
	var out bytes.Buffer
	gotSHA, size, err := tr.Assemble(&out)
	if err != nil {
		t.Fatal(err)
	}
	if gotSHA != sha || size != int64(len(archive)) || !bytes.Equal(out.Bytes(), archive) {
		t.Fatalf("assembled %d bytes %s, want %d bytes %s", size, gotSHA, len(archive), sha)
	}
	if err := tr.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tr.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Error("Remove left the directory")
	}
	if _, err := tr.Put(0, chunk(archive, m, 0)); err == nil {
		t.Error("Put after Remove: no error")
	}
}

func TestTransferBadChunks(t *testing.T) {
	archive, sha := realArchive(t)
	_, priv := newKey(t)
	m := signedManifest(t, archive, sha, priv, DefaultChunkSize)
	tr, err := OpenTransfer(t.TempDir(), m)
	if err != nil {
		t.Fatal(err)
	}
	last := m.Transfer.Chunks - 1
	for _, tc := range []struct {
		i    int
		data []byte
		want string
	}{
		{-1, []byte("x"), "out of range"},
		{m.Transfer.Chunks, []byte("x"), "out of range"},
		{0, chunk(archive, m, 0)[:100], "has 100 bytes, want 262144"},
		{last, chunk(archive, m, 0), "want " + strconv.Itoa(m.ChunkLen(last))},
		{0, nil, "has 0 bytes"},
	} {
		if _, err := tr.Put(tc.i, tc.data); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Put(%d, %d bytes): err = %v, want %q", tc.i, len(tc.data), err, tc.want)
		}
	}
	if p := tr.Progress(); p != 0 {
		t.Errorf("refused chunks counted: progress %v", p)
	}
	if _, _, err := tr.Assemble(&bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("Assemble with chunks missing: %v", err)
	}
	// A corrupted chunk of the right length is caught by the SHA-256.
	for i := range m.Transfer.Chunks {
		data := append([]byte(nil), chunk(archive, m, i)...)
		if i == 3 {
			data[10] ^= 0xff
		}
		if _, err := tr.Put(i, data); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := tr.Assemble(&bytes.Buffer{}); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("Assemble with a corrupted chunk: err = %v, want ErrDigestMismatch", err)
	}
}

// TestTransferResumes: a transfer cut off (the agent restarting) continues from its
// directory; a chunk cut short by the crash is received again.
func TestTransferResumes(t *testing.T) {
	archive, sha := realArchive(t)
	_, priv := newKey(t)
	m := signedManifest(t, archive, sha, priv, 256<<10)
	root := t.TempDir()
	dir := filepath.Join(root, m.Deployment)
	tr, err := OpenTransfer(dir, m)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 2, 5, 6} {
		if _, err := tr.Put(i, chunk(archive, m, i)); err != nil {
			t.Fatal(err)
		}
	}
	// The crash: chunk 6's file was cut short, a temporary file was left behind.
	if err := os.Truncate(filepath.Join(dir, "chunks", "6"), 1000); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "chunks", ".chunk-123"), []byte("half"), 0o644)

	loaded, err := LoadTransfers(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(loaded) != 1 {
		t.Fatalf("LoadTransfers found %d transfers, want 1", len(loaded))
	}
	again := loaded[0]
	if !reflect.DeepEqual(again.Manifest(), m) {
		t.Fatalf("reloaded manifest %+v, want %+v", again.Manifest(), m)
	}
	var want []int
	for i := range m.Transfer.Chunks {
		if i != 0 && i != 2 && i != 5 {
			want = append(want, i)
		}
	}
	if got := again.Missing(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after the restart missing %v, want %v", got, want)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "chunks")); len(entries) != 3 {
		t.Errorf("the cut chunk and the temporary file were not cleared: %v", entries)
	}
	for _, i := range want {
		if _, err := again.Put(i, chunk(archive, m, i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := again.Assemble(&bytes.Buffer{}); err != nil {
		t.Fatalf("resumed transfer: %v", err)
	}

	// Opening the directory for another deployment is refused.
	other := *m
	other.Deployment = "another"
	if _, err := OpenTransfer(dir, &other); !errors.Is(err, ErrTransferMismatch) {
		t.Errorf("OpenTransfer over another deployment: err = %v, want ErrTransferMismatch", err)
	}
	// A URL manifest has no chunks to assemble.
	url := *m
	url.Transfer = &TransferSpec{Via: ViaURL, URL: "https://x/y"}
	if _, err := OpenTransfer(t.TempDir(), &url); err == nil {
		t.Error("OpenTransfer of a URL transfer: no error")
	}

	// A directory that is not a transfer is named in LoadTransfers' error; the good
	// ones are still returned.
	os.MkdirAll(filepath.Join(root, "stray"), 0o755)
	loaded, err = LoadTransfers(root)
	if err == nil || !strings.Contains(err.Error(), "stray") || len(loaded) != 1 {
		t.Errorf("LoadTransfers with a stray directory: %d transfers, err %v", len(loaded), err)
	}
	if got, err := LoadTransfers(filepath.Join(root, "none")); err != nil || got != nil {
		t.Errorf("LoadTransfers of a missing root: %v, %v", got, err)
	}
}

// FuzzChunk: any chunk topic and payload a broker could deliver is either refused with
// an error or stored as exactly the chunk its index names; nothing crashes.
func FuzzChunk(f *testing.F) {
	archive := bytes.Repeat([]byte("0123456789"), 100) // 1000 bytes, chunks of 300
	_, priv, _ := GenerateKey()
	m := signedManifest(f, archive, sha256Hex(archive), priv, 300)
	f.Add("vigil/gate-07/models/chunks/"+m.Deployment+"/0", archive[:300])
	f.Add("vigil/group/g/models/chunks/"+m.Deployment+"/3", archive[900:])
	f.Add("vigil/gate-07/models/chunks/"+m.Deployment+"/4", []byte("x"))
	f.Add("vigil/gate-07/models/chunks/x/01", []byte{})
	f.Fuzz(func(t *testing.T, topic string, data []byte) {
		deployment, i, err := ParseChunkTopic(topic)
		if err != nil {
			return
		}
		if deployment == "" || i < 0 || !strings.HasSuffix(topic, "/"+deployment+"/"+strconv.Itoa(i)) {
			t.Fatalf("ParseChunkTopic(%q) = %q, %d", topic, deployment, i)
		}
		tr, err := OpenTransfer(t.TempDir(), m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tr.Put(i, data); err != nil {
			if got := tr.Progress(); got != 0 {
				t.Fatalf("a refused chunk counted: progress %v", got)
			}
			return
		}
		if len(data) != m.ChunkLen(i) {
			t.Fatalf("chunk %d of %d bytes accepted, want %d", i, len(data), m.ChunkLen(i))
		}
		if missing := tr.Missing(); slices.Contains(missing, i) || len(missing) != m.Transfer.Chunks-1 {
			t.Fatalf("after Put(%d): missing %v", i, missing)
		}
	})
}
