package agent

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"gocv.io/x/gocv"

	"github.com/vigil-edge/vigil/capture"
	"github.com/vigil-edge/vigil/infer"
)

// snapshotStore keeps the frames that made rules fire, as JPEG files in one directory,
// within a byte budget: the oldest files go first. An event names its file, served at
// GET /api/snapshots/<file>.
type snapshotStore struct {
	dir      string
	maxBytes int64 // 0: snapshots are off
	// clean keeps frames as captured, without boxes (training samples).
	clean  bool
	logger *slog.Logger
	// saved receives a token when a file is saved (the samples' uploader waits on it);
	// a token already waiting is enough, so saving never blocks on it.
	saved chan struct{}

	mu    sync.Mutex // guards the fields below
	files []snapFile // oldest first
	bytes int64
	init  bool
}

type snapFile struct {
	name string
	size int64
}

func newSnapshotStore(dir string, maxBytes int64, logger *slog.Logger) *snapshotStore {
	return &snapshotStore{dir: dir, maxBytes: maxBytes, logger: logger.With("component", "snapshots"), saved: make(chan struct{}, 1)}
}

// list returns the stored files (NAME.jpg), oldest first, including what an earlier
// run left.
func (s *snapshotStore) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.maxBytes == 0 || s.loadLocked() != nil {
		return nil
	}
	names := make([]string, len(s.files))
	for i, f := range s.files {
		names[i] = f.name
	}
	return names
}

// usage is how many files are stored and their bytes (sidecars included).
func (s *snapshotStore) usage() (files int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.files), s.bytes
}

// save writes the frame with the matches drawn and returns the file's name, or the
// reason it could not (a full disk must not stop the event).
func (s *snapshotStore) save(camera string, f capture.Frame, matches []infer.Detection) (name, problem string) {
	return s.saveWith(camera, f, matches, nil)
}

// saveWith is save with a JSON sidecar (NAME.json beside NAME.jpg) when sidecar is set;
// the pair counts against the budget and goes together.
func (s *snapshotStore) saveWith(camera string, f capture.Frame, matches []infer.Detection, sidecar []byte) (name, problem string) {
	if s.maxBytes == 0 {
		return "", ""
	}
	img := f.Mat.Clone() // the frame is drawn on again for the live snapshot
	defer img.Close()
	if !s.clean {
		drawDetections(&img, matches)
	}
	buf, err := gocv.IMEncodeWithParams(gocv.JPEGFileExt, img, []int{gocv.IMWriteJpegQuality, 85})
	if err != nil {
		return "", "encode: " + err.Error()
	}
	defer buf.Close()
	data := buf.GetBytes()
	if len(data) == 0 {
		return "", "encode: OpenCV produced no JPEG"
	}
	name = fmt.Sprintf("%s-%s-%d.jpg", camera, f.Time.UTC().Format("20060102T150405.000Z"), f.Seq)

	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.loadLocked(); err != nil {
		return "", err.Error()
	}
	tmp := filepath.Join(s.dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, data, 0o640); err != nil {
		os.Remove(tmp)
		s.logger.Error("snapshot not saved", "file", name, "err", err)
		return "", "write: " + err.Error()
	}
	size := int64(len(data))
	if sidecar != nil {
		// The sidecar first: a sample is never on disk without what it shows.
		side := filepath.Join(s.dir, strings.TrimSuffix(name, ".jpg")+".json")
		if err := os.WriteFile(side, sidecar, 0o640); err != nil {
			os.Remove(tmp)
			return "", "write: " + err.Error()
		}
		size += int64(len(sidecar))
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, name)); err != nil {
		os.Remove(tmp)
		return "", "write: " + err.Error()
	}
	s.files = append(s.files, snapFile{name: name, size: size})
	s.bytes += size
	for s.bytes > s.maxBytes && len(s.files) > 1 {
		old := s.files[0]
		if err := os.Remove(filepath.Join(s.dir, old.name)); err != nil && !os.IsNotExist(err) {
			s.logger.Warn("old snapshot not removed", "file", old.name, "err", err)
		}
		os.Remove(filepath.Join(s.dir, strings.TrimSuffix(old.name, ".jpg")+".json"))
		s.files = s.files[1:]
		s.bytes -= old.size
	}
	select {
	case s.saved <- struct{}{}:
	default:
	}
	return name, ""
}

// loadLocked creates the directory and lists what an earlier run left, once.
func (s *snapshotStore) loadLocked() error {
	if s.init {
		return nil
	}
	if err := os.MkdirAll(s.dir, 0o750); err != nil {
		return fmt.Errorf("create snapshot directory: %w", err)
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	type aged struct {
		snapFile
		mod time.Time
	}
	var found []aged
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".jpg") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		size := info.Size()
		if side, err := os.Stat(filepath.Join(s.dir, strings.TrimSuffix(e.Name(), ".jpg")+".json")); err == nil {
			size += side.Size()
		}
		found = append(found, aged{snapFile{e.Name(), size}, info.ModTime()})
	}
	slices.SortFunc(found, func(a, b aged) int { return a.mod.Compare(b.mod) })
	for _, f := range found {
		s.files = append(s.files, f.snapFile)
		s.bytes += f.size
	}
	s.init = true
	return nil
}

// path returns the file of a snapshot name (or of its .json sidecar), or "" when the name is not a snapshot.
func (s *snapshotStore) path(name string) string {
	if name != filepath.Base(name) || !(strings.HasSuffix(name, ".jpg") || strings.HasSuffix(name, ".json")) || strings.HasPrefix(name, ".") {
		return ""
	}
	return filepath.Join(s.dir, name)
}
