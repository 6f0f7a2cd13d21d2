package upload_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-edge/vigil/internal/testkit"
	"github.com/vigil-edge/vigil/sync/upload"
)

// recorder is the MQTT link as the sender sees it, keeping the messages as the
// broker would deliver them, with the device's topic prefix.
type recorder struct {
	prefix string
	msgs   []msg
}

type msg struct {
	topic   string
	payload []byte
}

func (r *recorder) Publish(_ context.Context, suffix string, payload []byte, qos byte) error {
	r.msgs = append(r.msgs, msg{r.prefix + "/" + suffix, append([]byte(nil), payload...)})
	return nil
}

// sent returns the messages the real MQTT sender publishes for file.
func sent(t *testing.T, device, file string, data []byte, chunk int) []msg {
	t.Helper()
	rec := &recorder{prefix: "vigil/" + device}
	s, err := upload.NewMQTT(rec, chunk)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(context.Background(), file, data); err != nil {
		t.Fatal(err)
	}
	return rec.msgs
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func newReceiver(t *testing.T, prefix string, opts upload.ReceiverOptions) *upload.Receiver {
	t.Helper()
	r, err := upload.NewReceiver(prefix, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// feed adds msgs and returns the files completed; any error fails the test.
func feed(t *testing.T, r *upload.Receiver, msgs []msg) []*upload.File {
	t.Helper()
	var out []*upload.File
	for _, m := range msgs {
		f, err := r.Add(m.topic, m.payload)
		if err != nil {
			t.Fatalf("Add(%s): %v", m.topic, err)
		}
		if f != nil {
			out = append(out, f)
		}
	}
	return out
}

func TestReceiverInOrderAndOutOfOrder(t *testing.T) {
	jpg := randomBytes(10_000)
	msgs := sent(t, "dev-1", "door-1.jpg", jpg, 4096) // chunks 0, 1, 2 (short), manifest
	if len(msgs) != 4 {
		t.Fatalf("%d messages", len(msgs))
	}
	for name, order := range map[string][]int{"in order": {0, 1, 2, 3}, "reversed chunks": {2, 1, 0, 3}, "chunk 0 last": {1, 2, 0, 3}} {
		t.Run(name, func(t *testing.T) {
			r := newReceiver(t, "vigil", upload.ReceiverOptions{})
			var in []msg
			for _, i := range order {
				in = append(in, msgs[i])
			}
			files := feed(t, r, in)
			if len(files) != 1 || files[0].Device != "dev-1" || files[0].Name != "door-1.jpg" || files[0].Chunks != 3 || !bytes.Equal(files[0].Data, jpg) {
				t.Fatalf("files %+v", files)
			}
			if st := r.Stats(); st.Files != 1 || st.Pending != 0 || st.Bytes != 0 || st.Errors != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// Two devices' files and a prefix with a '/', interleaved; an empty file.
func TestReceiverInterleavedDevices(t *testing.T) {
	a, b := randomBytes(9000), randomBytes(5000)
	ma := sent(t, "gate-1", "cam-a.jpg", a, 2000)
	mb := sent(t, "gate-2", "cam-a.jpg", b, 2000) // same name, another device
	empty := sent(t, "gate-2", "cam-e.json", nil, 2000)
	var in []msg
	for i := range max(len(ma), len(mb)) {
		if i < len(ma) {
			in = append(in, ma[i])
		}
		if i < len(mb) {
			in = append(in, mb[i])
		}
	}
	in = append(in, empty...)
	for i := range in {
		in[i].topic = "acme/" + in[i].topic
	}
	files := feed(t, newReceiver(t, "acme/vigil/", upload.ReceiverOptions{}), in)
	got := map[string][]byte{}
	for _, f := range files {
		got[f.Device+"/"+f.Name] = f.Data
	}
	if len(files) != 3 || !bytes.Equal(got["gate-1/cam-a.jpg"], a) || !bytes.Equal(got["gate-2/cam-a.jpg"], b) || len(got["gate-2/cam-e.json"]) != 0 {
		t.Errorf("%d files: %v", len(files), len(got))
	}
}

// A file sent again from chunk 0 after an outage (the first attempt cut short, or
// complete) comes out whole; a manifest received twice gives the file once.
func TestReceiverResentFile(t *testing.T) {
	data := randomBytes(10_000)
	msgs := sent(t, "dev-1", "door-1.jpg", data, 4096)
	r := newReceiver(t, "vigil", upload.ReceiverOptions{})
	// Attempt 1 stops after two chunks; attempt 2 sends it all.
	files := feed(t, r, append(append([]msg{}, msgs[:2]...), msgs...))
	if len(files) != 1 || !bytes.Equal(files[0].Data, data) {
		t.Fatalf("after a resend: %d files", len(files))
	}
	if st := r.Stats(); st.Resent != 1 || st.Files != 1 {
		t.Errorf("stats %+v, want 1 resent", st)
	}
	// The manifest again (a QoS 1 duplicate): ignored.
	if f, err := r.Add(msgs[3].topic, msgs[3].payload); f != nil || err != nil {
		t.Errorf("repeated manifest: %v, %v", f, err)
	}
	// The whole file again (the device crashed before recording it): it comes again.
	if files := feed(t, r, msgs); len(files) != 1 || !bytes.Equal(files[0].Data, data) {
		t.Errorf("whole file sent again: %d files", len(files))
	}
	if st := r.Stats(); st.Duplicates != 1 || st.Files != 2 || st.Pending != 0 {
		t.Errorf("stats %+v", st)
	}
	// A resend with another chunk size (a reload changed chunk_size) also comes out whole.
	again := sent(t, "dev-1", "door-1.jpg", data, 3000)
	if files := feed(t, r, append(append([]msg{}, msgs[:3]...), again...)); len(files) != 1 || !bytes.Equal(files[0].Data, data) {
		t.Errorf("resent in other chunks: %d files", len(files))
	}
}

func TestReceiverRefusesWhatDoesNotMatch(t *testing.T) {
	data := randomBytes(10_000)
	msgs := sent(t, "dev-1", "door-1.jpg", data, 4096)
	manifest := func(edit func(m *upload.Manifest)) msg {
		var m upload.Manifest
		json.Unmarshal(msgs[3].payload, &m)
		edit(&m)
		b, _ := json.Marshal(m)
		return msg{msgs[3].topic, b}
	}
	corrupt := append([]byte(nil), msgs[1].payload...)
	corrupt[100] ^= 0xff
	for _, c := range []struct {
		name string
		in   []msg
		want string
	}{
		{"corrupt chunk", []msg{msgs[0], {msgs[1].topic, corrupt}, msgs[2], msgs[3]}, "sha256 of the 10000 bytes received is"},
		{"missing chunk", []msg{msgs[0], msgs[2], msgs[3]}, "chunk 1 of 3 missing (2 held)"},
		{"manifest alone", []msg{msgs[3]}, "chunk 0 of 3 missing (0 held)"},
		{"short chunk", []msg{msgs[0], {msgs[1].topic, msgs[1].payload[:10]}, msgs[2], msgs[3]}, "bytes in 3 chunks, manifest says 10000"},
		{"size too small", []msg{msgs[0], msgs[1], msgs[2], manifest(func(m *upload.Manifest) { m.Size = 9000 })}, "chunks 0 to 2 hold more than the manifest's size 9000"},
		{"other file named", []msg{msgs[0], msgs[1], msgs[2], manifest(func(m *upload.Manifest) { m.File = "x.jpg" })}, `manifest names the file "x.jpg"`},
		{"bad sha", []msg{msgs[0], msgs[1], msgs[2], manifest(func(m *upload.Manifest) { m.SHA256 = "abc" })}, `sha256 "abc" is not 64 hex digits`},
		{"not json", []msg{{msgs[3].topic, []byte("hello")}}, "manifest"},
		{"chunks for no size", []msg{manifest(func(m *upload.Manifest) { m.Size = 0 })}, "chunk count 3 does not fit its size 0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newReceiver(t, "vigil", upload.ReceiverOptions{})
			var last error
			for _, m := range c.in {
				f, err := r.Add(m.topic, m.payload)
				if f != nil {
					t.Fatalf("a file came out: %d bytes", len(f.Data))
				}
				last = err
			}
			if last == nil || !strings.Contains(last.Error(), "sample dev-1/door-1.jpg: ") || !strings.Contains(last.Error(), c.want) {
				t.Errorf("error %v, want one naming dev-1/door-1.jpg and %q", last, c.want)
			}
			// The file was dropped: nothing is held.
			if st := r.Stats(); st.Pending != 0 || st.Bytes != 0 || st.Errors != 1 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func TestReceiverRefusesUnsafeNames(t *testing.T) {
	r := newReceiver(t, "vigil", upload.ReceiverOptions{})
	for _, topic := range []string{
		"vigil/dev-1/samples/../x.jpg/0", "vigil/dev-1/samples/..jpg", "vigil/dev-1/samples/a..b.jpg",
		"vigil/dev-1/samples/door.png", "vigil/dev-1/samples/.hidden.jpg", "vigil/dev-1/samples/door.jpg.tmp",
		"vigil/../samples/door.jpg", "vigil/.dev/samples/door.jpg", `vigil/a\b/samples/door.jpg`, "vigil/ dev/samples/door.jpg",
		"vigil/dev-1/samples/door.jpg/x", "vigil/dev-1/samples/door.jpg/-1", "vigil/dev-1/samples/door.jpg/01",
		"vigil/dev-1/samples/door.jpg/0/1", "vigil/dev-1/status", "other/dev-1/samples/door.jpg", "vigil/dev-1/samples",
	} {
		f, err := r.Add(topic, []byte("x"))
		if f != nil || err == nil {
			t.Errorf("%s: accepted", topic)
		}
	}
	if st := r.Stats(); st.Pending != 0 || st.Errors != 17 {
		t.Errorf("stats %+v", st)
	}
	for _, name := range []string{"door-20250101T120000.000Z-42.jpg", "door-20250101T120000.000Z-42.json", "a.jpg"} {
		if err := upload.CheckFileName(name); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Chunks whose manifest never comes are dropped after MaxAge without progress, and
// files are dropped, least recently progressed first, beyond MaxPending.
func TestReceiverBounds(t *testing.T) {
	clk := testkit.NewClock(time.Unix(1_700_000_000, 0))
	r := newReceiver(t, "vigil", upload.ReceiverOptions{MaxAge: time.Minute, MaxPending: 25_000, MaxFile: 20_000, Now: clk.Now})
	a := sent(t, "dev-1", "a.jpg", randomBytes(10_000), 4096)
	b := sent(t, "dev-1", "b.jpg", randomBytes(10_000), 4096)
	feed(t, r, a[:2])
	clk.Advance(50 * time.Second)
	feed(t, r, b[:1])
	if st := r.Stats(); st.Pending != 2 || st.Bytes != 3*4096 {
		t.Fatalf("stats %+v", st)
	}
	clk.Advance(20 * time.Second) // a: 70s without a chunk; b: 20s
	feed(t, r, b[1:2])
	if st := r.Stats(); st.Pending != 1 || st.Expired != 1 || st.Bytes != 2*4096 {
		t.Errorf("after a minute: stats %+v, want a expired", st)
	}
	if _, err := r.Add(a[3].topic, a[3].payload); err == nil || !strings.Contains(err.Error(), "chunk 0 of 3 missing") {
		t.Errorf("manifest of the expired file: %v", err)
	}
	// b progressed: it completes.
	if files := feed(t, r, b[2:]); len(files) != 1 {
		t.Errorf("b: %d files", len(files))
	}

	// Over the pending budget: the file that progressed least recently goes.
	c := sent(t, "dev-1", "c.jpg", randomBytes(12_000), 4096)
	d := sent(t, "dev-2", "d.jpg", randomBytes(12_000), 4096)
	feed(t, r, c[:3])
	clk.Advance(time.Second)
	feed(t, r, d[:3]) // 24 000 held, then 4096 more
	clk.Advance(time.Second)
	if _, err := r.Add("vigil/dev-3/samples/e.jpg/0", randomBytes(4096)); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.Dropped != 1 || st.Pending != 2 || st.Bytes != 12_000+4096 {
		t.Errorf("over budget: stats %+v, want c dropped", st)
	}
	if files := feed(t, r, d[3:]); len(files) != 1 || files[0].Name != "d.jpg" {
		t.Errorf("d after the drop: %d files", len(files))
	}
	// One file over MaxFile is refused on its own.
	big := sent(t, "dev-1", "big.jpg", randomBytes(24_000), 8000)
	var err error
	for _, m := range big[:3] {
		if _, err = r.Add(m.topic, m.payload); err != nil {
			break
		}
	}
	if err == nil || !strings.Contains(err.Error(), "sample dev-1/big.jpg: over 20000 bytes") {
		t.Errorf("a file over MaxFile: %v", err)
	}
}

// File.Save writes atomically under dir/<device>/ and replaces an older copy.
func TestFileSave(t *testing.T) {
	dir := t.TempDir()
	f := &upload.File{Device: "dev-1", Name: "door-1.jpg", Data: randomBytes(1000)}
	p, err := f.Save(dir)
	if err != nil || p != filepath.Join(dir, "dev-1", "door-1.jpg") {
		t.Fatalf("Save: %q, %v", p, err)
	}
	f.Data = []byte("second")
	if _, err := f.Save(dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "second" {
		t.Errorf("saved again: %q", b)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "dev-1"))
	if len(entries) != 1 {
		t.Errorf("files left: %v", entries)
	}
	if _, err := (&upload.File{Device: "..", Name: "x.jpg"}).Save(dir); err == nil {
		t.Error("device .. saved")
	}
}

func TestHandler(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var stored []string
	srv := httptest.NewServer(upload.NewHandler(upload.HandlerOptions{
		Dir: dir, Token: "t0k", MaxFile: 1000,
		Stored: func(device, name, path string, size int64) {
			mu.Lock()
			stored = append(stored, fmt.Sprintf("%s %s %d", device, name, size))
			mu.Unlock()
		},
	}))
	defer srv.Close()
	put := func(path, token string, body []byte) int {
		t.Helper()
		code, _ := testkit.Request(t, http.MethodPut, srv.URL+path, token, body)
		return code
	}
	body := randomBytes(1000)
	for _, c := range []struct {
		path, token string
		body        []byte
		want        int
	}{
		{"/in/dev-1/door-1.jpg", "", body, 401},
		{"/in/dev-1/door-1.jpg", "wrong", body, 401},
		{"/in/dev-1/door-1.png", "t0k", body, 400},
		{"/in/dev-1/..jpg", "t0k", body, 400},
		{"/in/.dev/door-1.jpg", "t0k", body, 400},
		{"/in/dev-1/door%2F1.jpg", "t0k", body, 400},
		{"/door-1.jpg", "t0k", body, 400},
		{"/in/dev-1/big.jpg", "t0k", randomBytes(1001), 413},
		{"/in/dev-1/door-1.jpg", "t0k", body, 201},
		{"/in/dev-1/door-1.jpg", "t0k", body, 204}, // sent again
		{"/dev-2/door-1.json", "t0k", []byte(`{}`), 201},
	} {
		if got := put(c.path, c.token, c.body); got != c.want {
			t.Errorf("PUT %s (token %q, %d bytes): %d, want %d", c.path, c.token, len(c.body), got, c.want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "dev-1", "door-1.jpg")); err != nil || !bytes.Equal(b, body) {
		t.Errorf("stored file: %d bytes, %v", len(b), err)
	}
	// Nothing else is on disk: no big.jpg, no temporary file.
	var files []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, rel)
		}
		return nil
	})
	if want := []string{"dev-1/door-1.jpg", "dev-2/door-1.json"}; fmt.Sprint(files) != fmt.Sprint(want) {
		t.Errorf("files %v, want %v", files, want)
	}
	mu.Lock()
	if want := "[dev-1 door-1.jpg 1000 dev-1 door-1.jpg 1000 dev-2 door-1.json 2]"; fmt.Sprint(stored) != want {
		t.Errorf("stored %v", stored)
	}
	mu.Unlock()
	// A GET is refused.
	resp, err := http.Get(srv.URL + "/dev-1/door-1.jpg")
	if err == nil {
		resp.Body.Close()
	}
	if err != nil || resp.StatusCode != 401 {
		t.Errorf("GET without token: %v %v", resp, err)
	}
}

// The real HTTP sender against the handler: the 413 of a file over the cap is an
// error the uploader sees, with the reason.
func TestHandlerWithHTTPSender(t *testing.T) {
	dir := t.TempDir()
	srv := httptest.NewServer(upload.NewHandler(upload.HandlerOptions{Dir: dir, Token: "t0k", MaxFile: 5000}))
	defer srv.Close()
	s, err := upload.NewHTTP(upload.HTTPOptions{URL: srv.URL + "/samples", Device: "dev-1", Token: "t0k"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.CloseIdleConnections()
	data := randomBytes(5000)
	if err := s.Send(context.Background(), "door-1.jpg", data); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "dev-1", "door-1.jpg")); !bytes.Equal(b, data) {
		t.Errorf("stored %d bytes", len(b))
	}
	if err := s.Send(context.Background(), "door-2.jpg", randomBytes(5001)); err == nil || !strings.Contains(err.Error(), "413") {
		t.Errorf("over the cap: %v", err)
	}
}

// spoolFiles lists the regular files under dir, relative to it.
func spoolFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, rel)
		}
		return nil
	})
	return files
}

// A receiver with a spool, stopped after chunks 0 and 1: a new one on the same spool
// (a restart) takes them, and with the rest and the manifest the file is whole. The
// spool is emptied once the file is saved, and a leftover temporary file is removed.
func TestReceiverSpoolRestart(t *testing.T) {
	spool := filepath.Join(t.TempDir(), ".partial")
	data := randomBytes(10_000)
	msgs := sent(t, "dev 1", "door-1.jpg", data, 4096) // chunks 0, 1, 2, manifest
	r := newReceiver(t, "vigil", upload.ReceiverOptions{Spool: spool})
	feed(t, r, msgs[:2])
	if got := spoolFiles(t, spool); fmt.Sprint(got) != "[dev 1/door-1.jpg/0 dev 1/door-1.jpg/1]" {
		t.Fatalf("spool after two chunks: %v", got)
	}
	if b, _ := os.ReadFile(filepath.Join(spool, "dev 1", "door-1.jpg", "1")); !bytes.Equal(b, msgs[1].payload) {
		t.Fatalf("chunk 1 in the spool: %d bytes", len(b))
	}
	// A write a crash cut short.
	os.WriteFile(filepath.Join(spool, "dev 1", "door-1.jpg", ".2.123.tmp"), []byte("x"), 0o644)

	r = newReceiver(t, "vigil", upload.ReceiverOptions{Spool: spool}) // the restart
	if st := r.Stats(); st.Pending != 1 || st.Recovered != 2 || st.Bytes != 2*4096 {
		t.Fatalf("after the restart: stats %+v", st)
	}
	files := feed(t, r, msgs[2:])
	if len(files) != 1 || files[0].Device != "dev 1" || !bytes.Equal(files[0].Data, data) || files[0].Chunks != 3 {
		t.Fatalf("files %v", files)
	}
	// Kept until saved: the manifest again gives the file again.
	if got := spoolFiles(t, spool); len(got) != 3 {
		t.Errorf("spool before Saved: %v", got)
	}
	again, err := r.Add(msgs[3].topic, msgs[3].payload)
	if err != nil || again == nil || !bytes.Equal(again.Data, data) {
		t.Fatalf("manifest again before Saved: %v, %v", again, err)
	}
	r.Saved(again)
	if got := spoolFiles(t, spool); len(got) != 0 {
		t.Errorf("spool after Saved: %v", got)
	}
	if entries, _ := os.ReadDir(spool); len(entries) != 0 {
		t.Errorf("directories left in the spool: %v", entries)
	}
	if st := r.Stats(); st.Pending != 0 || st.Bytes != 0 {
		t.Errorf("stats %+v", st)
	}
	// Saved, the manifest once more is a duplicate.
	if f, err := r.Add(msgs[3].topic, msgs[3].payload); f != nil || err != nil {
		t.Errorf("manifest after Saved: %v, %v", f, err)
	}
}

// With a spool: a resend from chunk 0 starts the file over (the old chunks go from
// disk), a file that fails its manifest is removed, expiry and the byte budget remove
// spool files, and a restart with a smaller budget trims what it finds.
func TestReceiverSpoolBounds(t *testing.T) {
	spool := t.TempDir()
	clk := testkit.NewClock(time.Unix(1_700_000_000, 0))
	opts := upload.ReceiverOptions{Spool: spool, MaxAge: time.Minute, MaxPending: 24_000, Now: clk.Now}
	r := newReceiver(t, "vigil", opts)
	a := sent(t, "dev-1", "a.jpg", randomBytes(10_000), 4096)
	feed(t, r, a[:3])
	// Sent again in bigger chunks: chunk 0 restarts the file, chunk 2 of the first try goes.
	a2 := sent(t, "dev-1", "a.jpg", randomBytes(10_000), 6000)
	feed(t, r, a2[:1])
	if got := spoolFiles(t, spool); fmt.Sprint(got) != "[dev-1/a.jpg/0]" {
		t.Errorf("after a resend: %v", got)
	}
	if st := r.Stats(); st.Resent != 1 || st.Bytes != 6000 {
		t.Errorf("stats %+v", st)
	}
	// A corrupt chunk: the manifest fails and the file is removed.
	bad := append([]byte(nil), a2[1].payload...)
	bad[0] ^= 1
	feed(t, r, []msg{{a2[1].topic, bad}})
	if _, err := r.Add(a2[2].topic, a2[2].payload); err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Errorf("corrupt file: %v", err)
	}
	if got := spoolFiles(t, spool); len(got) != 0 {
		t.Errorf("after a failed manifest: %v", got)
	}

	// Expiry.
	b := sent(t, "dev-1", "b.jpg", randomBytes(10_000), 4096)
	c := sent(t, "dev-2", "c.jpg", randomBytes(10_000), 4096)
	feed(t, r, b[:2])
	clk.Advance(50 * time.Second)
	feed(t, r, c[:1])
	clk.Advance(20 * time.Second) // b: 70s without a chunk
	feed(t, r, c[1:2])
	if got := spoolFiles(t, spool); fmt.Sprint(got) != "[dev-2/c.jpg/0 dev-2/c.jpg/1]" {
		t.Errorf("after b expired: %v", got)
	}
	if st := r.Stats(); st.Expired != 1 {
		t.Errorf("stats %+v", st)
	}
	// Budget: c (8192) + d (12 000) + e (4096) > 24 000: c, the least recent, goes.
	d := sent(t, "dev-1", "d.jpg", randomBytes(12_000), 4096)
	clk.Advance(time.Second)
	feed(t, r, d[:3])
	clk.Advance(time.Second)
	feed(t, r, []msg{{"vigil/dev-3/samples/e.jpg/0", randomBytes(4096)}})
	if got := spoolFiles(t, spool); fmt.Sprint(got) != "[dev-1/d.jpg/0 dev-1/d.jpg/1 dev-1/d.jpg/2 dev-3/e.jpg/0]" {
		t.Errorf("over budget: %v", got)
	}
	if st := r.Stats(); st.Dropped != 1 || st.Bytes != 12_000+4096 {
		t.Errorf("stats %+v", st)
	}
	// A restart with a budget below what the spool holds: the usual rule trims it.
	opts.MaxPending = 13_000
	r = newReceiver(t, "vigil", opts)
	if st := r.Stats(); st.Pending != 1 || st.Dropped != 1 || st.Bytes > 13_000 {
		t.Errorf("restart over budget: stats %+v", st)
	}
	if got := spoolFiles(t, spool); fmt.Sprint(got) != "[dev-1/d.jpg/0 dev-1/d.jpg/1 dev-1/d.jpg/2]" && fmt.Sprint(got) != "[dev-3/e.jpg/0]" {
		t.Errorf("restart over budget: %v, want one of the two files", got)
	}
}

// A chunk that cannot be written to the spool is an ErrNotStored error (the message
// must not be acknowledged), and nothing of it is counted.
func TestReceiverSpoolNotStored(t *testing.T) {
	spool := t.TempDir()
	r := newReceiver(t, "vigil", upload.ReceiverOptions{Spool: spool})
	// dev-1 is a file, so no directory can be made under it (even for root).
	os.WriteFile(filepath.Join(spool, "dev-1"), nil, 0o644)
	_, err := r.Add("vigil/dev-1/samples/a.jpg/0", []byte("chunk"))
	if !errors.Is(err, upload.ErrNotStored) || !strings.Contains(err.Error(), "sample dev-1/a.jpg: chunk 0") {
		t.Errorf("chunk into an impossible spool: %v", err)
	}
	if st := r.Stats(); st.Pending != 0 || st.Bytes != 0 {
		t.Errorf("stats %+v", st)
	}
	// A spool that is not a directory: NewReceiver says so.
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, nil, 0o644)
	if _, err := upload.NewReceiver("vigil", upload.ReceiverOptions{Spool: notDir}); err == nil {
		t.Error("a file as the spool: no error")
	}
}
